"""The run directory, one home for its format: configuration, metrics, checkpoints, resume.

::

    RUN/config.json      {"model": VAE(...) arguments, "train": TrainConfig fields,
                          "provenance": versions and machine, + what the caller adds}
    RUN/metrics.jsonl    one JSON object per finished epoch (see scratchvae.train)
    RUN/checkpoints/     epoch-0003.npz (end of epoch 3),
                         epoch-0004-batch-000120.npz (inside epoch 4, after 120 batches)

A checkpoint is an ``.npz`` of host arrays plus JSON metadata (the file format, atomic
writes and untrusting reads: :mod:`scratchvae.checkpoint`). Its schema is written once,
here, by :func:`checkpoint_contents`, and read back by :func:`load_run`:

=================  ==========================================================================
array              what
=================  ==========================================================================
``param/<name>``   every model parameter, in the model's dtype
``optim/<key>``    the optimizer's state: ``t`` and its moments (Adam ``m.0``, ``v.0``; SGD
                   ``velocity.0``), as :meth:`Optimizer.state_spec <scratchvae.optim.Adam.state_spec>`
``perm``, ``acc``  mid-epoch only: the epoch's permutation (int64 (N,)) and its loss sums so
                   far (float64 (3,): −ELBO, recon, KL)
=================  ==========================================================================

Metadata: ``config`` ({"model", "train"} as in config.json), ``epoch`` (completed epochs),
``step`` (completed optimizer steps), ``batch`` (completed batches of the current epoch, 0 at
an epoch's end), ``rng`` ({stream name: [k0, k1, d_lo, d_hi]}, the model's and the training
loop's streams), and mid-epoch ``epoch_seconds``. Runs written by scratchvae 0.1.0 have this
schema too (plus a ``beta_target`` that equals the configured β), so they load and resume.
"""

from __future__ import annotations

import inspect
import json
import math
import os
import platform
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np

from .backend.random import Streams
from .checkpoint import (
    check_arrays,
    checkpoint_name,
    config_differences,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from .errors import CheckpointError, InputError, NonFiniteError, ScratchVAEError
from .inputs import BINARIZE, parse_corrupt
from .model import VAE
from .optim import OPTIMIZERS
from .step import TRAIN_STREAMS
from .version import __version__

CONFIG, METRICS, CHECKPOINTS = "config.json", "metrics.jsonl", "checkpoints"


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
        if self.optimizer not in OPTIMIZERS:
            raise InputError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise InputError(f"lr must be a positive finite number, got {self.lr!r}")
        if self.binarize not in BINARIZE:
            raise InputError(f"binarize must be one of {', '.join(BINARIZE)}, got {self.binarize!r}")
        if not (self.kl_warmup >= 0 and math.isfinite(self.kl_warmup)):
            raise InputError(f"kl_warmup must be a number of epochs >= 0, got {self.kl_warmup!r}")
        parse_corrupt(self.corrupt)
        return self


def make_optimizer(model, cfg: TrainConfig):
    """The optimizer ``cfg`` names, over the model's flat parameters."""
    if cfg.optimizer == "sgd":
        return OPTIMIZERS["sgd"](model.theta, lr=cfg.lr, momentum=cfg.momentum)
    return OPTIMIZERS[cfg.optimizer](model.theta, lr=cfg.lr)


@dataclass
class TrainState:
    """Where a training run stands, beyond the model's parameters and the optimizer's state:
    what a checkpoint must hold to continue exactly.

    ``perm``/``acc``/``epoch_seconds`` describe an unfinished epoch (None between epochs);
    ``streams`` are the training loop's random streams (:data:`~scratchvae.step.TRAIN_STREAMS`);
    ``history`` the metrics rows of the finished epochs.
    """

    streams: Streams
    epoch: int = 0           # completed epochs
    step: int = 0            # completed optimizer steps
    batch: int = 0           # completed batches within the current epoch
    perm: object = None      # the current epoch's permutation (host int64)
    acc: object = None       # host float64 [neg_elbo, recon, kl] sums so far this epoch
    epoch_seconds: float = 0.0
    history: list = field(default_factory=list)

    @classmethod
    def start(cls, model):
        """The state before the first step of a run of ``model`` (streams seeded by its seed)."""
        return cls(streams=Streams(model.seed, TRAIN_STREAMS, xp=model.xp))


# -- config.json and metrics.jsonl -------------------------------------------------------------
def provenance(model) -> dict:
    """Versions, machine and backend, recorded with a run."""
    return {
        "scratchvae": __version__, "python": sys.version.split()[0], "numpy": np.__version__,
        "platform": platform.platform(), "cpu_count": os.cpu_count(),
        "threads_env": {k: os.environ[k] for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                                   "MKL_NUM_THREADS", "OPENBLAS_CORETYPE")
                        if k in os.environ},
        **model.backend.describe(),
    }


