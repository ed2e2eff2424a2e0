"""The training loop: :func:`fit` drives a model over a dataset; :func:`load_run` reads a run back.

The library never prints. :func:`fit` reports through ``callback(event, info)``:

``"batch"``   every ``report_every`` steps: ``epoch``, ``batch``, ``batches``, ``step``
``"epoch"``   after each epoch: the metrics row written to ``metrics.jsonl``
``"checkpoint"`` after each checkpoint: ``path``

A run directory holds ``config.json`` (configuration + provenance), ``metrics.jsonl`` (one
object per epoch) and ``checkpoints/`` (see :mod:`scratchvae.checkpoint`). Checkpoints are
host NumPy arrays, so a run trained on one backend evaluates and resumes on the other.

Randomness: shuffling, dynamic binarisation, ε and corruption noise come from the model's
named streams; evaluation draws from the 'eval' stream, so evaluating never changes the
training sequence. Resuming restores every stream, the optimizer and (mid-epoch) the
permutation and batch index, so a resumed run repeats the uninterrupted one exactly on
the same backend and thread settings.
"""

from __future__ import annotations

import json
import math
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import __version__
from .checkpoint import (
    check_arrays,
    checkpoint_name,
    config_differences,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from . import faults
from .errors import CheckpointError, InputError, NonFiniteError, ScratchVAEError
from .evaluate import EVAL_BATCH, evaluate_elbo  # noqa: F401  (re-exported)
from .inputs import STATIC_TEST_STREAM, STATIC_TRAIN_STREAM, binarize_static, prepare_images  # noqa: F401
from .model import VAE
from .optim import SGD, Adam
from .train_graph import make_graph_step  # noqa: F401  (the benchmarks' entry to the graph step)

BINARIZE = ("none", "static", "dynamic")
_STATIC_TRAIN_STREAM, _STATIC_TEST_STREAM = STATIC_TRAIN_STREAM, STATIC_TEST_STREAM
NONFINITE_CHECK_EVERY = 50   # steps between checks of the loss for NaN/Inf (one host sync each)


class Interrupted(ScratchVAEError):
    """Training stopped on request (SIGINT/SIGTERM); a mid-epoch checkpoint was written."""

    def __init__(self, message, checkpoint):
        super().__init__(message)
        self.checkpoint = checkpoint


@dataclass
class TrainConfig:
    """Everything about a run that is not the model's own configuration."""

    epochs: int = 10
    batch_size: int = 128
    optimizer: str = "adam"
    lr: float = 1e-3
    momentum: float = 0.0
    binarize: str = "none"
    kl_warmup: float = 0.0
    corrupt: str = "none"
    dataset: str = "embedded"

    def validate(self):
        if not isinstance(self.epochs, int) or self.epochs < 1:
            raise InputError(f"epochs must be a positive integer, got {self.epochs!r}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise InputError(f"batch_size must be a positive integer, got {self.batch_size!r}")
        if self.optimizer not in ("adam", "sgd"):
            raise InputError(f"optimizer must be 'adam' or 'sgd', got {self.optimizer!r}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise InputError(f"lr must be a positive finite number, got {self.lr!r}")
        if self.binarize not in BINARIZE:
            raise InputError(f"binarize must be one of {', '.join(BINARIZE)}, got {self.binarize!r}")
        if not (self.kl_warmup >= 0 and math.isfinite(self.kl_warmup)):
            raise InputError(f"kl_warmup must be a number of epochs >= 0, got {self.kl_warmup!r}")
        parse_corrupt(self.corrupt)
        return self


def parse_corrupt(spec):
    """'none' | 'gaussian:S' (add S·N(0,1)) | 'mask:P' (zero each pixel with probability P)."""
    if spec == "none":
        return ("none", 0.0)
    kind, _, val = str(spec).partition(":")
    try:
        v = float(val)
    except ValueError:
        v = float("nan")
    if kind == "gaussian" and v > 0 and math.isfinite(v):
        return ("gaussian", v)
    if kind == "mask" and 0 < v < 1:
        return ("mask", v)
    raise InputError(f"corrupt must be 'none', 'gaussian:S' (S > 0) or 'mask:P' (0 < P < 1), got {spec!r}")


# -- provenance ---------------------------------------------------------------------------
def provenance(model) -> dict:
    info = {
        "scratchvae": __version__, "python": sys.version.split()[0], "numpy": np.__version__,
        "platform": platform.platform(), "backend": model.backend.name, "cpu_count": os.cpu_count(),
        "threads_env": {k: os.environ[k] for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                                   "MKL_NUM_THREADS", "OPENBLAS_CORETYPE")
                        if k in os.environ},
    }
    if model.backend.name == "cupy":
        xp = model.xp
        info["cupy"] = xp.__version__
        try:
            props = xp.cuda.runtime.getDeviceProperties(xp.cuda.Device().id)
            info["gpu"] = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
        except Exception:  # pragma: no cover - informational only
            pass
    return info


# -- the loop -------------------------------------------------------------------------------
@dataclass
class _Position:
    epoch: int = 0          # completed epochs
    step: int = 0           # completed optimizer steps
    batch: int = 0          # completed batches within the current epoch
    perm: object = None     # the current epoch's permutation (host int64)
    acc: object = None      # host float64 [neg_elbo, recon, kl] sums so far this epoch
    epoch_seconds: float = 0.0


def make_optimizer(model, cfg: TrainConfig):
    if cfg.optimizer == "adam":
        return Adam(model.theta, lr=cfg.lr)
    return SGD(model.theta, lr=cfg.lr, momentum=cfg.momentum)


@np.errstate(over="ignore", invalid="ignore", divide="ignore")   # fit checks the loss itself
def fit(model, train, test=None, *, config: TrainConfig | None = None, run_dir=None,
        callback=None, report_every=20, should_stop=None, optimizer=None, graph=None, _resume=None):
    """Train ``model`` on ``train`` (images (N, D); uint8 or floats) and return the history.

    config : a :class:`TrainConfig` (epochs is the **total**, also when resuming).
    test : images for the per-epoch test −ELBO (optional).
    run_dir : where to write config.json, metrics.jsonl and checkpoints (None: nothing written).
    callback : ``callback(event, info)`` for progress (see the module docstring).
    should_stop : a callable polled once per step; when it returns True, a mid-epoch
        checkpoint is written and :class:`Interrupted` is raised.
    Every ``NONFINITE_CHECK_EVERY`` steps (one host sync) and before each checkpoint the
    losses since the last check are tested: a NaN/Inf raises :class:`NonFiniteError` naming
    the step. A checkpoint is never written from non-finite parameters.
    graph : replay each training step as one CUDA graph (:mod:`scratchvae.train_graph`); None
        means yes on the cupy backend. The eager loop below stays the reference; the graph runs
        the same arithmetic on device-side state. If the graph cannot be used, the reason goes
        to ``callback("graph", {"enabled": False, "reason": ...})`` and training continues.
    Returns the list of per-epoch metric rows (all epochs, including resumed ones).
    """
    cfg = (config or TrainConfig()).validate()
    if not isinstance(model, VAE):
        raise InputError(f"model must be a scratchvae.VAE, got {type(model).__name__}")
    xtrain = prepare_images(train, model, "train")
    xtest = prepare_images(test, model, "test") if test is not None else None
    n, B = xtrain.shape[0], cfg.batch_size
    if B > n:
        raise InputError(f"batch_size ({B}) is larger than the training set ({n} images)")
    if _resume is not None and _resume[0].perm is not None:
        perm = _resume[0].perm
        if len(perm) != n or not np.array_equal(np.sort(perm), np.arange(n)):
            raise InputError(f"the mid-epoch checkpoint's permutation does not fit a training set of "
                             f"{n} images (it has {len(perm)} entries): resume with the run's own data")
    if cfg.binarize != "none":
        if cfg.binarize == "static":
            xtrain = binarize_static(xtrain, model, _STATIC_TRAIN_STREAM)
        if xtest is not None:
            xtest = binarize_static(xtest, model, _STATIC_TEST_STREAM)
    corrupt_kind, corrupt_val = parse_corrupt(cfg.corrupt)

    opt = optimizer or make_optimizer(model, cfg)
    pos = _Position()
    history = []
    if _resume is not None:
        pos, history = _resume
    run_dir = Path(run_dir) if run_dir is not None else None
    ckpt_dir = run_dir / "checkpoints" if run_dir is not None else None
    if ckpt_dir is not None:
        try:
            ckpt_dir.mkdir(parents=True, exist_ok=True)
            if not (run_dir / "config.json").exists():
                write_config(run_dir, model, cfg)   # so load_run works on a run made by fit alone
        except OSError as err:
            raise InputError(f"run_dir {run_dir} is not writable: {err.strerror or err}") from None

    xp, dt = model.xp, model.dtype
    n_batches = -(-n // B)
    steps_per_epoch = n_batches
    warm_steps = cfg.kl_warmup * steps_per_epoch
    beta_target = model.beta if _resume is None else getattr(model, "_beta_target", model.beta)
    model._beta_target = beta_target
    bufs = {}

    def buffers(nb):
        if nb not in bufs:
            bufs[nb] = (xp.empty((nb, model.input_dim), dt), xp.empty((nb, model.input_dim), dt),
                        xp.empty((nb, model.input_dim), dt))
        return bufs[nb]

    def prepare(xb, xin, u):
        """Dynamic binarisation and corruption of the gathered batch xb -> (input, target)."""
        nb = xb.shape[0]
        if cfg.binarize == "dynamic":
            model.rng["binarize"].uniform((nb, model.input_dim), dt.name, out=u)
            xp.subtract(xb, u, out=u)        # x − u > 0 with probability x
            xp.sign(u, out=u)
            xp.maximum(u, 0, out=xb)
        target = xb
        if corrupt_kind == "gaussian":
            model.rng["noise"].normal((nb, model.input_dim), dt.name, out=xin)
            xin *= corrupt_val
            xin += xb
        elif corrupt_kind == "mask":
            model.rng["noise"].uniform((nb, model.input_dim), dt.name, out=xin)
            xp.subtract(xin, corrupt_val, out=xin)   # keep a pixel when u ≥ P
            xp.sign(xin, out=xin)
            xp.maximum(xin, 0, out=xin)
            xin *= xb
        else:
            xin = xb
        return xin, target

    runner = None
    if graph or (graph is None and model.backend.name == "cupy"):
        from .train_graph import GraphRunner, graph_unsupported

        why = graph_unsupported(model, opt)
        if why is None:
            runner = GraphRunner(model, opt, xtrain, B, n_batches, buffers, prepare, warm_steps, beta_target,
                                 notify=callback)
        elif callback:
            callback("graph", {"enabled": False, "reason": why})

    def save(kind):
        if ckpt_dir is None:
            return None
        mid = kind == "mid"
        params = model.host_params()
        bad = [k for k, v in params.items() if not np.isfinite(v).all()]
        if bad:   # the last step's update can poison the parameters after a finite loss
            raise NonFiniteError(
                f"parameters {', '.join(bad)} became non-finite by step {pos.step}; not writing a "
                f"checkpoint, the last one is intact. Try a smaller --lr, --kl-warmup, or float64")
        arrays = {f"param/{k}": v for k, v in params.items()}
        arrays.update({f"optim/{k}": v for k, v in opt.state().items()})
        meta = {"config": {"model": {**model.config(), "beta": beta_target}, "train": vars(cfg)},
                "epoch": pos.epoch,
                "step": pos.step, "batch": pos.batch if mid else 0,
                "rng": {k: [int(w) for w in v] for k, v in model.rng.state().items()},
                "beta_target": beta_target}
        if mid:
            arrays["perm"] = np.asarray(pos.perm, dtype=np.int64)
            arrays["acc"] = np.asarray(pos.acc, dtype=np.float64)
            meta["epoch_seconds"] = pos.epoch_seconds
        name = checkpoint_name(pos.epoch + 1, pos.batch) if mid else checkpoint_name(pos.epoch)
        path = save_checkpoint(ckpt_dir / name, arrays, meta)
        if callback:
            callback("checkpoint", {"path": str(path), "epoch": pos.epoch, "step": pos.step})
        return path

    while pos.epoch < cfg.epochs:
        t0 = time.perf_counter()
        if pos.perm is None:
            pos.perm = model.rng["shuffle"].permutation(n)
            pos.acc = np.zeros(3)
            pos.batch = 0
            pos.epoch_seconds = 0.0
        if runner is not None:
            losses = runner.begin_epoch(pos.perm, pos.batch, pos.step)
        else:
            perm_dev = model.backend.asarray(pos.perm)
            losses = xp.empty((n_batches, 3), dtype=np.float64)
            losses[:pos.batch] = 0
        first_batch = checked = pos.batch
        for bi in range(pos.batch, n_batches):
            if runner is not None:
                runner.step(bi)      # the same step on device state: one CUDA graph launch
            else:
                idx = perm_dev[bi * B:(bi + 1) * B]
                xb, xin, u = buffers(idx.shape[0])
                xp.take(xtrain, idx, axis=0, out=xb)
                xin, target = prepare(xb, xin, u)
                if warm_steps > 0:
                    model.beta = beta_target * min(1.0, (pos.step + 1) / warm_steps)
                res = model.loss_and_grads(xin, target=target)
                opt.step(model.grad)
                losses[bi, 0] = res.neg_elbo
                losses[bi, 1] = res.recon
                losses[bi, 2] = res.kl
            pos.step += 1
            pos.batch = bi + 1
            faults.mid_epoch_step(pos.step)
            if pos.step % NONFINITE_CHECK_EVERY == 0:
                if runner is None or runner.failed_batch() is not None:   # graph: read the flag only
                    _check_finite(model, losses, checked, bi + 1, pos, n_batches)
                checked = bi + 1
            if callback and (pos.step % report_every == 0 or bi + 1 == n_batches):
                callback("batch", {"epoch": pos.epoch + 1, "batch": bi + 1, "batches": n_batches,
                                   "step": pos.step})
            if should_stop is not None and should_stop() and bi + 1 < n_batches:
                _check_finite(model, losses, checked, bi + 1, pos, n_batches)
                pos.acc = pos.acc + model.backend.to_host(losses[first_batch:bi + 1].sum(axis=0))
                pos.epoch_seconds += time.perf_counter() - t0
                path = save("mid")
                raise Interrupted(f"stopped during epoch {pos.epoch + 1} after batch {bi + 1}", path)
        _check_finite(model, losses, checked, n_batches, pos, n_batches)
        acc = pos.acc + model.backend.to_host(losses[first_batch:].sum(axis=0))
        train_seconds = pos.epoch_seconds + time.perf_counter() - t0
        te = time.perf_counter()
        row = {"epoch": pos.epoch + 1, "step": pos.step,
               "train_loss": acc[0] / n, "train_recon": acc[1] / n, "train_kl": acc[2] / n,
               "beta": model.beta}
        if xtest is not None:
            ev = evaluate_elbo(model, xtest)
            row.update(test_loss=ev["loss"], test_recon=ev["recon"], test_kl=ev["kl"])
        eval_seconds = time.perf_counter() - te
        pos.epoch += 1
        pos.perm, pos.acc, pos.batch = None, None, 0
        if run_dir is not None:
            save("epoch")
        row["eval_seconds"] = eval_seconds
        row["seconds"] = train_seconds + (time.perf_counter() - te)
        history.append(row)
        if run_dir is not None:
            try:
                with open(run_dir / "metrics.jsonl", "a") as f:
                    f.write(json.dumps(row) + "\n")
            except OSError as err:
                raise ScratchVAEError(f"could not append to {run_dir / 'metrics.jsonl'}: "
                                      f"{err.strerror or err} (the checkpoint of epoch {pos.epoch} was written)") from None
        if callback:
            callback("epoch", row)
    model.beta = beta_target
    return history


def _check_finite(model, losses, start, stop, pos, n_batches):
    """Stop with the step number if any step's loss in [start, stop) was non-finite."""
    host = model.backend.to_host(losses[start:stop, 0])
    bad = np.flatnonzero(~np.isfinite(host))
    if bad.size:
        step = pos.step - (stop - start) + int(bad[0]) + 1
        raise NonFiniteError(
            f"the loss became non-finite at step {step} (epoch {pos.epoch + 1}, batch {start + int(bad[0]) + 1}); "
            f"the checkpoints already written predate it and are intact. "
            f"Try a smaller --lr, --kl-warmup, or float64")


# -- run directories --------------------------------------------------------------------------
def write_config(run_dir, model, cfg: TrainConfig, extra=None):
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    doc = {"model": model.config(), "train": vars(cfg), "provenance": provenance(model)}
    if extra:
        doc.update(extra)
    tmp = run_dir / ".config.json.tmp"
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    os.replace(tmp, run_dir / "config.json")
    return doc


@dataclass
class Run:
    """A run read back from disk: the model, its configs, history and training position."""

    model: VAE
    config: dict
    train_config: TrainConfig
    history: list
    optimizer_state: dict
    meta: dict
    checkpoint: Path
    extra: dict = field(default_factory=dict)


def read_history(run_dir, upto_epoch=None):
    path = Path(run_dir) / "metrics.jsonl"
    rows = []
    if path.exists():
        for line in path.read_text().splitlines():
            if line.strip():
                rows.append(json.loads(line))
    if upto_epoch is not None:
        rows = [r for r in rows if r["epoch"] <= upto_epoch]
    return rows


def load_run(run_dir, epoch=None, backend=None, checkpoint=None) -> Run:
    """Load a run: the model (on ``backend``, default the run's), configs, history, optimizer state.

    ``epoch``: the end-of-epoch checkpoint to load (default: the newest checkpoint).
    """
    run_dir = Path(run_dir)
    cfg_path = run_dir / "config.json"
    if not cfg_path.exists():
        raise InputError(f"{run_dir} is not a scratchvae run: {cfg_path.name} is missing")
    config, mc, tc = _read_config(cfg_path)
    path = Path(checkpoint) if checkpoint else latest_checkpoint(run_dir / "checkpoints", epoch=epoch)
    arrays, meta = load_checkpoint(path)
    _check_meta(path, meta, config, cfg_path)
    model = VAE(backend=backend or config.get("provenance", {}).get("backend", "numpy")
                if backend is not None or _backend_usable(config) else "numpy", **mc)
    expected = {f"param/{k}": (shape, model.dtype.name) for k, shape in model.shapes.items()}
    expected.update({f"optim/{k}": (v.shape, v.dtype.name)
                     for k, v in make_optimizer(model, tc).state().items()})
    if meta.get("batch"):
        expected["acc"] = ((3,), "float64")
        expected["perm"] = ((len(arrays.get("perm", ())),), "int64")
    check_arrays(path, arrays, expected)
    bad = [k for k in expected if k.startswith("param/") and not np.isfinite(arrays[k]).all()]
    if bad:
        raise CheckpointError(f"checkpoint {path} holds non-finite parameters ({', '.join(bad)})")
    model.set_params({k[len("param/"):]: v for k, v in arrays.items() if k.startswith("param/")})
    model.rng.set_state({k: np.array(v, dtype=np.uint32) for k, v in meta["rng"].items()})
    opt_state = {k[len("optim/"):]: v for k, v in arrays.items() if k.startswith("optim/")}
    extra = {k: arrays[k] for k in ("perm", "acc") if k in arrays}
    return Run(model=model, config=config, train_config=tc,
               history=read_history(run_dir, upto_epoch=meta["epoch"]), optimizer_state=opt_state,
               meta=meta, checkpoint=path, extra=extra)


def _read_config(cfg_path):
    """config.json -> (document, model kwargs, TrainConfig); InputError for anything malformed."""
    import inspect

    try:
        config = json.loads(cfg_path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise InputError(f"{cfg_path} is not readable JSON ({err})") from None
    if not isinstance(config, dict) or not isinstance(config.get("model"), dict) \
            or not isinstance(config.get("train"), dict):
        raise InputError(f"{cfg_path} must hold a JSON object with 'model' and 'train' objects")
    known = set(inspect.signature(VAE).parameters) - {"backend"}
    unknown = sorted(set(config["model"]) - known)
    if unknown:
        raise InputError(f"{cfg_path}: unknown model settings {', '.join(unknown)}")
    tkeys = {f.name for f in TrainConfig.__dataclass_fields__.values()}
    unknown = sorted(set(config["train"]) - tkeys)
    if unknown:
        raise InputError(f"{cfg_path}: unknown training settings {', '.join(unknown)}")
    return config, dict(config["model"]), TrainConfig(**config["train"])


def _check_meta(path, meta, config, cfg_path):
    """The checkpoint's own record (position, streams, config) against config.json."""
    for key, kind in (("epoch", int), ("step", int), ("rng", dict)):
        if not isinstance(meta.get(key), kind) or isinstance(meta.get(key), bool):
            raise CheckpointError(f"checkpoint {path}: metadata lacks a valid {key!r} "
                                  f"(not a scratchvae training checkpoint?)")
    saved = meta.get("config")
    if not isinstance(saved, dict):
        return

    def comparable(c):   # epochs is the total asked for, which --resume --epochs changes
        return {"model": c.get("model", {}),
                "train": {k: v for k, v in c.get("train", {}).items() if k != "epochs"}}

    lines = [line.replace(", model has ", f", {cfg_path.name} has ")
             for line in config_differences(comparable(saved), comparable(config))]
    if lines:
        raise CheckpointError(f"checkpoint {path} does not match {cfg_path}:\n  - " + "\n  - ".join(lines))


def _backend_usable(config):
    from .backend import cupy_usable

    return config.get("provenance", {}).get("backend") != "cupy" or cupy_usable()


def resume(run: Run, train, test=None, *, epochs=None, run_dir=None, **kwargs):
    """Continue a loaded :class:`Run` to ``epochs`` total epochs (default: its config's)."""
    cfg = run.train_config
    if epochs is not None:
        cfg = TrainConfig(**{**vars(cfg), "epochs": int(epochs)})
    model = run.model
    model._beta_target = run.meta.get("beta_target", model.beta)
    model.beta = model._beta_target
    opt = make_optimizer(model, cfg)
    opt.load_state(run.optimizer_state)
    meta = run.meta
    pos = _Position(epoch=meta["epoch"], step=meta["step"], batch=meta.get("batch", 0))
    if "perm" in run.extra and pos.batch:
        pos.perm, pos.acc = run.extra["perm"], run.extra["acc"]
        pos.epoch_seconds = meta.get("epoch_seconds", 0.0)
    rd = Path(run_dir) if run_dir is not None else run.checkpoint.parent.parent
    _truncate_metrics(rd, pos.epoch)
    return fit(model, train, test, config=cfg, run_dir=rd, optimizer=opt,
               _resume=(pos, list(run.history)), **kwargs)


def _truncate_metrics(run_dir, epoch):
    """Drop metric rows past ``epoch`` (they belong to a future the resume will redo)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return
    rows = read_history(run_dir)
    keep = [r for r in rows if r["epoch"] <= epoch]
    if len(keep) != len(rows):
        tmp = path.with_name(".metrics.jsonl.tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in keep))
        os.replace(tmp, path)
