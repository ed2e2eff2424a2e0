"""The ``scratchvae`` command: train, evaluate, sample, plot, compare.

User errors (bad flags, bad files, bad data, a flag that does not apply) print one line,
``scratchvae: error: ...``, naming the flag, and exit with status 2; tracebacks are kept for
bugs. Every check that can fail runs before anything is written. The library never prints:
this module renders its callbacks (a tqdm bar on a terminal, one labelled line per epoch).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import inspect
import json
import math
import shlex
import signal
import sys
from pathlib import Path

from . import __version__
from .errors import ScratchVAEError

EXIT_USAGE = 2
EXIT_INTERRUPTED = 128 + 2   # 128 + the signal's number, as a shell reports it: SIGINT 130, SIGTERM 143
DESCRIPTION = "scratchvae: a variational autoencoder written from scratch on NumPy (CuPy on a GPU)."
ENVIRONMENT = """environment variables:
  SCRATCHVAE_OFFLINE    set to 1 to never download (the embedded data needs no download)
  SCRATCHVAE_CACHE_DIR  where downloaded datasets are kept
                        (default: $XDG_CACHE_HOME/scratchvae, else ~/.cache/scratchvae)"""
RESUMABLE = ("epochs", "backend", "no_graph", "quiet", "keep", "data_dir", "resume", "out")
"""train's flags that --resume takes as given; every other one must equal the run's own value."""


# -- argument parsing -----------------------------------------------------------------------
def _hidden(s):
    s = s.strip()
    if not s:
        return ()
    try:
        sizes = tuple(int(p) for p in s.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated sizes like 400 or 512,256, got {s!r}")
    if any(h < 1 for h in sizes):
        raise argparse.ArgumentTypeError(f"hidden sizes must be positive, got {s!r}")
    return sizes


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
    from .evaluate import check_ks

    return check_ks(int(p) for p in s.split(","))


def _check_figure(s):
    from .plots import figure_format

    return figure_format(s)


def _figure_ok(s):
    try:
        return _check_figure(s) is not None
    except ScratchVAEError:
        return False


_positive_int = _checked(int, lambda v: v >= 1, "a positive integer")
_nonneg_float = _checked(float, lambda v: 0 <= v < math.inf, "a finite number >= 0")
_positive_float = _checked(float, lambda v: 0 < v < math.inf, "a finite number > 0")
_fraction = _checked(float, lambda v: 0 <= v < 1, "a number in [0, 1)")
_open_fraction = _checked(float, lambda v: 0 < v < 1, "a number in (0, 1)")
_image_shape = _checked(lambda s: tuple(int(p) for p in s.split(",")),
                        lambda v: len(v) in (2, 3) and min(v) > 0 and (len(v) == 2 or v[2] in (1, 3)),
                        "H,W or H,W,C with positive sizes and C 1 or 3")
_seed = _checked(int, lambda v: 0 <= v < 2**63, "an integer in [0, 2**63)")
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
    for options without one (None) nor for switches (False)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "%(default)" in text or not action.option_strings or \
                action.default is None or action.default is False or action.default is argparse.SUPPRESS:
            return text
        return f"{text} (default: %(default)s)"


class _TopFormatter(argparse.RawDescriptionHelpFormatter, _Formatter):
    """The top-level help: its epilog (the environment variables) keeps its lines."""


class _Parser(argparse.ArgumentParser):
    """argparse with usage errors as one line, like every other user error (usage: --help)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", _Formatter)
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
    defaults = _library_defaults()
    _add_train(sub, defaults)
    _add_evaluate(sub)
    _add_sample(sub, defaults)
    _add_plot(sub, defaults)
    _add_encode(sub)
    _add_decode(sub)
    _add_compare(sub, defaults)
    return p


def _verb(sub, name, summary, details=""):
    return sub.add_parser(name, help=summary, description=f"{summary[0].upper()}{summary[1:]}.{details}")


def _library_defaults():
    """The defaults of the model's and the training configuration's arguments."""
    from .model import VAE
    from .plots import plot_run
    from .runs import DEFAULT_KEEP, TrainConfig

    model = {k: v.default for k, v in inspect.signature(VAE).parameters.items()}
    view = {k: v.default for k, v in inspect.signature(plot_run).parameters.items()}
    d = {**model, **vars(TrainConfig()), "keep": DEFAULT_KEEP, "n": view["n"], "view_seed": view["seed"]}
    d["hidden"] = ",".join(map(str, d["hidden"]))       # as typed on the command line
    d["sigma"] = f"fixed:{d['sigma']:g}"
    return d


def _add_train(sub, d):
    t = _verb(sub, "train", "train a model and write a run folder, or continue one with --resume",
              " A run folder holds config.json, metrics.jsonl (one row per epoch) and checkpoints/.")
    _add_data_flags(t.add_argument_group("data"), d)
    _add_model_flags(t.add_argument_group("model"), d)
    _add_optim_flags(t.add_argument_group("optimisation"), d)
    _add_run_flags(t.add_argument_group("run"), d)


