"""The run directory, one home for its format: configuration, metrics, checkpoints, resume.

::

    RUN/config.json      {"model": VAE(...) arguments, "train": TrainConfig fields,
                          "provenance": versions and machine, "keep": the checkpoints kept,
                          "resumes": [one record per resume, with its own "provenance"],
                          + what the caller adds}
    RUN/metrics.jsonl    one JSON object per finished epoch (see scratchvae.train)
    RUN/checkpoints/     epoch-0003.npz (end of epoch 3),
                         epoch-0004-batch-000120.npz (inside epoch 4, after 120 batches)

A run is written by :class:`RunWriter`. A new run's folder appears with its first
checkpoint, in one rename of a staged sibling holding config.json and that checkpoint, so a
run that fails or is killed before then leaves no folder. After each epoch the writer
appends the metrics row, then prunes: mid-epoch checkpoints of finished epochs go, and
end-of-epoch checkpoints beyond the newest ``keep`` other than the best by test loss.
Every checkpoint's metadata carries the metrics row of its last finished epoch, so a run
killed between an epoch's checkpoint and its row loses nothing: :func:`load_run` rebuilds
the row and :func:`scratchvae.train.resume` writes it back. Temporary files of a killed
writer are removed when the run is next opened. One process writes a run at a time: the
writer holds RUN/.lock (:class:`WriterLock`), there only while it writes.

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
loop's streams), mid-epoch ``epoch_seconds``, and ``metrics``, the metrics row of epoch
``epoch`` (absent before the first epoch ends, and in older checkpoints). Runs written by
scratchvae 0.1.0 have this schema too (plus a ``beta_target`` that equals the configured β),
so they load and resume.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import faults
from .checkpoint import (
    check_arrays,
    checkpoint_name,
    checkpoint_position,
    config_differences,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    remove_stale_temps,
    save_checkpoint,
    temp_path,
    write_text,
)
from .comm import SOLO
from .errors import CheckpointError, InputError, NonFiniteError, ScratchVAEError
from .folders import WriterLock, staged_dir, writing
from .history import append_metrics, run_history
from .config import ModelConfig, TrainConfig
from .model import VAE
from .optim import OPTIMIZERS
from .step import TrainState
from .version import __version__

CONFIG, CHECKPOINTS = "config.json", "checkpoints"
DEFAULT_KEEP = 3
"""End-of-epoch checkpoints a run keeps by default (the newest ones; plus the best by test loss)."""
REPLACES = "replaces"
"""config.json key of a run trained to replace another (``train --overwrite``): that one's name."""


# -- config.json and metrics.jsonl -------------------------------------------------------------
def provenance(model, comm=SOLO) -> dict:
    """Versions, machine and backend, recorded with a run; the ranks it ran on (``comm``:
    :meth:`Solo.describe <scratchvae.comm.Solo.describe>`: ranks, per machine, BLAS threads)."""
    return {
        "scratchvae": __version__, "python": sys.version.split()[0], "numpy": np.__version__,
        "platform": platform.platform(), "cpu_count": os.cpu_count(),
        "threads_env": {k: os.environ[k] for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                                   "MKL_NUM_THREADS", "OPENBLAS_CORETYPE")
                        if k in os.environ},
        **model.backend.describe(), **comm.describe(),
    }


def config_document(model, cfg: TrainConfig, extra=None, comm=SOLO) -> dict:
    """What config.json holds for a run of ``model`` trained with ``cfg`` (+ ``extra`` entries)."""
    doc = {"model": model.config(), "train": cfg.to_json(), "provenance": provenance(model, comm)}
    if extra:
        doc.update(extra)
    return doc


def _dump(doc):
    return json.dumps(doc, indent=2) + "\n"


