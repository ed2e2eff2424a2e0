"""The command line's parser: every verb and its flags (``scratchvae --help``).

train's settings flags are made from the configurations' fields (:mod:`scratchvae.config`):
their type (the field's kind reads the text), default, choices, help and group; the flags that
are no setting are listed in :data:`NOT_SETTINGS` with why. Usage errors are one line, like
every other user error.
"""

from __future__ import annotations

import argparse
import inspect
from dataclasses import fields

from .. import __version__
from ..errors import ScratchVAEError


EXIT_USAGE = 2


EXIT_INTERRUPTED = 128 + 2   # 128 + the signal's number, as a shell reports it: SIGINT 130, SIGTERM 143


DESCRIPTION = "scratchvae: a variational autoencoder written from scratch on NumPy (CuPy on a GPU)."


ENVIRONMENT = """environment variables:
  SCRATCHVAE_OFFLINE    set to 1 to never download (the embedded data needs no download)
  SCRATCHVAE_CACHE_DIR  where downloaded datasets are kept
                        (default: $XDG_CACHE_HOME/scratchvae, else ~/.cache/scratchvae)
  SCRATCHVAE_NUMBA      0: run the NumPy bodies of the fused blocks, not their Numba twins
                        (the 'fast' extra); config.json records which ran (fast_path)"""


def _checked(cast, ok, expected):
    """An argparse type: ``cast`` the text, then require ``ok(value)``; else say ``expected``."""
    def parse(s):
        try:
            v = cast(s)
        except (ValueError, ScratchVAEError):
            v = None
        if v is None or not ok(v):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {s!r}")
        return v
    return parse


def _library_check(check, expected):
    """An argparse type that keeps the text once ``check(text)`` (a library check) accepts it."""
    return _checked(lambda s: s if check(s) is not None else None, lambda v: True, expected)


def _keep(s):
    return None if s == "all" else _positive_count(s)


def _check_ks(s):
    from ..evaluate import check_ks

    return check_ks(int(p) for p in s.split(","))


def _check_figure(s):
    from ..plots import figure_format

    return figure_format(s)


def _figure_ok(s):
    try:
        return _check_figure(s) is not None
    except ScratchVAEError:
        return False

_positive_count = _checked(int, lambda v: v >= 1, "a positive number of checkpoints or 'all'")

_ks = _checked(_check_ks, lambda v: True, "comma-separated positive integers like 1,10,100")

_figure_file = _library_check(_check_figure, "a file name ending in .png, .pdf, .svg or .jpg")

_npz_file = _checked(str, lambda v: v.lower().endswith(".npz"), "a file name ending in .npz")

_image_output = _checked(str, lambda v: v.lower().endswith(".npz") or _figure_ok(v),
                         "a file name ending in .png, .pdf, .svg, .jpg or .npz")


class _Given(argparse.Action):
    """argparse's ``store`` (and, with nargs=0, ``store_true``) that also notes in ``given``
    which flags the command line named, so a flag that does not apply can be refused."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, self.const if self.nargs == 0 else values)
        namespace.given = getattr(namespace, "given", frozenset()) | {self.dest}


def _flag(**kw):
    return _Given(nargs=0, const=True, **{"default": False, **kw})


class _Formatter(argparse.HelpFormatter):
    """Help that shows each option's default, as ArgumentDefaultsHelpFormatter does, but not
    for options without one (None) nor for switches (False); a setting's flag shows its default
    as the setting's kind spells it (its 'unset' too: constant, 1/√L, …)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if getattr(action, "shown_default", None) is not None:
            return f"{text} (default: {action.shown_default})"
        if "%(default)" in text or not action.option_strings or \
                action.default is None or action.default is False or action.default is argparse.SUPPRESS:
            return text
        return f"{text} (default: %(default)s)"


class _TopFormatter(argparse.RawDescriptionHelpFormatter, _Formatter):
    """The top-level help: its epilog (the environment variables) keeps its lines."""