def _add_data_flags(g, d):
    from .data import DATASETS
    from .data.custom import DEFAULT_TEST_FRACTION
    from .inputs import BINARIZE, parse_corrupt

    g.add_argument("--dataset", default=d["dataset"], metavar="NAME|PATH",
                   help=f"{', '.join(DATASETS)} (the MNIST subset inside the package, or read from --data-dir or "
                        "downloaded), or one's own data: an .npz file (x_train[, x_test, y_train, y_test]) or "
                        "a folder of PNG/JPEG images (labels from class sub-folders)")
    g.add_argument("--test-fraction", type=_open_fraction, metavar="F",
                   help="own data without a test split: hold out this part of the images, chosen by --seed "
                        f"(default {DEFAULT_TEST_FRACTION})")
    _add_own_image_shape_flag(g)
    g.add_argument("--data-dir", metavar="DIR", help="mnist / fashion-mnist: read the four IDX files (raw or .gz) "
                   "from DIR instead of downloading them into the cache; with --resume on one's own data that "
                   "moved: the folder now holding its .npz or image folder")
    g.add_argument("--binarize", default=d["binarize"], choices=BINARIZE,
                   help="make pixels 0/1: once per image (static) or at every step (dynamic)")
    g.add_argument("--corrupt", default=d["corrupt"], metavar="SPEC", type=_library_check(parse_corrupt,
                   "none, gaussian:S (S > 0) or mask:P (0 < P < 1)"),
                   help="denoising: none, gaussian:S (add S·N(0, 1)) or mask:P (zero pixels with probability P)")


def _add_own_image_shape_flag(g):
    g.add_argument("--image-shape", type=_image_shape, metavar="H,W[,C]",
                   help="own flat data (N, D): the image shape its rows unflatten to, for the figures")


def _add_model_flags(m, d):
    from .likelihoods import LIKELIHOODS, parse_sigma
    from .model import DTYPES, MODES, OBJECTIVES
    from .ops.activations import ACTIVATIONS
    from .ops.precision import PRECISIONS
    from .posteriors import POSTERIORS

    m.add_argument("--hidden", type=_hidden, default=d["hidden"], metavar="SIZES",
                   help="encoder layer sizes, mirrored by the decoder: 400 or 512,256; '' is a linear VAE")
    m.add_argument("--latent", type=_positive_int, default=d["latent"], metavar="L", help="latent size")
    m.add_argument("--activation", default=d["activation"], choices=ACTIVATIONS, help="hidden-layer activation")
    m.add_argument("--likelihood", default=d["likelihood"], choices=list(LIKELIHOODS),
                   help="p(x|z): Bernoulli on logits, or Gaussian (see --sigma)")
    m.add_argument("--sigma", type=_library_check(parse_sigma, "fixed:V (V > 0), shared or per-pixel"),
                   default=d["sigma"], help="--likelihood gaussian only: σ fixed at V, or learned (shared, per-pixel)")
    m.add_argument("--beta", type=_nonneg_float, default=d["beta"], help="weight of the KL term (β-VAE)")
    m.add_argument("--mode", default=d["mode"], choices=list(MODES),
                   help="vae; ae: a plain autoencoder (no KL); kl-only: the KL term alone")
    m.add_argument("--posterior", default=d["posterior"], choices=list(POSTERIORS),
                   help="q(z|x): diagonal N(μ, diag σ²) or full N(μ, SSᵀ)")
    m.add_argument("--offdiag-scale", type=_positive_float, default=d["offdiag_scale"], metavar="C",
                   help="--posterior full only: S = C × the head's outputs below the diagonal "
                        "(default 1/√L; 1 is the plain parameterisation)")
    m.add_argument("--objective", default=d["objective"], choices=OBJECTIVES,
                   help="elbo, or iwae: the importance-weighted bound of --iw-samples samples")
    m.add_argument("--iw-samples", type=_positive_int, default=d["iw_samples"], metavar="K",
                   help="--objective iwae only: samples per image (default 5)")
    m.add_argument("--dtype", default=d["dtype"], choices=DTYPES, help="floating-point type of the model")
    m.add_argument("--precision", default=d["precision"], choices=PRECISIONS,
                   help="the matrix products (GPU only for tf32, bf16): fp32; tf32: TF32 tensor cores; bf16: "
                        "bfloat16 operands, FP32 accumulation. Weights, optimizer state, elementwise blocks and "
                        "losses stay float32")


def _add_optim_flags(o, d):
    from .optim import OPTIMIZERS
    from .runs import OUTPUT_BIAS
    from .step import LR_SCHEDULES

    o.add_argument("--epochs", type=_positive_int, default=d["epochs"], metavar="N",
                   help="total epochs; with --resume the run's own unless given (a larger N extends it)")
    o.add_argument("--batch-size", type=_positive_int, default=d["batch_size"], metavar="B", help="images per step")
    o.add_argument("--lr", type=_positive_float, default=d["lr"], help="learning rate")
    o.add_argument("--optimizer", default=d["optimizer"], choices=list(OPTIMIZERS), help="the update rule")
    o.add_argument("--momentum", type=_fraction, default=d["momentum"], help="--optimizer sgd only: momentum")
    o.add_argument("--kl-warmup", type=_nonneg_float, default=d["kl_warmup"], metavar="EPOCHS",
                   help="β rises linearly per step from 0 over this many epochs")
    o.add_argument("--lr-schedule", default="constant", choices=list(LR_SCHEDULES),
                   help="--optimizer adam: constant, or iwae: lr·10^(−i/7) in stage i of 3^i epochs (Burda et al.)")
    o.add_argument("--adam-eps", type=_positive_float, metavar="EPS", help="--optimizer adam: its ε (default 1e-8)")
    o.add_argument("--output-bias", default="zero", choices=("zero", *OUTPUT_BIAS),
                   help="the decoder's output bias at the start: zero, or data-mean: the output whose mean is "
                        "each pixel's training mean (for Bernoulli, its logit)")


