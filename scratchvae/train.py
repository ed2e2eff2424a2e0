"""The training loop: :func:`fit` drives a model over a dataset; :func:`resume` continues a run.

The loop is epochs, batches, checks, callbacks and checkpoints; each batch is one call of
the training step (:class:`scratchvae.step.TrainStep`, the same on every backend), and the
run directory's format belongs to :mod:`scratchvae.runs`. The library never prints:
:func:`fit` reports through ``callback(event, info)``:

``"batch"``      every ``report_every`` steps: ``epoch``, ``batch``, ``batches``, ``step``
``"epoch"``      after each epoch: the metrics row written to ``metrics.jsonl``
``"checkpoint"`` after each checkpoint: ``path``, ``epoch``, ``step``
``"graph"``      if a CUDA-graph capture failed: ``enabled`` False and the ``reason``

A metrics row: ``epoch``, ``step``, ``train_loss`` / ``train_recon`` / ``train_kl`` (per
image, over the epoch's steps), ``beta`` (β at the epoch's last step), with test data
``test_loss`` / ``test_recon`` / ``test_kl``, and ``eval_seconds``, ``seconds``.

Randomness: shuffling and dynamic binarisation come from the training loop's streams, ε and
corruption noise from the model's 'noise' stream; evaluation draws from the model's 'eval'
stream, so evaluating never changes the training sequence. Resuming restores every stream,
the optimizer and (mid-epoch) the permutation and batch index, so a resumed run repeats the
uninterrupted one exactly on the same backend and thread settings.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from . import faults
from .errors import InputError, NonFiniteError, ScratchVAEError
from .evaluate import evaluate_elbo
from .inputs import STATIC_TEST_STREAM, STATIC_TRAIN_STREAM, binarize_static, parse_corrupt, prepare_images
from .model import VAE
from .runs import (  # noqa: F401  (load_run, Run, TrainConfig, make_optimizer, write_config: public here too)
    CONFIG,
    Run,
    TrainConfig,
    TrainState,
    append_metrics,
    load_run,
    make_optimizer,
    save_training_checkpoint,
    truncate_metrics,
    write_config,
)
from .step import LOSSES, Schedule, TrainStep, make_graph_step  # noqa: F401  (make_graph_step: public here)

NONFINITE_CHECK_EVERY = 50   # steps between checks of the loss for NaN/Inf (one host sync each)


class Interrupted(ScratchVAEError):
    """Training stopped on request (SIGINT/SIGTERM); a mid-epoch checkpoint was written."""

    def __init__(self, message, checkpoint):
        super().__init__(message)
        self.checkpoint = checkpoint


@np.errstate(over="ignore", invalid="ignore", divide="ignore")   # the loop checks the loss itself
def fit(model, train, test=None, *, config: TrainConfig | None = None, run_dir=None, callback=None,
        report_every=20, should_stop=None, optimizer=None, graph=None, state: TrainState | None = None):
    """Train ``model`` on ``train`` (images (N, D); uint8 or floats) and return the history.

    config : a :class:`TrainConfig` (``epochs`` is the **total**, also when continuing).
    test : images for the per-epoch test −ELBO (optional).
    run_dir : where to write config.json, metrics.jsonl and checkpoints (None: nothing written).
    callback : ``callback(event, info)`` for progress (see the module docstring).
    should_stop : polled once per step; when it returns True, a mid-epoch checkpoint is
        written and :class:`Interrupted` is raised.
    optimizer : default: the one ``config`` names, new. It must provide ``coefficients(t)`` and
        ``step_from(grads, coef)`` (scratchvae's Adam and SGD do).
    graph : replay each step as a CUDA graph where the backend can (CuPy); None means yes,
        False runs the same step uncaptured. A failed capture falls back to that and says so
        through ``callback("graph", ...)``.
    state : a :class:`~scratchvae.runs.TrainState` to continue from (as :func:`resume` passes);
        default: a new run. It is updated in place.
    Every ``NONFINITE_CHECK_EVERY`` steps (one host sync) and at the end of each epoch the
    losses since the last check are tested: a NaN/Inf raises :class:`NonFiniteError` naming
    the step. A checkpoint is never written from non-finite parameters.
    Returns the list of per-epoch metric rows (all epochs, including earlier ones of ``state``).
    """
    cfg = (config or TrainConfig()).validate()
    if not isinstance(model, VAE):
        raise InputError(f"model must be a scratchvae.VAE, got {type(model).__name__}")
    state = state if state is not None else TrainState.start(model)
    xtrain, xtest = _prepare_data(model, train, test, cfg, state)
    opt = optimizer or make_optimizer(model, cfg)
    batches = -(-xtrain.shape[0] // cfg.batch_size)
    step = TrainStep(model, opt, xtrain, cfg.batch_size, Schedule(opt, model.beta, cfg.kl_warmup * batches),
                     streams=state.streams, binarize=cfg.binarize == "dynamic",
                     corrupt=parse_corrupt(cfg.corrupt), capture=graph is not False, notify=callback)
    if run_dir is not None:
        run_dir = _open_run_dir(Path(run_dir), model, cfg)
    loop = _Loop(model, opt, cfg, state, step, run_dir, callback, report_every, should_stop)
    while state.epoch < cfg.epochs:
        loop.train_epoch()
        loop.end_epoch(xtest)
    return state.history


def _prepare_data(model, train, test, cfg, state):
    """The training and test images on the model's backend, statically binarised if asked."""
    xtrain = prepare_images(train, model, "train")
    xtest = prepare_images(test, model, "test") if test is not None else None
    n, B = xtrain.shape[0], cfg.batch_size
    if B > n:
        raise InputError(f"batch_size ({B}) is larger than the training set ({n} images)")
    perm = state.perm
    if perm is not None and (len(perm) != n or not np.array_equal(np.sort(perm), np.arange(n))):
        raise InputError(f"the mid-epoch checkpoint's permutation does not fit a training set of "
                         f"{n} images (it has {len(perm)} entries): resume with the run's own data")
    if cfg.binarize == "static":
        xtrain = binarize_static(xtrain, model, STATIC_TRAIN_STREAM)
    if cfg.binarize != "none" and xtest is not None:
        xtest = binarize_static(xtest, model, STATIC_TEST_STREAM)
    return xtrain, xtest


def _open_run_dir(run_dir, model, cfg):
    try:
        (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
        if not (run_dir / CONFIG).exists():
            write_config(run_dir, model, cfg)   # so load_run works on a run made by fit alone
    except OSError as err:
        raise InputError(f"run_dir {run_dir} is not writable: {err.strerror or err}") from None
    return run_dir


class _Loop:
    """One epoch at a time: the batches, the checks, the callbacks and the checkpoints."""

    def __init__(self, model, opt, cfg, state, step, run_dir, callback, report_every, should_stop):
        self.model, self.opt, self.cfg, self.state, self.step = model, opt, cfg, state, step
        self.run_dir, self.callback, self.report_every, self.should_stop = (
            run_dir, callback, report_every, should_stop)

    def train_epoch(self):
        """The remaining batches of the current epoch; the epoch's loss sums go to state.acc."""
        s, step = self.state, self.step
        t0 = time.perf_counter()
        if s.perm is None:
            s.perm, s.acc, s.batch, s.epoch_seconds = s.streams["shuffle"].permutation(step.n), np.zeros(3), 0, 0.0
        losses = step.begin(s.batch, s.step, s.perm)
        first = checked = s.batch
        for b in range(s.batch, step.rows):
            step(b)
            s.step, s.batch = s.step + 1, b + 1
            faults.mid_epoch_step(s.step)
            if s.step % NONFINITE_CHECK_EVERY == 0:
                if step.failed_batch() is not None:
                    self.check_finite(losses, checked, b + 1)
                checked = b + 1
            if self.callback and (s.step % self.report_every == 0 or b + 1 == step.rows):
                self.callback("batch", {"epoch": s.epoch + 1, "batch": b + 1, "batches": step.rows,
                                        "step": s.step})
            if self.should_stop is not None and self.should_stop() and b + 1 < step.rows:
                self.interrupt(losses, first, checked, t0)
        self.check_finite(losses, checked, step.rows)
        s.acc = s.acc + self.model.backend.to_host(losses[first:].sum(axis=0))
        s.epoch_seconds += time.perf_counter() - t0

    def interrupt(self, losses, first, checked, t0):
        """Write a mid-epoch checkpoint of the steps so far and raise Interrupted."""
        s = self.state
        self.check_finite(losses, checked, s.batch)
        s.acc = s.acc + self.model.backend.to_host(losses[first:s.batch].sum(axis=0))
        s.epoch_seconds += time.perf_counter() - t0
        path = self.save()
        raise Interrupted(f"stopped during epoch {s.epoch + 1} after batch {s.batch}", path)

    def end_epoch(self, xtest):
        """The metrics row (and test −ELBO), the end-of-epoch checkpoint, the callback."""
        s = self.state
        n = self.step.n
        row = {"epoch": s.epoch + 1, "step": s.step, "train_loss": s.acc[0] / n,
               "train_recon": s.acc[1] / n, "train_kl": s.acc[2] / n,
               "beta": self.step.schedule.beta_at(s.step)}
        te = time.perf_counter()
        if xtest is not None:
            ev = evaluate_elbo(self.model, xtest)
            row.update(test_loss=ev["loss"], test_recon=ev["recon"], test_kl=ev["kl"])
        eval_seconds = time.perf_counter() - te
        s.epoch, s.perm, s.acc, s.batch = s.epoch + 1, None, None, 0
        self.save()
        row["eval_seconds"] = eval_seconds
        row["seconds"] = s.epoch_seconds + (time.perf_counter() - te)
        s.history.append(row)
        if self.run_dir is not None:
            append_metrics(self.run_dir, row)
        if self.callback:
            self.callback("epoch", row)

    def save(self):
        """The checkpoint of this moment (mid-epoch if a batch is done), or None without a run dir."""
        if self.run_dir is None:
            return None
        s = self.state
        path = save_training_checkpoint(self.run_dir, self.model, self.opt, self.cfg, s)
        if self.callback:
            self.callback("checkpoint", {"path": str(path), "epoch": s.epoch, "step": s.step})
        return path

    def check_finite(self, losses, start, stop):
        """Stop with the step number if any step's loss in batches [start, stop) was non-finite."""
        host = self.model.backend.to_host(losses[start:stop, 0])
        bad = np.flatnonzero(~np.isfinite(host))
        if bad.size:
            s = self.state
            step = s.step - (stop - start) + int(bad[0]) + 1
            raise NonFiniteError(
                f"the loss became non-finite at step {step} (epoch {s.epoch + 1}, batch {start + int(bad[0]) + 1}); "
                f"the checkpoints already written predate it and are intact. "
                f"Try a smaller --lr, --kl-warmup, or float64")


def resume(run: Run, train, test=None, *, epochs=None, run_dir=None, **kwargs):
    """Continue a loaded :class:`~scratchvae.runs.Run` to ``epochs`` total epochs (default: its
    config's), in ``run_dir`` (default: the run's own folder). Other keywords go to :func:`fit`."""
    cfg = run.train_config
    if epochs is not None:
        cfg = TrainConfig(**{**vars(cfg), "epochs": int(epochs)})
    opt = make_optimizer(run.model, cfg)
    opt.load_state(run.optimizer_state)
    rd = Path(run_dir) if run_dir is not None else run.checkpoint.parent.parent
    truncate_metrics(rd, run.state.epoch)
    return fit(run.model, train, test, config=cfg, run_dir=rd, optimizer=opt, state=run.state, **kwargs)