def write_config(run_dir, model, cfg: TrainConfig, extra=None):
    """Write RUN/config.json (atomically) and return the document."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    doc = config_document(model, cfg, extra)
    write_text(run_dir / CONFIG, _dump(doc))
    return doc


def edit_config(run_dir, edit):
    """Rewrite RUN/config.json (atomically) as ``edit(document)`` changes it; returns the document."""
    path = Path(run_dir) / CONFIG
    doc = json.loads(path.read_text())
    edit(doc)
    write_text(path, _dump(doc))
    return doc


def read_config(run_dir):
    """RUN/config.json -> (document, ModelConfig, TrainConfig); InputError for anything malformed."""
    path = Path(run_dir) / CONFIG
    if not Path(run_dir).is_dir():
        raise InputError(f"{run_dir} is not a scratchvae run: there is no such folder")
    if not path.exists():
        raise InputError(f"{run_dir} is not a scratchvae run: {CONFIG} is missing")
    try:
        config = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise InputError(f"{path} is not readable JSON ({err})") from None
    if not isinstance(config, dict) or not isinstance(config.get("model"), dict) \
            or not isinstance(config.get("train"), dict):
        raise InputError(f"{path} must hold a JSON object with 'model' and 'train' objects")
    try:
        model, train = ModelConfig.from_json(config["model"], str(path)), TrainConfig.from_json(config["train"], str(path))
    except InputError as err:
        raise InputError(err if str(err).startswith(str(path)) else f"{path}: {err}") from None
    config["model"] = model.to_json()       # as this version reads it (e.g. an old full posterior's c = 1)
    return config, model, train


def keep_of(config):
    """The ``keep`` a run's config.json records (None: every checkpoint; so for runs older than it)."""
    keep = config.get("keep", "all")
    return None if keep == "all" else keep


# -- checkpoints -----------------------------------------------------------------------------------
def checkpoint_contents(model, opt, cfg, state, row=None):
    """(arrays, meta) of a checkpoint of this moment of training (the schema's write side).

    Mid-epoch when ``state.batch`` > 0. ``row``: the metrics row of epoch ``state.epoch``, kept
    in the metadata. Refuses non-finite parameters: the last step's update can poison them
    after a finite loss, and a checkpoint is never written from them.
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
    meta = {"config": {"model": model.config(), "train": cfg.to_json()}, "epoch": state.epoch,
            "step": state.step, "batch": state.batch,
            "rng": {k: [int(w) for w in v] for k, v in rng.items()}}
    if row is not None:
        meta["metrics"] = row
    if state.batch:
        arrays["perm"] = np.asarray(state.perm, dtype=np.int64)
        arrays["acc"] = np.asarray(state.acc, dtype=np.float64)
        meta["epoch_seconds"] = state.epoch_seconds
    return arrays, meta


def checkpoint_file(state):
    """The checkpoint's file name for this moment of training (see the module docstring)."""
    return checkpoint_name(state.epoch + 1, state.batch) if state.batch else checkpoint_name(state.epoch)


def save_training_checkpoint(run_dir, model, opt, cfg, state, row=None):
    """Write the checkpoint of this moment into RUN/checkpoints (which must exist); returns its path."""
    arrays, meta = checkpoint_contents(model, opt, cfg, state, row)
    return save_checkpoint(Path(run_dir) / CHECKPOINTS / checkpoint_file(state), arrays, meta)


def check_run_dir(path, what="run_dir", continuing=False):
    """Raise InputError unless a run can be written at ``path``; reads only.

    ``path`` may be absent, an empty folder, or a run with config.json and no checkpoints (or
    with some, when ``continuing`` it); the folders written into must be writable: the run's,
    or the nearest one that exists on the way to a new run.
    """
    path = Path(path)
    holds_run = (path / CONFIG).exists()
    if path.exists() and not path.is_dir():
        raise InputError(f"{what} {path} is a file, not a folder")
    if holds_run and not continuing and list_checkpoints(path / CHECKPOINTS):
        raise InputError(f"{what} {path} already holds a run; continue it with "
                         f"resume(load_run({str(path)!r}), ...) or choose another folder")
    if path.exists() and not holds_run and any(path.iterdir()):
        raise InputError(f"{what} {path} exists, is not empty and holds no run; choose another folder")
    bases = [p for p in (path, path / CHECKPOINTS) if p.exists()] if holds_run else [path.parent]
    while not bases[0].exists() and bases[0] != bases[0].parent:
        bases[0] = bases[0].parent
    for base in bases:
        if not base.is_dir():
            raise InputError(f"{what} {path} is not writable: {base} is not a folder")
        if not os.access(base, os.W_OK | os.X_OK):
            raise InputError(f"{what} {path} is not writable: no permission to write in {base}")