def _add_run_flags(r, d):
    from .backend import BACKENDS
    from .runs import PRESETS

    r.add_argument("--preset", choices=list(PRESETS), help="named settings that every flag given overrides; "
                   "iwae-paper: Burda et al.'s MNIST setup (hidden 200,200 tanh, latent 50, dynamic binarisation, "
                   "batch 20, Adam ε 1e-4, --lr-schedule iwae, --output-bias data-mean, 3280 epochs)")
    r.add_argument("--seed", type=_seed, default=d["seed"], help="seeds the initial weights and every random stream")
    r.add_argument("--backend", default="numpy", choices=BACKENDS, help="array backend (auto: cupy if a GPU is usable)")
    r.add_argument("--out", metavar="DIR", help="the run folder to create (default: runs/<timestamp>)")
    r.add_argument("--resume", metavar="RUN", help="continue the run in folder RUN: to its own --epochs, or to "
                   "--epochs N; other flags must keep the run's values, except --backend, --no-graph, --quiet, "
                   "--keep and --data-dir")
    r.add_argument("--overwrite", action="store_true", help="replace the run in --out: the new run trains in "
                   "<out>.new and takes its place only once it completes")
    r.add_argument("--keep", type=_keep, default=d["keep"], metavar="N|all",
                   help="end-of-epoch checkpoints kept: the newest N plus the best by test loss, or all")
    r.add_argument("--quiet", action="store_true", help="no progress bar (the per-epoch lines stay)")
    r.add_argument("--no-graph", action="store_true",
                   help="--backend cupy: run each step eagerly instead of replaying it as one CUDA graph")


def _add_evaluate(sub):
    from .backend import BACKENDS
    from .evaluate import DEFAULT_KS

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
    from .backend import BACKENDS

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
    from .plots import FORMATS

    s = _verb(sub, "plot", "draw every figure of a run (latent space, samples, reconstructions, ...) into a folder")
    _view_arguments(s, d)
    s.add_argument("--out", metavar="DIR", help="folder for the figures (default: RUN/figures)")
    s.add_argument("--format", default="png", choices=sorted(set(FORMATS.values())), help="the figures' file format")
    _add_run_data_flags(s)


def _add_encode(sub):
    from .backend import BACKENDS

    e = _verb(sub, "encode", "write the codes of a run's images: q(z|x)'s parameters per image, their labels, "
              "and with --sample one z ~ q(z|x)",
              " The .npz holds mu and logvar (diagonal posterior), mu and scale_tril (full), or mu alone (ae); "
              "y when the data have labels; z with --sample.")
    e.add_argument("run_dir", metavar="RUN", help="a run folder (as written by train)")
    e.add_argument("--split", default="test", choices=("test", "train"), help="which of the run's images")
    e.add_argument("--limit", type=_positive_int, metavar="N", help="only the first N images of the split")
    e.add_argument("--sample", action="store_true", help="also one z ~ q(z|x) per image (the model's eval stream)")
    e.add_argument("--out", type=_npz_file, metavar="FILE.npz", help="where to write (default: RUN/codes-<split>.npz)")
    _add_checkpoint_flags(e)
    _add_run_data_flags(e)
    e.add_argument("--backend", choices=BACKENDS, help="array backend (default: the run's own if usable)")


def _add_decode(sub):
    from .backend import BACKENDS

    d = _verb(sub, "decode", "decode codes (z if the file has it, else mu) into images",
              " Edit the codes written by encode (attribute arithmetic, interpolation, ...) and decode them.")
    d.add_argument("run_dir", metavar="RUN", help="a run folder (as written by train)")
    d.add_argument("codes", metavar="CODES.npz", help="an .npz with z or mu of shape (N, latent), as encode writes")
    d.add_argument("--out", type=_image_output, metavar="FILE", help="a figure (.png, .pdf, .svg, .jpg) of the "
                   "decoder means, or an .npz holding them as x (default: RUN/decoded.png)")
    _add_image_shape_flag(d)
    _add_checkpoint_flags(d)
    d.add_argument("--backend", choices=BACKENDS, help="array backend (default: the run's own if usable)")


def _add_compare(sub, d):
    from .backend import BACKENDS
    from .data import DATASETS

    c = _verb(sub, "compare", "train an AE, a KL-only model and a VAE with a 2-D latent and draw them side by side",
              " Writes a folder holding each model's run (final checkpoint, metrics with test loss), "
              "compare.json and compare.png.")
    c.add_argument("--dataset", default=d["dataset"], metavar="NAME|PATH",
                   help=f"the data, as for train: {', '.join(DATASETS)}, or a labelled .npz or image folder")
    c.add_argument("--data-dir", metavar="DIR", help="mnist / fashion-mnist: read the IDX files from DIR")
    _add_own_image_shape_flag(c)
    c.add_argument("--epochs", type=_positive_int, default=d["epochs"], metavar="N", help="epochs per model")
    c.add_argument("--batch-size", type=_positive_int, default=d["batch_size"], metavar="B", help="images per step")
    c.add_argument("--hidden", type=_hidden, default=d["hidden"], metavar="SIZES", help="encoder layer sizes")
    c.add_argument("--lr", type=_positive_float, default=d["lr"], help="learning rate")
    c.add_argument("--seed", type=_seed, default=d["seed"], help="seeds the three models and the shared prior draws")
    c.add_argument("--backend", default="numpy", choices=BACKENDS, help="array backend")
    c.add_argument("--out", metavar="DIR", help="the folder to create (default: runs/compare-<timestamp>)")
    c.add_argument("--quiet", action="store_true", help="no progress bar")