def write_config(run_dir, model, cfg: TrainConfig, extra=None):
    """Write RUN/config.json (atomically) and return the document."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    doc = {"model": model.config(), "train": vars(cfg), "provenance": provenance(model)}
    if extra:
        doc.update(extra)
    tmp = run_dir / f".{CONFIG}.tmp"
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    os.replace(tmp, run_dir / CONFIG)
    return doc


def read_config(run_dir):
    """RUN/config.json -> (document, model kwargs, TrainConfig); InputError for anything malformed."""
    path = Path(run_dir) / CONFIG
    if not path.exists():
        raise InputError(f"{run_dir} is not a scratchvae run: {CONFIG} is missing")
    try:
        config = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise InputError(f"{path} is not readable JSON ({err})") from None
    if not isinstance(config, dict) or not isinstance(config.get("model"), dict) \
            or not isinstance(config.get("train"), dict):
        raise InputError(f"{path} must hold a JSON object with 'model' and 'train' objects")
    for part, known in (("model", set(inspect.signature(VAE).parameters) - {"backend"}),
                        ("train", {f.name for f in fields(TrainConfig)})):
        unknown = sorted(set(config[part]) - known)
        if unknown:
            raise InputError(f"{path}: unknown {part} settings {', '.join(unknown)}")
    return config, dict(config["model"]), TrainConfig(**config["train"])


def append_metrics(run_dir, row):
    """Append one epoch's row to RUN/metrics.jsonl."""
    path = Path(run_dir) / METRICS
    try:
        with open(path, "a") as f:
            f.write(json.dumps(row) + "\n")
    except OSError as err:
        raise ScratchVAEError(f"could not append to {path}: {err.strerror or err} "
                              f"(the checkpoint of epoch {row['epoch']} was written)") from None


def read_history(run_dir, upto_epoch=None):
    """The rows of RUN/metrics.jsonl (those of epochs ≤ ``upto_epoch`` if given)."""
    path = Path(run_dir) / METRICS
    rows = []
    if path.exists():
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if upto_epoch is not None:
        rows = [r for r in rows if r["epoch"] <= upto_epoch]
    return rows