def best_epoch(history):
    """The epoch of the lowest finite test loss in ``history``, or None (earliest of ties)."""
    scored = [(r["test_loss"], r["epoch"]) for r in history
              if isinstance(r.get("test_loss"), (int, float)) and math.isfinite(r["test_loss"])]
    return min(scored)[1] if scored else None


def prune_checkpoints(ckpt_dir, keep=DEFAULT_KEEP, best=None):
    """Remove the checkpoints a run no longer needs; returns the paths removed.

    Mid-epoch checkpoints of epochs whose end-of-epoch checkpoint exists go; of the end-of-epoch
    checkpoints, the newest ``keep`` (None: all) stay, and epoch ``best`` if given. One that
    cannot be removed stays (the next pruning tries again).
    """
    found = [(checkpoint_position(p.name), p) for p in list_checkpoints(ckpt_dir)]
    ends = sorted(epoch for (epoch, batch), _ in found if batch is None)
    if not ends:
        return []
    kept = set(ends if keep is None else ends[-keep:]) | {best}
    removed = []
    for (epoch, batch), p in found:
        if epoch <= ends[-1] if batch is not None else epoch not in kept:
            with contextlib.suppress(OSError):
                p.unlink()
                removed.append(p)
    return removed


class RunWriter:
    """What a training run writes into its folder: config.json, checkpoints, metrics, pruning.

    ``doc``: config.json's document for a new run (the folder appears with the first
    checkpoint, see the module docstring; a folder that another process created meanwhile is
    not written into); a folder with config.json already is written into. Used as a context
    manager, it holds the run's :class:`WriterLock`: from the start for a folder written into,
    from its creation for a new run. ``keep``: end-of-epoch checkpoints kept (None: all), plus
    the best by test loss if ``keep_best``.
    """

    def __init__(self, path, doc, keep=DEFAULT_KEEP, keep_best=True):
        self.path, self.doc, self.keep, self.keep_best = Path(path), doc, keep, keep_best
        self.existing, self.lock = (self.path / CONFIG).exists(), None

    def __enter__(self):
        if self.existing:
            self.lock = WriterLock(self.path).acquire()
        return self

    def __exit__(self, *exc):
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def save(self, model, opt, cfg, state, row=None):
        """The checkpoint of this moment (creating the run's folder with the first); its path."""
        if self.existing or self.lock is not None:
            try:
                (self.path / CHECKPOINTS).mkdir(exist_ok=True)
            except OSError as err:
                raise InputError(f"run_dir {self.path} is not writable: {err.strerror or err}") from None
            return save_training_checkpoint(self.path, model, opt, cfg, state, row)
        if self.path.is_dir() and any(self.path.iterdir()):
            raise InputError(f"{self.path} appeared while this run trained (another process made it); nothing of "
                             f"this run was written, so that the two stay apart")
        arrays, meta = checkpoint_contents(model, opt, cfg, state, row)
        lock = None
        try:
            with staged_dir(self.path) as tmp:
                lock = WriterLock(tmp).acquire()
                write_text(tmp / CONFIG, _dump(self.doc))
                (tmp / CHECKPOINTS).mkdir()
                save_checkpoint(tmp / CHECKPOINTS / checkpoint_file(state), arrays, meta)
        except BaseException:
            if lock is not None:
                lock.release()
            raise
        lock.moved(self.path)
        self.lock = lock
        return self.path / CHECKPOINTS / checkpoint_file(state)

    def end_epoch(self, row, history):
        """After epoch ``row['epoch']``'s checkpoint: append its metrics row, then prune."""
        faults.point(f"before-metrics:{row['epoch']}")
        append_metrics(self.path, row)
        prune_checkpoints(self.path / CHECKPOINTS, self.keep, best_epoch(history) if self.keep_best else None)


# -- a run that replaces another (train --overwrite) ----------------------------------------------
def replacement_dir(run_dir):
    """Where a run that is to replace ``run_dir`` is trained: ``<run_dir>.new`` beside it."""
    run_dir = Path(run_dir)
    return run_dir.with_name(run_dir.name + ".new")