# -- rendering ------------------------------------------------------------------------------
class _Progress:
    """Renders the library's callbacks. On a terminal (stderr) and unless ``quiet``: a tqdm bar
    per epoch from its first step, with rate and ETA (also for downloads and evaluate's
    importance sampling), cleared before anything else is printed. Always: one labelled line
    per epoch on stdout. Use it as a context manager, so the bar is gone before an error shows."""

    def __init__(self, quiet, err=None, out=None):
        self.err, self.out = err or sys.stderr, out or sys.stdout
        self.bars = not quiet and self.err.isatty()
        self.bar, self.key = None, None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        if self.bar is not None:
            self.bar.close()
            self.bar, self.key = None, None

    def _bar(self, key, total, initial=0, **kw):
        if self.key != key:
            from tqdm import tqdm

            self.close()
            self.bar = tqdm(total=total, initial=initial, leave=False, file=self.err, dynamic_ncols=True, **kw)
            self.key = key
        return self.bar

    def __call__(self, event, info):
        """fit's callback (see scratchvae.train)."""
        if event == "batch" and self.bars:
            name = f"{info['model']} " if "model" in info else ""
            bar = self._bar((name, info["epoch"]), info["batches"], info["batch"], unit="batch",
                            desc=f"{name}epoch {info['epoch']}/{info['epochs']}")
            if info["batch"] > bar.n:
                bar.update(info["batch"] - bar.n)
        elif event == "epoch":
            self.say(format_epoch(info))
        elif event == "graph" and not info.get("enabled", True):
            self.say(f"scratchvae: CUDA graph off ({info['reason']}); training eagerly", err=True)

    def images(self, done, total):
        """evaluate's importance-sampling progress: ``done`` of ``total`` test images."""
        if self.bars:
            bar = self._bar("log p(x)", total, unit="image", desc="log p(x)")
            bar.update(done - bar.n)

    def download(self, done, total):
        """A download's progress in bytes (a new bar for each file)."""
        if self.bars:
            if done == 0:
                self.close()
            bar = self._bar("download", total, unit="B", unit_scale=True, desc="download")
            bar.update(done - bar.n)

    def say(self, text, err=False):
        """Print a line (stdout, or stderr with ``err``), the bar cleared first."""
        self.close()
        print(text, file=self.err if err else self.out, flush=True)


def format_epoch(row):
    """One epoch's line: its −ELBO (= reconstruction + KL, per image) on train and test, and time."""
    total = row.get("epochs")
    at = f"{row['epoch']:>{len(str(total))}}/{total}" if total else f"{row['epoch']:>3}"
    s = (f"epoch {at}  train -ELBO {row['train_loss']:9.3f} = recon {row['train_recon']:9.3f}"
         f" + KL {row['train_kl']:7.3f}")
    if "test_loss" in row:
        s += (f"  test -ELBO {row['test_loss']:9.3f} = recon {row['test_recon']:9.3f}"
              f" + KL {row['test_kl']:7.3f}")
    s += f"  {row['seconds']:6.1f} s"
    return f"{row['model']:8s} {s}" if "model" in row else s


class _StopFlag:
    """SIGINT/SIGTERM set a flag that fit polls; the checkpoint write itself is atomic."""

    def __init__(self):
        self.signum = None
        self._old = {}

    def __enter__(self):
        for s in (signal.SIGINT, signal.SIGTERM):
            self._old[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum, frame):
        self.signum = self.signum or signum

    def __call__(self):
        return self.signum is not None

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)


# -- checks ---------------------------------------------------------------------------------
def _flag_name(dest):
    return "--" + dest.replace("_", "-")


def _refuse(a, rules):
    """InputError naming every flag the command line gave where it does not apply.

    rules: (dest, does not apply here, why) triples."""
    from .errors import InputError

    preset = getattr(a, "from_preset", ())
    why = [text + (f" (--preset {a.preset} sets {_flag_name(dest)})" if dest in preset else "")
           for dest, bad, text in rules if bad and dest in a.given]
    if why:
        raise InputError("; ".join(why))


def _refuse_data_dir(a, dataset):
    _refuse(a, [("data_dir", dataset not in ("mnist", "fashion-mnist"),
                 "--data-dir applies to the datasets read from IDX files (mnist, fashion-mnist), "
                 f"not to {dataset}")])


def _run_data(run, a, progress=None):
    """A run's (train, test): its data, where they were or where --dataset / --data-dir say they
    are now, split and shaped as when it was trained, and checked against its fingerprint."""
    from .data.fingerprint import check_fingerprint, locate

    tc, recorded = run.train_config, (run.config.get("data") or {}).get("fingerprint")
    dataset, data_dir = locate(tc.dataset, run.config.get("data_dir"), a.dataset if "dataset" in a.given else None,
                               a.data_dir, fingerprinted=recorded is not None)
    train, test = _load_data(dataset, data_dir, progress, test_fraction=tc.test_fraction,
                             seed=run.config["model"].get("seed", 0), image_shape=tc.image_shape)
    check_fingerprint(recorded, train, test, dataset)
    return train, test