class _Parser(argparse.ArgumentParser):
    """argparse with usage errors as one line, like every other user error (usage: --help), and
    no abbreviated flags: ``--epoch 3`` is refused where only ``--epochs`` exists, rather than
    read as it (every verb's parser is one of these)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", _Formatter)
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)
        self.register("action", None, _Given)
        self.register("action", "store", _Given)
        self.register("action", "store_true", _flag)

    def error(self, message):
        self.exit(EXIT_USAGE, f"scratchvae: error: {' '.join(message.split())} (see {self.prog} --help)\n")


def build_parser():
    p = _Parser(prog="scratchvae", description=DESCRIPTION, epilog=ENVIRONMENT, formatter_class=_TopFormatter)
    p.add_argument("--version", action="version", version=f"scratchvae {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    defaults = _view_defaults()
    _add_train(sub)
    _add_evaluate(sub)
    _add_sample(sub, defaults)
    _add_plot(sub, defaults)
    _add_encode(sub)
    _add_decode(sub)
    _add_compare(sub, defaults)
    return p


def _view_defaults():
    """The figures' defaults (plot_run's ``n`` and ``seed``), as sample and plot show them."""
    from ..plots import plot_run

    view = inspect.signature(plot_run).parameters
    return {"n": view["n"].default, "view_seed": view["seed"].default}


# -- train: its flags are the configurations' fields -------------------------------------------

NOT_SETTINGS = {
    "data_dir": "where the files of a built-in dataset are, not what the data are",
    "preset": "names settings; each lands in its field, as if typed",
    "backend": "where the model runs, not what it is (VAE(..., backend=))",
    "out": "where the run is written",
    "resume": "which run to continue",
    "overwrite": "whether a run in --out may be replaced",
    "keep": "how many checkpoints the run keeps (recorded beside the settings, changeable on resume)",
    "quiet": "how progress is shown",
    "no_graph": "how a step runs on a GPU, not what it computes",
}
"""train's flags that are no field of ModelConfig or TrainConfig, and why (tests/test_cli.py
checks that every other flag is a field and every field with a flag has one)."""


def _setting(group, cls, name, **changes):
    """The flag of field ``name`` of configuration ``cls``: its type (the field's kind reads the
    text), default, choices, help and metavar from the field; ``changes`` override them."""
    f = cls.__dataclass_fields__[name]
    m, kind = f.metadata, f.metadata["kind"]
    kw = {"default": f.default, "help": m["help"], "metavar": m["metavar"],
          **({"choices": kind.choices} if kind.choices else {"type": _from_text(kind)}), **changes}
    action = group.add_argument(_flag_name(name), dest=name, **kw)
    action.shown_default = kind.show(kw["default"])
    return action


def _from_text(kind):
    def parse(text):
        try:
            return kind.from_text(text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None
    return parse


def _kind(name):
    """The argparse type of the configuration's kind ``name`` (the verbs' flags that are no setting
    but take the same values: a seed, an image shape, a count)."""
    from .. import config

    return _from_text(getattr(config, name))


_positive_int, _image_shape, _seed = _kind("POSITIVE_INT"), _kind("IMAGE_SHAPE"), _kind("SEED")


def _add_train(sub):
    from ..backend import BACKENDS
    from ..config import PRESETS, ModelConfig, TrainConfig
    from ..runs import DEFAULT_KEEP

    t = _verb(sub, "train", "train a model and write a run folder, or continue one with --resume",
              " A run folder holds config.json, metrics.jsonl (one row per epoch) and checkpoints/.")
    groups = {name: t.add_argument_group(name) for name in ("data", "model", "optimisation", "run")}
    for cls in (TrainConfig, ModelConfig):
        for f in fields(cls):
            if f.metadata["flag"]:
                _setting(groups[f.metadata["group"]], cls, f.name)
    groups["data"].add_argument("--data-dir", metavar="DIR", help="mnist / fashion-mnist: read the four IDX files "
                                "(raw or .gz) from DIR instead of downloading them into the cache; with --resume on "
                                "one's own data that moved: the folder now holding its .npz or image folder")
    r = groups["run"]
    r.add_argument("--preset", choices=list(PRESETS), help="named settings that every flag given overrides; "
                   "iwae-paper: Burda et al.'s MNIST setup (hidden 200,200 tanh, latent 50, dynamic binarisation, "
                   "batch 20, Adam ε 1e-4, --lr-schedule iwae, --output-bias data-mean, 3280 epochs)")
    r.add_argument("--backend", default="numpy", choices=BACKENDS, help="array backend (auto: cupy if a GPU is usable)")
    r.add_argument("--out", metavar="DIR", help="the run folder to create (default: runs/<timestamp>)")
    r.add_argument("--resume", metavar="RUN", help="continue the run in folder RUN: to its own --epochs, or to "
                   "--epochs N; other flags must keep the run's values, except --backend, --no-graph, --quiet, "
                   "--keep and --data-dir")
    r.add_argument("--overwrite", action="store_true", help="replace the run in --out: the new run trains in "
                   "<out>.new and takes its place only once it completes")
    r.add_argument("--keep", type=_keep, default=DEFAULT_KEEP, metavar="N|all",
                   help="end-of-epoch checkpoints kept: the newest N plus the best by test loss, or all")
    r.add_argument("--quiet", action="store_true", help="no progress bar (the per-epoch lines stay)")
    r.add_argument("--no-graph", action="store_true",
                   help="--backend cupy: run each step eagerly instead of replaying it as one CUDA graph")


def _verb(sub, name, summary, details=""):
    return sub.add_parser(name, help=summary, description=f"{summary[0].upper()}{summary[1:]}.{details}")


def _add_evaluate(sub):
    from ..backend import BACKENDS
    from ..evaluate import DEFAULT_KS

    e = _verb(sub, "evaluate", "score a run: test −ELBO, importance-sampled log p(x), active units, linear probe")
    e.add_argument("run_dir", metavar="RUN", help="a run folder (as written by train)")
    _add_checkpoint_flags(e)
    e.add_argument("--limit", type=_positive_int, metavar="N", help="use the first N test images (default: all)")
    e.add_argument("--ks", type=_ks, default=",".join(map(str, DEFAULT_KS)), metavar="K,K,...",
                   help="importance samples K per image, comma-separated")
    _add_run_data_flags(e)
    e.add_argument("--backend", choices=BACKENDS, help="array backend (default: the run's own if usable)")
    e.add_argument("--json", action="store_true", help="print the results as JSON")
    e.add_argument("--quiet", action="store_true", help="no progress bar")


def _add_run_data_flags(p):
    """--dataset and --data-dir: where a verb that reads a run's data finds them."""
    p.add_argument("--dataset", metavar="PATH", help="the run's own data (an .npz or image folder) at another "
                   "path, after they moved; accepted when they are the data the run recorded")
    p.add_argument("--data-dir", metavar="DIR", help="where the run's dataset is read: the folder of the IDX files "
                   "(mnist, fashion-mnist), or the folder now holding the run's own .npz or image folder "
                   "(default: where it was)")