def truncate_metrics(run_dir, epoch):
    """Drop metric rows past ``epoch`` (they belong to a future a resume will redo)."""
    path = Path(run_dir) / METRICS
    if not path.exists():
        return
    rows = read_history(run_dir)
    keep = [r for r in rows if r["epoch"] <= epoch]
    if len(keep) != len(rows):
        tmp = path.with_name(f".{METRICS}.tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in keep))
        os.replace(tmp, path)


# -- checkpoints -----------------------------------------------------------------------------------
def checkpoint_contents(model, opt, cfg, state):
    """(arrays, meta) of a checkpoint of this moment of training (the schema's write side).

    Mid-epoch when ``state.batch`` > 0. Refuses non-finite parameters: the last step's update
    can poison them after a finite loss, and a checkpoint is never written from them.
    """
    params = model.host_params()
    bad = [k for k, v in params.items() if not np.isfinite(v).all()]
    if bad:
        raise NonFiniteError(
            f"parameters {', '.join(bad)} became non-finite by step {state.step}; not writing a "
            f"checkpoint, the last one is intact. Try a smaller --lr, --kl-warmup, or float64")
    arrays = {f"param/{k}": v for k, v in params.items()}
    arrays.update({f"optim/{k}": v for k, v in opt.state().items()})
    rng = {**model.rng.state(), **state.streams.state()}
    meta = {"config": {"model": model.config(), "train": vars(cfg)}, "epoch": state.epoch,
            "step": state.step, "batch": state.batch,
            "rng": {k: [int(w) for w in v] for k, v in rng.items()}}
    if state.batch:
        arrays["perm"] = np.asarray(state.perm, dtype=np.int64)
        arrays["acc"] = np.asarray(state.acc, dtype=np.float64)
        meta["epoch_seconds"] = state.epoch_seconds
    return arrays, meta


def save_training_checkpoint(run_dir, model, opt, cfg, state):
    """Write the checkpoint of this moment into RUN/checkpoints; returns its path."""
    arrays, meta = checkpoint_contents(model, opt, cfg, state)
    name = checkpoint_name(state.epoch + 1, state.batch) if state.batch else checkpoint_name(state.epoch)
    return save_checkpoint(Path(run_dir) / CHECKPOINTS / name, arrays, meta)


def expected_arrays(model, cfg, meta, arrays):
    """name -> (shape, dtype) of what a checkpoint of ``model`` trained with ``cfg`` must hold
    (the schema's read side)."""
    expected = {f"param/{k}": (shape, model.dtype.name) for k, shape in model.shapes.items()}
    spec = OPTIMIZERS[cfg.optimizer].state_spec(model.theta)
    expected.update({f"optim/{k}": v for k, v in spec.items()})
    if meta.get("batch"):
        expected["acc"] = ((3,), "float64")
        expected["perm"] = ((len(arrays.get("perm", ())),), "int64")
    return expected


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
    state: TrainState = None


def load_run(run_dir, epoch=None, backend=None, checkpoint=None) -> Run:
    """Load a run: the model (on ``backend``, default the run's), configs, history, optimizer
    state and training position.

    ``epoch``: the end-of-epoch checkpoint to load (default: the newest checkpoint);
    ``checkpoint``: a checkpoint file to load instead.
    """
    run_dir = Path(run_dir)
    config, model_kw, tc = read_config(run_dir)
    path = Path(checkpoint) if checkpoint else latest_checkpoint(run_dir / CHECKPOINTS, epoch=epoch)
    arrays, meta = load_checkpoint(path)
    _check_meta(path, meta, config, run_dir / CONFIG)
    model = VAE(backend=_backend(config, backend), **model_kw)
    check_arrays(path, arrays, expected_arrays(model, tc, meta, arrays))
    bad = [k for k in arrays if k.startswith("param/") and not np.isfinite(arrays[k]).all()]
    if bad:
        raise CheckpointError(f"checkpoint {path} holds non-finite parameters ({', '.join(bad)})")
    model.set_params({k[len("param/"):]: v for k, v in arrays.items() if k.startswith("param/")})
    state = _restore_state(path, meta, arrays, model)
    state.history = read_history(run_dir, upto_epoch=meta["epoch"])
    return Run(model=model, config=config, train_config=tc, history=list(state.history),
               optimizer_state={k[len("optim/"):]: v for k, v in arrays.items() if k.startswith("optim/")},
               meta=meta, checkpoint=path, state=state)


def _restore_state(path, meta, arrays, model):
    """The model's streams and the training position from a checkpoint."""
    rng = {k: np.array(v, dtype=np.uint32) for k, v in meta["rng"].items()}
    state = TrainState.start(model)
    names = set(model.rng) | set(state.streams)
    if set(rng) != names:
        raise CheckpointError(f"checkpoint {path}: its random streams are {sorted(rng)}, "
                              f"expected {sorted(names)}")
    try:
        model.rng.set_state({k: rng[k] for k in model.rng})
        state.streams.set_state({k: rng[k] for k in state.streams})
    except InputError as err:
        raise CheckpointError(f"checkpoint {path}: {err}") from None
    state.epoch, state.step, state.batch = meta["epoch"], meta["step"], meta.get("batch", 0)
    if state.batch and "perm" in arrays:
        state.perm, state.acc = arrays["perm"], arrays["acc"]
        state.epoch_seconds = meta.get("epoch_seconds", 0.0)
    return state


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


def _backend(config, backend):
    """The backend to load on: the one asked for, else the run's own if usable, else numpy."""
    if backend is not None:
        return backend
    recorded = config.get("provenance", {}).get("backend", "numpy")
    if recorded == "cupy":
        from .backend import cupy_usable

        return "cupy" if cupy_usable() else "numpy"
    return recorded