def _shown(v):
    if isinstance(v, (list, tuple)):
        return ",".join(map(str, v)) or "''"
    return str(v)


def _refuse_differences(a, run):
    """--resume: refuse every flag given with a value other than the run's, naming each (one's own
    data may have moved: --dataset is checked against the run's fingerprint instead)."""
    from .data import DATASETS
    from .errors import InputError
    from .inputs import parse_corrupt
    from .likelihoods import parse_sigma

    canonical = {"hidden": tuple, "sigma": parse_sigma, "corrupt": parse_corrupt,  # 400 == [400], ...
                 "dataset": _dataset_name, "image_shape": lambda v: tuple(v) if v else None}
    # a model argument a run does not record has its default (config.json lists posterior,
    # objective, iw_samples and precision only where they differ from it); so has a setting
    # a run leaves unset (None), as its flag names it
    recorded = {**_model_defaults(), **run.config["model"], **vars(run.train_config)}
    recorded.update({k: v for k, v in _unset_as_flags().items() if recorded.get(k) is None})
    diffs = []
    moves = {"dataset"} if run.train_config.dataset not in DATASETS else set()
    for dest in sorted(a.given & recorded.keys() - set(RESUMABLE) - moves):
        same = canonical.get(dest, lambda v: v)
        if same(getattr(a, dest)) != same(recorded[dest]):
            diffs.append(f"{_flag_name(dest)} {_shown(getattr(a, dest))} (the run has {_shown(recorded[dest])})")
    if "out" in a.given and Path(a.out).resolve() != Path(a.resume).resolve():
        diffs.append(f"--out {a.out} (the run is in {a.resume})")
    if diffs:
        raise InputError(f"--resume {a.resume}: {'; '.join(diffs)}: a resumed run keeps its settings "
                         f"(start a new run to change them; --epochs, --backend, --no-graph, --quiet, "
                         f"--keep and --data-dir may change, and --dataset for one's own data that moved)")


def _unset_as_flags():
    """What the flags of the optional training settings say for 'not set'."""
    from .optim import Adam

    return {"lr_schedule": "constant", "output_bias": "zero",
            "adam_eps": inspect.signature(Adam).parameters["eps"].default}


def _model_defaults():
    from .model import VAE

    return {k: v.default for k, v in inspect.signature(VAE).parameters.items() if k != "backend"}


def _load_data(dataset, data_dir, progress=None, **own):
    """The dataset, with the data layer's errors speaking of --data-dir. ``own``: test_fraction,
    seed and image_shape, for one's own data."""
    from .data import load_dataset
    from .errors import DataError

    try:
        return load_dataset(dataset, data_dir=data_dir, progress=progress, **own)
    except DataError as err:
        text = str(err).replace("data_dir=FOLDER", "--data-dir DIR").replace("data_dir", "--data-dir")
        raise type(err)(text) from None


def _check_batch_size(batch_size, train):
    from .errors import InputError

    if batch_size > len(train):
        raise InputError(f"--batch-size {batch_size} is larger than the training set ({len(train)} images)")


def _train_target(out, overwrite):
    """The folder to train into for --out ``out`` (``out``, or ``<out>.new`` to replace a run
    there with --overwrite), after checks that only read."""
    from .errors import InputError
    from .runs import CONFIG, check_run_dir, replacement_dir

    into = out
    if out.is_dir() and any(out.iterdir()):
        if not (out / CONFIG).exists():
            raise InputError(f"--out {out} exists, is not empty and holds no run; choose another folder"
                             + (" (--overwrite replaces runs only)" if overwrite else ""))
        if not overwrite:
            raise InputError(f"--out {out} already holds a run: pass --resume {out} to continue it "
                             f"or --overwrite to replace it")
        into = replacement_dir(out)
        if into.exists():
            raise InputError(f"--overwrite: {into} already holds a new run for {out}; continue it with "
                             f"--resume {into} (it replaces {out} when it completes) or remove it")
    check_run_dir(into, what="--out")
    return into


def _command(a):
    return shlex.join(["scratchvae", *a.argv])


def _timestamped(prefix=""):
    return Path("runs") / f"{prefix}{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"


# -- commands -------------------------------------------------------------------------------
def cmd_train(a):
    if a.resume:
        _refuse(a, [("preset", True, "--preset does not apply to --resume (a resumed run keeps its own settings)")])
        return _train_resume(a)
    if a.preset:
        _apply_preset(a)
    return _train_new(a)


def _apply_preset(a):
    """Set the flags of --preset that the command line did not give."""
    from .runs import PRESETS

    a.from_preset = {dest for dest in PRESETS[a.preset] if dest not in a.given}
    for dest in a.from_preset:
        setattr(a, dest, PRESETS[a.preset][dest])
    a.given |= a.from_preset       # so a setting that does not apply is refused, by name