def _add_checkpoint_flags(p):
    """--epoch and --checkpoint: which checkpoint of RUN a reading verb uses."""
    p.add_argument("--epoch", type=_positive_int, help="the end-of-epoch checkpoint to use (default: the newest)")
    p.add_argument("--checkpoint", metavar="FILE", help="a checkpoint of the run to use instead, by file name or "
                   "path; a mid-epoch one (epoch-0004-batch-000034.npz, written by an interrupt) is used only so")


def _view_arguments(s, d):
    from ..backend import BACKENDS

    s.add_argument("run_dir", metavar="RUN", help="a run folder (as written by train)")
    _add_checkpoint_flags(s)
    s.add_argument("--n", type=_positive_int, default=d["n"], help="how many prior samples to decode")
    s.add_argument("--seed", type=_seed, default=d["view_seed"], help="seeds every random choice of the figures")
    s.add_argument("--sample-x", action="store_true", help="draw pixels from p(x|z) instead of decoder means")
    s.add_argument("--backend", choices=BACKENDS, help="array backend (default: the run's own if usable)")
    _add_image_shape_flag(s)


def _add_image_shape_flag(p):
    p.add_argument("--image-shape", type=_image_shape, metavar="H,W[,C]",
                   help="draw each image as H,W[,C] (H·W·C values: the data's width); for flat data that "
                        "recorded no image shape (default: the data's own)")


def _add_sample(sub, d):
    s = _verb(sub, "sample", "decode draws from the prior of a trained run into one figure")
    _view_arguments(s, d)
    s.add_argument("--out", type=_figure_file, metavar="FILE",
                   help="the figure; its extension picks the format: .png, .pdf, .svg or .jpg "
                        "(default: RUN/samples.png)")