def finish_replacement(run_dir):
    """If the run in ``run_dir`` was trained to replace another (config.json's ``replaces``),
    move it onto that one's place, dropping the old run; returns the new place, else None.

    Call it only once the run is complete: until then the old run is untouched.
    """
    run_dir = Path(run_dir)
    name = read_config(run_dir)[0].get(REPLACES)
    if not name:
        return None
    target = run_dir.parent / name
    trash = temp_path(target)
    faults.point("before-swap")
    with writing(target) if target.exists() else contextlib.nullcontext() as old, writing(run_dir) as new:
        remove_stale_temps(target.parent)             # what killed writers staged beside them
        try:
            if old is not None:
                os.replace(target, trash)
                old.moved(trash)
            os.replace(run_dir, target)
            new.moved(target)
            edit_config(target, lambda doc: doc.pop(REPLACES, None))
        except OSError as err:
            raise ScratchVAEError(f"could not move the new run {run_dir} onto {target}: "
                                  f"{err.strerror or err}") from None
    shutil.rmtree(trash, ignore_errors=True)
    return target


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

    @property
    def position(self):
        """Where the loaded checkpoint stands, as its file name says: ``{"epoch": E}`` at the end
        of epoch E, ``{"epoch": E, "batch": B}`` inside epoch E after B of its batches."""
        done, batch = self.meta.get("epoch"), self.meta.get("batch", 0)
        return {"epoch": done + 1, "batch": batch} if batch else {"epoch": done}


def position_label(position):
    """'epoch 3', or 'epoch 4, batch 34' for a position inside an epoch (see :attr:`Run.position`)."""
    return f"epoch {position['epoch']}" + (f", batch {position['batch']}" if position.get("batch") else "")


def load_run(run_dir, epoch=None, backend=None, checkpoint=None, finished=False) -> Run:
    """Load a run: the model (on ``backend``, default the run's), configs, history, optimizer
    state and training position.

    ``epoch``: the end-of-epoch checkpoint to load (default: the newest checkpoint, or with
    ``finished`` the newest end-of-epoch one); ``checkpoint``: a checkpoint file to load
    instead (a bare file name is one of the run's). The history is that of the loaded
    checkpoint (see :func:`run_history`). Temporary files of killed writers are removed.
    """
    run_dir = Path(run_dir)
    config, model_cfg, tc = read_config(run_dir)
    for folder in (run_dir, run_dir / CHECKPOINTS):   # what killed writers left
        remove_stale_temps(folder)
    if checkpoint:
        path = Path(checkpoint) if Path(checkpoint).name != str(checkpoint) else run_dir / CHECKPOINTS / checkpoint
    else:
        path = latest_checkpoint(run_dir / CHECKPOINTS, epoch=epoch, finished=finished)
    arrays, meta = load_checkpoint(path)
    _check_meta(path, meta, config, run_dir / CONFIG)
    model = VAE(model_cfg, backend=_backend(config, backend))
    check_arrays(path, arrays, expected_arrays(model, tc, meta, arrays))
    bad = [k for k in arrays if k.startswith("param/") and not np.isfinite(arrays[k]).all()]
    if bad:
        raise CheckpointError(f"checkpoint {path} holds non-finite parameters ({', '.join(bad)})")
    model.set_params({k[len("param/"):]: v for k, v in arrays.items() if k.startswith("param/")})
    state = _restore_state(path, meta, arrays, model)
    state.history = run_history(run_dir, path, meta)
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
        return {"model": _as_read(c.get("model", {})),
                "train": {k: v for k, v in c.get("train", {}).items() if k != "epochs"}}

    lines = [line.replace(", model has ", f", {cfg_path.name} has ")
             for line in config_differences(comparable(saved), comparable(config))]
    if lines:
        raise CheckpointError(f"checkpoint {path} does not match {cfg_path}:\n  - " + "\n  - ".join(lines))


def _as_read(model):
    """Recorded model settings as this version reads them (as recorded where it cannot)."""
    try:
        return ModelConfig.from_json(model).to_json()
    except (InputError, TypeError, AttributeError):
        return model


def _backend(config, backend):
    """The backend to load on: the one asked for, else the run's own if usable, else numpy."""
    if backend is not None:
        return backend
    recorded = config.get("provenance", {}).get("backend", "numpy")
    if recorded == "cupy":
        from .backend import cupy_usable

        return "cupy" if cupy_usable() else "numpy"
    return recorded