def _train_new(a):
    from .data.fingerprint import data_record
    from .likelihoods import LIKELIHOODS
    from .model import VAE
    from .plots import tile_shape
    from .runs import REPLACES, TrainConfig

    _refuse_train_flags(a)
    out = Path(a.out) if a.out else _timestamped()
    into = _train_target(out, a.overwrite)
    with _Progress(a.quiet) as progress:
        train, test = _load_data(a.dataset, a.data_dir, progress.download, test_fraction=a.test_fraction,
                                 seed=a.seed, image_shape=a.image_shape)
    _check_batch_size(a.batch_size, train)
    model = VAE(input_dim=train.images.shape[1], hidden=a.hidden, latent=a.latent, activation=a.activation,
                likelihood=a.likelihood, sigma=a.sigma if LIKELIHOODS[a.likelihood].has_sigma else 1.0,
                mode=a.mode, beta=a.beta, dtype=a.dtype, seed=a.seed, backend=a.backend,
                posterior=a.posterior, objective=a.objective, iw_samples=a.iw_samples, precision=a.precision,
                offdiag_scale=a.offdiag_scale)
    cfg = TrainConfig(epochs=a.epochs, batch_size=a.batch_size, optimizer=a.optimizer, lr=a.lr,
                      momentum=a.momentum, binarize=a.binarize, kl_warmup=a.kl_warmup,
                      corrupt=a.corrupt, dataset=_dataset_name(a.dataset), test_fraction=test.held_out,
                      image_shape=list(a.image_shape) if a.image_shape else None,
                      lr_schedule=None if a.lr_schedule == "constant" else a.lr_schedule, adam_eps=a.adam_eps,
                      output_bias=None if a.output_bias == "zero" else a.output_bias).validate()
    info = {"data_dir": str(Path(a.data_dir).resolve()) if a.data_dir else None, "command": _command(a),
            "data": data_record(train, test)}
    if into != out:
        info[REPLACES] = out.name
    print(f"training {model} on {a.dataset} ({train.images.shape[0]} train, {test.images.shape[0]} test) -> "
          + (f"{into}, to replace {out} once complete" if into != out else f"{out}"), flush=True)
    from .train import fit

    status = _train(a, into, out if into != out else None, fit, model, train.images, test.images,
                    config=cfg, run_dir=into, keep=a.keep, run_info=info)
    if tile_shape(train.images.shape[1], train.image_shape) is None:      # said once the run is there
        print(f"scratchvae: note: the data are vectors of {train.images.shape[1]} values with no image shape: the "
              f"figures that draw images (plot, sample, decode, compare) need --image-shape H,W[,C]", file=sys.stderr)
    return status


def _refuse_train_flags(a):
    """Refuse, naming them, the flags of a new run that do not apply to its other flags."""
    from .data import DATASETS
    from .likelihoods import LIKELIHOODS

    own = a.dataset not in DATASETS
    reduced = a.precision != "fp32"
    _refuse(a, [
        ("precision", reduced and a.dtype != "float32",
         f"--precision {a.precision} applies to --dtype float32 (it rounds float32 products), got --dtype {a.dtype}"),
        ("precision", reduced and _backend_name(a.backend) == "numpy",
         f"--precision {a.precision} needs a CUDA GPU (--backend cupy): the numpy backend computes every "
         f"matrix product in fp32" + (" (--backend auto found no usable GPU)" if a.backend == "auto" else "")),
        ("momentum", a.optimizer != "sgd", f"--momentum applies to --optimizer sgd only, got --optimizer {a.optimizer}"),
        ("adam_eps", a.optimizer != "adam", f"--adam-eps applies to --optimizer adam only, got --optimizer {a.optimizer}"),
        ("lr_schedule", a.optimizer != "adam" and a.lr_schedule != "constant",
         f"--lr-schedule {a.lr_schedule} applies to --optimizer adam only, got --optimizer {a.optimizer}"),
        ("sigma", not LIKELIHOODS[a.likelihood].has_sigma,
         f"--sigma applies to --likelihood gaussian only, got --likelihood {a.likelihood}"),
        ("beta", a.mode == "ae", "--beta weighs the KL term, which --mode ae does not have"),
        ("kl_warmup", a.mode == "ae", "--kl-warmup warms up the KL term, which --mode ae does not have"),
        ("no_graph", a.backend == "numpy", "--no-graph applies to --backend cupy or auto; numpy runs each step "
                                           "eagerly anyway"),
        ("posterior", a.mode == "ae", "--posterior shapes q(z|x), which --mode ae does not have (its code is a point)"),
        ("offdiag_scale", a.posterior != "full", f"--offdiag-scale applies to --posterior full only, got "
                                                 f"--posterior {a.posterior}"),
        ("objective", a.mode != "vae", f"--objective applies to --mode vae only, got --mode {a.mode}"),
        ("iw_samples", a.objective != "iwae", "--iw-samples is the K of --objective iwae; the ELBO draws one sample"),
        ("kl_warmup", a.objective == "iwae", "--kl-warmup does not apply to --objective iwae: its bound has no "
                                             "separate KL term to warm up"),
        ("beta", a.objective == "iwae", "--beta weighs the ELBO's KL term; --objective iwae has none"),
        ("test_fraction", not own, f"--test-fraction applies to one's own data; {a.dataset} has its own test split"),
        ("image_shape", not own, f"--image-shape applies to one's own flat data; {a.dataset} are 28x28 images"),
    ])
    _refuse_data_dir(a, a.dataset)


def _backend_name(name):
    """The backend --backend ``name`` runs on ('auto': cupy where a GPU is usable, else numpy)."""
    from .backend import cupy_usable

    return ("cupy" if cupy_usable() else "numpy") if name == "auto" else name


def _dataset_name(dataset):
    """What a run records of --dataset: a built-in name, or the absolute path of one's own data."""
    from .data import DATASETS

    return dataset if dataset in DATASETS else str(Path(dataset).expanduser().resolve())


