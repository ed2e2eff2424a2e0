"""The ``scratchvae`` command: train, evaluate, sample, plot, compare.

User errors (bad flags, bad files, bad data) print one line, ``scratchvae: error: ...``,
and exit with status 2; tracebacks are kept for bugs. The library never prints: this
module renders its callbacks (a tqdm bar on a terminal, one line per epoch always).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import inspect
import json
import shlex
import signal
import sys
from pathlib import Path

from . import __version__
from .errors import ScratchVAEError

EXIT_USAGE = 2
EXIT_INTERRUPTED = 128 + 2   # 128 + the signal's number, as a shell reports it: SIGINT 130, SIGTERM 143


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
        except ValueError:
            v = None
        if v is None or not ok(v):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {s!r}")
        return v
    return parse


_positive_int = _checked(int, lambda v: v >= 1, "a positive integer")
_nonneg_float = _checked(float, lambda v: v >= 0, "a number >= 0")
_positive_float = _checked(float, lambda v: v > 0, "a number > 0")


def _sigma(s):
    if s in ("shared", "per-pixel") or s.startswith("fixed:"):
        return s
    raise argparse.ArgumentTypeError(f"expected fixed:V, shared or per-pixel, got {s!r}")


class _Parser(argparse.ArgumentParser):
    """argparse with usage errors as one line, like every other user error (usage: --help)."""

    def error(self, message):
        self.exit(EXIT_USAGE, f"scratchvae: error: {' '.join(message.split())} (see {self.prog} --help)\n")


def build_parser():
    p = _Parser(prog="scratchvae", description=__doc__.splitlines()[0])
    p.add_argument("--version", action="version", version=f"scratchvae {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    defaults = _library_defaults()
    _add_train(sub, defaults)
    _add_evaluate(sub)
    for name, helptext in [("sample", "decode samples from the prior"), ("plot", "draw every figure of a run")]:
        _add_view(sub, name, helptext)
    _add_compare(sub, defaults)
    return p


def _library_defaults():
    """The defaults of the model's and the training configuration's arguments."""
    from .model import VAE
    from .runs import TrainConfig

    model = {k: v.default for k, v in inspect.signature(VAE).parameters.items()}
    return {**model, **vars(TrainConfig())}


def _add_train(sub, d):
    from .backend import BACKENDS
    from .data import DATASETS
    from .inputs import BINARIZE
    from .likelihoods import LIKELIHOODS
    from .model import DTYPES, MODES, OBJECTIVES
    from .ops.activations import ACTIVATIONS
    from .optim import OPTIMIZERS
    from .posteriors import POSTERIORS

    t = sub.add_parser("train", help="train a model and write a run directory")
    g = t.add_argument_group("data")
    g.add_argument("--dataset", default=d["dataset"], choices=DATASETS)
    g.add_argument("--data-dir", help="folder with the IDX files (raw or .gz)")
    g.add_argument("--binarize", default=d["binarize"], choices=BINARIZE)
    g.add_argument("--corrupt", default=d["corrupt"], help="none | gaussian:S | mask:P (denoising)")
    m = t.add_argument_group("model")
    m.add_argument("--hidden", type=_hidden, default=d["hidden"], help="encoder sizes, e.g. 400 or 512,256; '' is linear")
    m.add_argument("--latent", type=_positive_int, default=d["latent"])
    m.add_argument("--activation", default=d["activation"], choices=ACTIVATIONS)
    m.add_argument("--likelihood", default=d["likelihood"], choices=list(LIKELIHOODS))
    m.add_argument("--sigma", type=_sigma, default=d["sigma"], help="Gaussian σ: fixed:V, shared or per-pixel")
    m.add_argument("--beta", type=_nonneg_float, default=d["beta"])
    m.add_argument("--mode", default=d["mode"], choices=list(MODES))
    m.add_argument("--posterior", default=d["posterior"], choices=list(POSTERIORS),
                   help="q(z|x): diagonal N(μ, diag σ²) or full N(μ, SSᵀ)")
    m.add_argument("--objective", default=d["objective"], choices=OBJECTIVES,
                   help="elbo, or iwae: the importance-weighted bound of --iw-samples samples")
    m.add_argument("--iw-samples", type=_positive_int, default=d["iw_samples"], metavar="K",
                   help="samples per image of --objective iwae (default 5)")
    m.add_argument("--dtype", default=d["dtype"], choices=DTYPES)
    o = t.add_argument_group("optimisation")
    o.add_argument("--epochs", type=_positive_int, default=d["epochs"], help="total epochs (also on resume)")
    o.add_argument("--batch-size", type=_positive_int, default=d["batch_size"])
    o.add_argument("--lr", type=_positive_float, default=d["lr"])
    o.add_argument("--optimizer", default=d["optimizer"], choices=list(OPTIMIZERS))
    o.add_argument("--momentum", type=_nonneg_float, default=d["momentum"], help="SGD momentum")
    o.add_argument("--kl-warmup", type=_nonneg_float, default=d["kl_warmup"], metavar="EPOCHS",
                   help="β rises linearly per step from 0 over this many epochs")
    r = t.add_argument_group("run")
    r.add_argument("--seed", type=int, default=d["seed"])
    r.add_argument("--backend", default="numpy", choices=BACKENDS)
    r.add_argument("--out", help="run directory (default runs/<timestamp>)")
    r.add_argument("--resume", metavar="RUN_DIR", help="continue this run to --epochs")
    r.add_argument("--overwrite", action="store_true", help="replace an existing run in --out")
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    r.add_argument("--no-graph", action="store_true",
                   help="cupy: run each step eagerly instead of replaying it as one CUDA graph")


def _add_evaluate(sub):
    from .backend import BACKENDS
    from .evaluate import DEFAULT_KS

    e = sub.add_parser("evaluate", help="test −ELBO, importance-sampled log p(x), active units, probe")
    e.add_argument("run_dir")
    e.add_argument("--epoch", type=_positive_int)
    e.add_argument("--limit", type=_positive_int, help="use the first N test images")
    e.add_argument("--ks", default=",".join(map(str, DEFAULT_KS)), help="importance samples K, comma-separated")
    e.add_argument("--data-dir")
    e.add_argument("--backend", default=None, choices=BACKENDS)
    e.add_argument("--json", action="store_true", help="print the results as JSON")


def _add_view(sub, name, helptext):
    from .backend import BACKENDS
    from .plots import plot_run

    d = {k: v.default for k, v in inspect.signature(plot_run).parameters.items()}
    s = sub.add_parser(name, help=helptext)
    s.add_argument("run_dir")
    s.add_argument("--epoch", type=_positive_int)
    s.add_argument("--n", type=_positive_int, default=d["n"])
    s.add_argument("--seed", type=int, default=d["seed"])
    s.add_argument("--sample-x", action="store_true", help="draw pixels from p(x|z) instead of decoder means")
    s.add_argument("--out", help="output file (sample) or folder (plot)")
    s.add_argument("--data-dir")
    s.add_argument("--backend", default=None, choices=BACKENDS)


def _add_compare(sub, d):
    from .backend import BACKENDS
    from .data import DATASETS

    c = sub.add_parser("compare", help="AE vs KL-only vs VAE with a 2-D latent: latent spaces and decodes")
    c.add_argument("--dataset", default=d["dataset"], choices=DATASETS)
    c.add_argument("--data-dir")
    c.add_argument("--epochs", type=_positive_int, default=d["epochs"])
    c.add_argument("--batch-size", type=_positive_int, default=d["batch_size"])
    c.add_argument("--hidden", type=_hidden, default=d["hidden"])
    c.add_argument("--lr", type=_positive_float, default=d["lr"])
    c.add_argument("--seed", type=int, default=d["seed"])
    c.add_argument("--backend", default="numpy", choices=BACKENDS)
    c.add_argument("--out", default="compare.png")
    c.add_argument("--quiet", action="store_true")


# -- rendering ------------------------------------------------------------------------------
class _Progress:
    """Renders fit's callback: a tqdm bar on a terminal, one line per epoch always."""

    def __init__(self, quiet, stream=sys.stderr):
        self.quiet = quiet or not stream.isatty()
        self.bar = None
        self.last = 0

    def __call__(self, event, info):
        if event == "batch" and not self.quiet:
            if self.bar is None:
                from tqdm import tqdm

                self.bar = tqdm(total=info["batches"], desc=f"epoch {info['epoch']}", leave=False,
                                unit="batch", dynamic_ncols=True)
                self.last = 0
            self.bar.update(info["batch"] - self.last)
            self.last = info["batch"]
        elif event == "epoch":
            self.close()
            print(format_epoch(info), flush=True)
        elif event == "graph" and not info.get("enabled", True):
            print(f"scratchvae: CUDA graph off ({info['reason']}); training eagerly", file=sys.stderr)

    def close(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def format_epoch(row):
    s = (f"epoch {row['epoch']:3d}  train {row['train_loss']:9.3f} (recon {row['train_recon']:8.3f}"
         f" kl {row['train_kl']:7.3f})")
    if "test_loss" in row:
        s += f"  test {row['test_loss']:9.3f} (recon {row['test_recon']:8.3f} kl {row['test_kl']:7.3f})"
    s += f"  {row['seconds']:6.1f}s"
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


def _load_data(dataset, data_dir, progress=None):
    from .data import load_dataset

    return load_dataset(dataset, data_dir=data_dir, progress=progress)


def _download_progress():
    if not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    state = {}

    def cb(done, total):
        bar = state.get("bar")
        if bar is None or done == 0:
            if bar is not None:
                bar.close()
            bar = state["bar"] = tqdm(total=total, unit="B", unit_scale=True, desc="download", leave=False)
        bar.update(done - bar.n)

    return cb


# -- commands -------------------------------------------------------------------------------
def cmd_train(a):
    from .errors import InputError
    from .likelihoods import LIKELIHOODS
    from .model import VAE
    from .runs import TrainConfig, load_run, write_config
    from .step import check_schedule
    from .train import Interrupted, fit, resume

    progress = _Progress(a.quiet)
    if a.resume:
        run = load_run(a.resume, backend=a.backend if a.backend != "numpy" else None)
        tc = run.train_config
        train, test = _load_data(tc.dataset, a.data_dir or run.config.get("data_dir"), _download_progress())
        done = run.meta["epoch"]
        if a.epochs <= done and not run.meta.get("batch"):
            raise InputError(f"--epochs is the total: the run already has {done} epochs, got --epochs {a.epochs}")
        print(f"resuming {a.resume} at epoch {done}"
              + (f", batch {run.meta['batch']}" if run.meta.get("batch") else "") + f" -> {a.epochs} epochs")
        with _StopFlag() as stop:
            try:
                resume(run, train.images, test.images, epochs=a.epochs, callback=progress, should_stop=stop,
                       graph=False if a.no_graph else None)
            except Interrupted as e:
                return _interrupted(e, a.resume, progress, stop.signum)
        progress.close()
        return 0

    out = Path(a.out) if a.out else Path("runs") / _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    if out.exists() and any(out.iterdir()):
        if (out / "config.json").exists() and not a.overwrite:
            raise InputError(f"--out {out} already holds a run: pass --resume {out} to continue it "
                             f"or --overwrite to replace it")
        if not (out / "config.json").exists() and not a.overwrite:
            raise InputError(f"--out {out} exists and is not empty; choose another folder or pass --overwrite")
    _check_writable(out)
    train, test = _load_data(a.dataset, a.data_dir, _download_progress())
    model = VAE(input_dim=train.images.shape[1], hidden=a.hidden, latent=a.latent, activation=a.activation,
                likelihood=a.likelihood, sigma=a.sigma if LIKELIHOODS[a.likelihood].has_sigma else 1.0,
                mode=a.mode, beta=a.beta, dtype=a.dtype, seed=a.seed, backend=a.backend,
                posterior=a.posterior, objective=a.objective, iw_samples=a.iw_samples)
    cfg = TrainConfig(epochs=a.epochs, batch_size=a.batch_size, optimizer=a.optimizer, lr=a.lr,
                      momentum=a.momentum, binarize=a.binarize, kl_warmup=a.kl_warmup,
                      corrupt=a.corrupt, dataset=a.dataset).validate()
    check_schedule(model, cfg.kl_warmup)
    if a.overwrite and out.exists():
        _clear_run(out)
    write_config(out, model, cfg, extra={"data_dir": str(Path(a.data_dir).resolve()) if a.data_dir else None,
                                         "command": " ".join(shlex.quote(s) for s in sys.argv)})
    print(f"training {model} on {a.dataset} ({train.images.shape[0]} train, {test.images.shape[0]} test) "
          f"-> {out}", flush=True)
    with _StopFlag() as stop:
        try:
            fit(model, train.images, test.images, config=cfg, run_dir=out, callback=progress, should_stop=stop,
                graph=False if a.no_graph else None)
        except Interrupted as e:
            return _interrupted(e, out, progress, stop.signum)
    progress.close()
    return 0


def _interrupted(e, run_dir, progress, signum):
    """Report the checkpoint of an interrupted run; the exit status is 128 + the first signal."""
    progress.close()
    print(f"scratchvae: interrupted: {e}; checkpoint {e.checkpoint}", file=sys.stderr)
    print(f"resume with: scratchvae train --resume {shlex.quote(str(run_dir))} --epochs N", file=sys.stderr)
    return 128 + int(signum) if signum is not None else EXIT_INTERRUPTED


def _check_writable(path):
    from .errors import InputError

    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise InputError(f"--out {path} is not writable: {err.strerror or err}") from None


def _clear_run(out):
    for name in ("metrics.jsonl", "config.json"):
        (out / name).unlink(missing_ok=True)
    ck = out / "checkpoints"
    if ck.is_dir():
        for f in ck.iterdir():
            if f.is_file():
                f.unlink()


def _run_and_data(a):
    from .runs import load_run

    run = load_run(a.run_dir, epoch=a.epoch, backend=a.backend)
    train, test = _load_data(run.train_config.dataset, a.data_dir or run.config.get("data_dir"))
    return run, train, test


def cmd_evaluate(a):
    from .errors import InputError
    from .evaluate import evaluate_run

    try:
        ks = tuple(int(k) for k in a.ks.split(","))
    except ValueError:
        raise InputError(f"--ks must be comma-separated integers, got {a.ks!r}") from None
    run, train, test = _run_and_data(a)
    res = evaluate_run(run, train, test, ks=ks, limit=a.limit)
    if a.json:
        print(json.dumps(res, indent=2))
        return 0
    from .evaluate import format_report

    print(format_report(res))
    return 0


def cmd_sample(a):
    from .plots import sample_figure
    from .runs import load_run

    run = load_run(a.run_dir, epoch=a.epoch, backend=a.backend)
    out = Path(a.out or Path(a.run_dir) / "samples.png")
    sample_figure(run.model, n=a.n, seed=a.seed, draw=a.sample_x, path=out)
    print(out)
    return 0


def cmd_plot(a):
    from .plots import plot_run

    run, train, test = _run_and_data(a)
    out = Path(a.out or Path(a.run_dir) / "figures")
    for p in plot_run(run, train, test, out_dir=out, n=a.n, seed=a.seed, draw=a.sample_x):
        print(p)
    return 0


def cmd_compare(a):
    from .compare import compare_models

    train, test = _load_data(a.dataset, a.data_dir)
    progress = _Progress(a.quiet)
    res = compare_models(train, test, epochs=a.epochs, batch_size=a.batch_size, hidden=a.hidden, lr=a.lr,
                         seed=a.seed, backend=a.backend, out=Path(a.out), callback=progress)
    progress.close()
    for name, acc in res["probe_accuracy"].items():
        print(f"{name:8s} linear-probe accuracy {acc:.3f}")
    print(res["figure"])
    print(res["posterior_figure"])
    return 0


COMMANDS = {"train": cmd_train, "evaluate": cmd_evaluate, "sample": cmd_sample, "plot": cmd_plot,
            "compare": cmd_compare}


def main(argv=None):
    parser = build_parser()
    a = parser.parse_args(argv)
    try:
        return COMMANDS[a.command](a)
    except ScratchVAEError as e:
        msg = " ".join(str(e).split())
        print(f"scratchvae: error: {msg}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("scratchvae: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