def _add_plot(sub, d):
    from ..plots import FORMATS

    s = _verb(sub, "plot", "draw every figure of a run (latent space, samples, reconstructions, ...) into a folder")
    _view_arguments(s, d)
    s.add_argument("--out", metavar="DIR", help="folder for the figures (default: RUN/figures)")
    s.add_argument("--format", default="png", choices=sorted(set(FORMATS.values())), help="the figures' file format")
    _add_run_data_flags(s)


def _add_encode(sub):
    from ..backend import BACKENDS

    e = _verb(sub, "encode", "write the codes of a run's images: q(z|x)'s parameters per image, their labels, "
              "and with --sample one z ~ q(z|x)",
              " The .npz holds mu and logvar (diagonal posterior), mu and scale_tril (full), or mu alone (ae); "
              "y when the data have labels, and classes where the data name them (classes[y]: an image folder's "
              "class sub-folder); z with --sample. With several stochastic layers each layer's, named by layer "
              "(mu1, logvar1, mu2, ...): up the means' path (q(h2|mu1)), or with --sample up one drawn chain "
              "(z1 ~ q(h1|x), z2 ~ q(h2|z1)).")
    e.add_argument("run_dir", metavar="RUN", help="a run folder (as written by train)")
    e.add_argument("--split", default="test", choices=("test", "train"), help="which of the run's images")
    e.add_argument("--limit", type=_positive_int, metavar="N", help="only the first N images of the split")
    e.add_argument("--sample", action="store_true", help="also one z ~ q(z|x) per image (the model's eval stream)")
    e.add_argument("--out", type=_npz_file, metavar="FILE.npz", help="where to write (default: RUN/codes-<split>.npz)")
    _add_checkpoint_flags(e)
    _add_run_data_flags(e)
    e.add_argument("--backend", choices=BACKENDS, help="array backend (default: the run's own if usable)")


def _add_decode(sub):
    from ..backend import BACKENDS

    d = _verb(sub, "decode", "decode codes (z if the file has it, else mu) into images",
              " Edit the codes written by encode (attribute arithmetic, interpolation, ...) and decode them.")
    d.add_argument("run_dir", metavar="RUN", help="a run folder (as written by train)")
    d.add_argument("codes", metavar="CODES.npz", help="an .npz with z or mu of shape (N, latent), as encode writes")
    d.add_argument("--layer", type=_positive_int, metavar="L", help="with several stochastic layers: decode layer "
                   "L's codes (zL, else muL), above the first through each conditional prior's mean down to h1 "
                   "(default: 1)")
    d.add_argument("--out", type=_image_output, metavar="FILE", help="a figure (.png, .pdf, .svg, .jpg) of the "
                   "decoder means, or an .npz holding them as x (default: RUN/decoded.png)")
    _add_image_shape_flag(d)
    _add_checkpoint_flags(d)
    d.add_argument("--backend", choices=BACKENDS, help="array backend (default: the run's own if usable)")


def _add_compare(sub, d):
    from ..backend import BACKENDS
    from ..config import ModelConfig, TrainConfig
    from ..data import DATASETS

    c = _verb(sub, "compare", "train an AE, a KL-only model and a VAE with a 2-D latent and draw them side by side",
              " Writes a folder holding each model's run (final checkpoint, metrics with test loss), "
              "compare.json, compare.png and compare-posteriors.png.")
    _setting(c, TrainConfig, "dataset", help=f"the data, as for train: {', '.join(DATASETS)}, or a labelled .npz or "
             "image folder")
    c.add_argument("--data-dir", metavar="DIR", help="mnist / fashion-mnist: read the IDX files from DIR")
    _setting(c, TrainConfig, "image_shape")
    _setting(c, TrainConfig, "epochs", help="epochs per model")
    _setting(c, TrainConfig, "batch_size")
    _setting(c, ModelConfig, "hidden", help="encoder layer sizes")
    _setting(c, TrainConfig, "lr")
    _setting(c, ModelConfig, "seed", help="seeds the three models and the shared prior draws")
    c.add_argument("--backend", default="numpy", choices=BACKENDS, help="array backend")
    c.add_argument("--out", metavar="DIR", help="the folder to create (default: runs/compare-<timestamp>)")
    c.add_argument("--overwrite", action="store_true", help="replace the comparison in --out: the new one is made "
                   "beside it and takes its place only once it completes")
    c.add_argument("--quiet", action="store_true", help="no progress bar")


def _flag_name(dest):
    return "--" + dest.replace("_", "-")