def _train(a, folder, replacing, train, *args, **kwargs):
    """Run ``train`` (fit or resume) with ``args`` into ``folder``, render it, report an interrupt
    or a failure, and move a completed run that replaces another (``replacing``) into its place."""
    from .runs import finish_replacement, writing
    from .train import Interrupted

    with writing(replacing) if replacing else contextlib.nullcontext(), _Progress(a.quiet) as progress, \
            _StopFlag() as stop:          # the run to replace has one writer too: this command
        try:
            train(*args, callback=progress, should_stop=stop, graph=False if a.no_graph else None, **kwargs)
        except Interrupted as e:
            return _interrupted(a, e, folder, replacing, progress, stop.signum)
        except ScratchVAEError as e:
            if replacing is None:
                raise
            partial = (f"the partial new run is in {folder} (continue it with: {_resume_command(a, folder)})"
                       if folder.exists() else "no new run was written")
            raise type(e)(f"{e}; the run in {replacing} is untouched, {partial}") from None
        moved = finish_replacement(folder)
    if moved is not None:
        print(f"the new run replaced the old one in {moved}")
    return 0


def _resume_command(a, run_dir):
    extra = [f for dest, f in (("backend", f"--backend {a.backend}"), ("no_graph", "--no-graph")) if dest in a.given]
    return " ".join([f"scratchvae train --resume {shlex.quote(str(run_dir))}", *extra])


def _interrupted(a, e, run_dir, replacing, progress, signum):
    """Report the checkpoint of an interrupted run and the command that continues it; the exit
    status is 128 + the first signal."""
    progress.say(f"scratchvae: interrupted: {e}; checkpoint {e.checkpoint}", err=True)
    if replacing is not None:
        progress.say(f"the run in {replacing} is untouched; the new run, in {run_dir}, replaces it "
                     f"once it completes", err=True)
    progress.say(f"resume with: {_resume_command(a, run_dir)}", err=True)
    return 128 + int(signum) if signum is not None else EXIT_INTERRUPTED


def _train_resume(a):
    from .runs import writing

    _refuse(a, [("overwrite", True, "--overwrite does not apply to --resume (a resumed run stays where it is)"),
                ("no_graph", "backend" in a.given and a.backend == "numpy",
                 "--no-graph applies to --backend cupy or auto; numpy runs each step eagerly anyway")])
    with writing(a.resume):        # before it is read: what is read is what is continued
        return _resume_held(a)


def _resume_held(a):
    from .errors import InputError
    from .runs import REPLACES, finish_replacement, load_run
    from .train import resume

    run = load_run(a.resume, backend=a.backend if "backend" in a.given else None)
    _refuse_differences(a, run)
    done, batch = run.meta["epoch"], run.meta.get("batch", 0)
    epochs = a.epochs if "epochs" in a.given else run.train_config.epochs
    if epochs < done or (batch and epochs <= done):
        raise InputError(f"--epochs is the total number of epochs: the run has finished {done}"
                         + (f" and is inside epoch {done + 1}" if batch else "") + f", got --epochs {epochs}")
    if epochs <= done:               # finished: whether --epochs names its own total or not, nothing to do
        if run.config.get(REPLACES):     # complete, but killed before it replaced the old run
            print(f"the new run replaced the old one in {finish_replacement(a.resume)}")
            return 0
        raise InputError(f"the run in {a.resume} has finished its {done} epochs; "
                         f"pass --epochs N (N > {done}) to train it further")
    with _Progress(a.quiet) as progress:
        train, test = _run_data(run, a, progress.download)
    print(f"resuming {a.resume} at epoch {done}" + (f", batch {batch}" if batch else "") + f" -> {epochs} epochs",
          flush=True)
    replaces = run.config.get(REPLACES)
    return _train(a, Path(a.resume), Path(a.resume).parent / replaces if replaces else None, resume,
                  run, train.images, test.images, epochs=epochs,
                  record={"command": _command(a)},
                  **({"keep": a.keep} if "keep" in a.given else {}))


def _reader_run(a):
    """The run of a verb that reads it, at the checkpoint --epoch or --checkpoint names (default:
    the newest end-of-epoch one)."""
    from .runs import load_run

    _refuse(a, [("epoch", a.checkpoint is not None,
                 f"--checkpoint names a checkpoint itself; --epoch {a.epoch} does not apply with it")])
    return load_run(a.run_dir, epoch=a.epoch, backend=a.backend, checkpoint=a.checkpoint, finished=True)


def _run_and_data(a, progress=None):
    run = _reader_run(a)
    train, test = _run_data(run, a, progress)
    return run, train, test


def cmd_evaluate(a):
    from .evaluate import evaluate_run, format_report

    with _Progress(a.quiet) as progress:
        run, train, test = _run_and_data(a, progress.download)
        res = evaluate_run(run, train, test, ks=a.ks, limit=a.limit, progress=progress.images)
    print(json.dumps(res, indent=2) if a.json else format_report(res))
    return 0


def cmd_sample(a):
    from .plots import sample_figure

    run = _reader_run(a)
    out = Path(a.out or Path(a.run_dir) / "samples.png")
    sample_figure(run.model, n=a.n, seed=a.seed, draw=a.sample_x, path=out, image_shape=_image_shape_of(run, a))
    print(out)
    return 0


def _image_shape_of(run, a):
    """The image shape a run's images are drawn in: --image-shape (checked against the data's width),
    else the one its data were recorded with (None: older runs, flat data, square images)."""
    from .data.dataset import check_image_shape

    if a.image_shape is not None:
        return check_image_shape(a.image_shape, run.model.input_dim)
    shape = (run.config.get("data") or {}).get("image_shape")
    return tuple(shape) if shape else None


def cmd_encode(a):
    from .codes import encode_images, write_codes
    from .inputs import prepare_split

    with _Progress(True) as progress:
        run, train, test = _run_and_data(a, progress.download)
    data = test if a.split == "test" else train
    images, labels = data.images[:a.limit], None if data.labels is None else data.labels[:a.limit]
    x = prepare_split(images, run.model, run.train_config.binarize, a.split)   # binarised as in training
    codes = encode_images(run.model, x, labels, sample=a.sample)
    out = Path(a.out or Path(a.run_dir) / f"codes-{a.split}.npz")
    write_codes(out, codes, {"run": str(Path(a.run_dir).resolve()), **run.position,
                             "split": a.split, "posterior": run.model.posterior.name, "sampled": a.sample})
    shapes = ", ".join(f"{k} {v.shape}" for k, v in codes.items())
    print(f"{out}: {shapes}")
    return 0


def cmd_decode(a):
    from .codes import decode_codes, read_codes
    from .plots import _tile, grid_figure

    out = Path(a.out or Path(a.run_dir) / "decoded.png")
    figure = out.suffix.lower() != ".npz"
    _refuse(a, [("image_shape", not figure, f"--image-shape draws a figure; --out {out} holds the pixels")])
    run = _reader_run(a)
    shape = _tile(run.model, image_shape=_image_shape_of(run, a)) if figure else None
    pixels, which = decode_codes(run.model, read_codes(a.codes))
    if figure:
        grid_figure(pixels, shape, out, f"decoder means of {len(pixels)} codes ({which}) — {Path(a.codes).name}")
    else:
        from .codes import write_codes

        write_codes(out, {"x": pixels}, {"decoded": which, "codes": str(a.codes)})
    print(f"decoded {which} of {len(pixels)} codes -> {out}")
    return 0


def cmd_plot(a):
    from .plots import figure_plan, plot_run
    from .runs import writing

    out = Path(a.out or Path(a.run_dir) / "figures")
    inside = out.resolve().is_relative_to(Path(a.run_dir).resolve())
    with writing(a.run_dir) if inside else contextlib.nullcontext():      # figures written into the run
        run, train, test = _run_and_data(a)
        shape = _image_shape_of(run, a) if a.image_shape else None        # else the data's own
        drawn = plot_run(run, train, test, out_dir=out, n=a.n, seed=a.seed, draw=a.sample_x, fmt=a.format,
                         image_shape=shape)
    print("\n".join(map(str, drawn)))
    for kind, why in figure_plan(run, train, test, shape).items():
        if why:
            print(f"scratchvae: note: skipped {kind}.{a.format}: {why}", file=sys.stderr)
    return 0


def cmd_compare(a):
    from .compare import compare_models
    from .data.fingerprint import data_record
    from .errors import InputError
    from .plots import image_tile
    from .runs import check_run_dir, staged_dir

    _refuse_data_dir(a, a.dataset)
    out = Path(a.out) if a.out else _timestamped("compare-")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError(f"--out {out} exists and is not empty; choose another folder")
    check_run_dir(out, what="--out")
    with _Progress(a.quiet) as progress:
        train, test = _load_data(a.dataset, a.data_dir, progress.download, seed=a.seed, image_shape=a.image_shape)
        _check_batch_size(a.batch_size, train)
        image_tile(train.images.shape[1], train.image_shape)      # the figures draw images: a shape, before training
        with staged_dir(out) as folder:
            res = compare_models(train, test, epochs=a.epochs, batch_size=a.batch_size, hidden=a.hidden, lr=a.lr,
                                 seed=a.seed, backend=a.backend, out=folder / "compare.png", run_dir=folder,
                                 callback=progress, run_info={"command": _command(a), "data": data_record(train, test)})
    for name, acc in res["probe_accuracy"].items():
        print(f"{name:8s} linear-probe accuracy {acc:.3f}  (run: {out / name})")
    print(out / "compare.png")
    print(out / Path(res["posterior_figure"]).name)
    return 0


COMMANDS = {"train": cmd_train, "evaluate": cmd_evaluate, "sample": cmd_sample, "plot": cmd_plot,
            "encode": cmd_encode, "decode": cmd_decode, "compare": cmd_compare}


def main(argv=None):
    from .console import quiet_when_closed

    argv = sys.argv[1:] if argv is None else list(argv)
    with quiet_when_closed():      # a closed pipe (scratchvae train | head -1) ends no run
        return _run_command(argv)


def _run_command(argv):
    a = build_parser().parse_args(argv)
    a.argv, a.given = argv, getattr(a, "given", frozenset())
    try:
        return COMMANDS[a.command](a)
    except ScratchVAEError as e:
        msg = " ".join(str(e).split())
        print(f"scratchvae: error: {msg}", file=sys.stderr)
        return EXIT_USAGE
    except MemoryError as e:      # sizes a user asked for (--latent 10**11) that do not fit
        print(f"scratchvae: error: not enough memory: {' '.join(str(e).split())}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("scratchvae: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
