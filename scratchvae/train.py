"""The training loop: :func:`fit` drives a model over a dataset; :func:`resume` continues a run.

The loop is epochs, batches, checks, callbacks and checkpoints; each batch is one call of
the training step (:class:`scratchvae.step.TrainStep`, the same on every backend), and the
run directory's format belongs to :mod:`scratchvae.runs`. The library never prints:
:func:`fit` reports through ``callback(event, info)``:

``"batch"``      when an epoch starts (``batch`` 0, or where a resumed epoch stands), every
                 ``report_every`` steps and after its last batch: ``epoch``, ``epochs`` (the
                 total), ``batch``, ``batches``, ``step``
``"epoch"``      after each epoch: the metrics row written to ``metrics.jsonl``, ``epochs``
                 and ``objective`` (the model's, which says what the loss is: its ``label``,
                 whether it is recon + kl, ``adds_up``, and whether it has a KL, ``records_kl``)
``"checkpoint"`` after each checkpoint: ``path``, ``epoch``, ``step``
``"graph"``      if a CUDA-graph capture failed: ``enabled`` False and the ``reason``

A metrics row: ``epoch``, ``step``, ``train_loss`` / ``train_recon`` / ``train_kl`` (per
image, over the epoch's steps), ``beta`` (β at the epoch's last step), with test data
``test_loss`` / ``test_recon`` / ``test_kl`` (with several stochastic layers ``test_kl_layers``,
each layer's part of ``test_kl``, bottom first), and ``eval_seconds`` (the test −ELBO's) and
``seconds`` (the epoch's training and evaluation, up to its checkpoint).

Nothing is written before every check has passed (the data, the configuration, the batch size
against the training set, the run directory): a run's folder appears with its first
checkpoint (see :mod:`scratchvae.runs`).

Randomness: shuffling and dynamic binarisation come from the training loop's streams, ε and
corruption noise from the model's 'noise' stream; evaluation draws from the model's 'eval'
stream, so evaluating never changes the training sequence. Resuming restores every stream,
the optimizer and (mid-epoch) the permutation and batch index, so a resumed run repeats the
uninterrupted one exactly on the same backend and thread settings.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from . import faults
from .comm import SOLO
from .errors import InputError, NonFiniteError, ScratchVAEError
from .evaluate import evaluate_elbo
from .inputs import parse_corrupt, prepare_split
from .model import VAE
from .config import TrainConfig
from .history import repair_metrics
from .optim import LR_SCHEDULES, make_optimizer
from .runs import (
    CONFIG,
    DEFAULT_KEEP,
    Run,
    RunWriter,
    check_run_dir,
    config_document,
    edit_config,
    keep_of,
    load_run,
    provenance,
    write_config,
)
from .step import Schedule, TrainState, TrainStep, make_graph_step

__all__ = ["fit", "resume", "Interrupted", "TrainConfig", "load_run", "Run", "make_optimizer", "write_config",
           "make_graph_step"]
"""The training API; TrainConfig, load_run, Run, make_optimizer, write_config and make_graph_step live in
scratchvae.config, .runs, .optim and .step and are public here too (the README imports them from here)."""

NONFINITE_CHECK_EVERY = 50   # steps between checks of the loss for NaN/Inf (one host sync each)


class Interrupted(ScratchVAEError):
    """Training stopped on request (SIGINT/SIGTERM); a mid-epoch checkpoint was written."""

    def __init__(self, message, checkpoint):
        super().__init__(message)
        self.checkpoint = checkpoint


@np.errstate(over="ignore", invalid="ignore", divide="ignore")   # the loop checks the loss itself
def fit(model, train, test=None, *, config: TrainConfig | None = None, run_dir=None, callback=None,
        report_every=20, should_stop=None, optimizer=None, graph=None, state: TrainState | None = None,
        keep=DEFAULT_KEEP, keep_best=True, run_info=None, on_ready=None, comm=SOLO):
    """Train ``model`` on ``train`` (images (N, D); uint8 or floats) and return the history.

    config : a :class:`TrainConfig` (``epochs`` is the **total**, also when continuing).
    test : images for the per-epoch test −ELBO (optional).
    run_dir : where to write config.json, metrics.jsonl and checkpoints (None: nothing written):
        a new or empty folder, or one holding a config.json and no checkpoints.
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
    keep : end-of-epoch checkpoints kept in ``run_dir``: the newest ``keep`` (None: all), and
        with ``keep_best`` the one of the lowest test loss; mid-epoch checkpoints go once their
        epoch's checkpoint is written.
    run_info : more entries for a new run's config.json (the command line records its own).
    on_ready : called with no arguments once every check has passed, before the first step
        and before anything is written (:func:`resume` records itself there), with the run's
        writer lock held (:class:`~scratchvae.runs.WriterLock`: a second process writing the
        same run is refused, naming this one).
    Every ``NONFINITE_CHECK_EVERY`` steps (one host sync) and at the end of each epoch the
    losses since the last check are tested: a NaN/Inf raises :class:`NonFiniteError` naming
    the step. A checkpoint is never written from non-finite parameters.
    comm : the ranks (:mod:`scratchvae.comm`; default one process). Every rank calls ``fit``
        with the same arguments; each takes its rows of every batch, and all step as one
        process would (up to the order of the gradient's sum). Rank 0 writes ``run_dir`` and
        holds its lock (``on_ready`` runs there); a check that fails on any rank fails on
        all, before anything is written; a stop asked of any rank stops all at the same step;
        after each epoch the ranks' parameters, optimizer state and streams are compared (a
        digest each) and :class:`~scratchvae.comm.RanksDifferError` stops them if they differ.
    Returns the list of per-epoch metric rows (all epochs, including earlier ones of ``state``).
    """
    with contextlib.ExitStack() as held:
        with comm.together():                     # a check failed on any rank fails on every rank
            loop = _prepare(model, train, test, config=config, run_dir=run_dir if comm.writer else None,
                            callback=callback, report_every=report_every, should_stop=should_stop,
                            optimizer=optimizer, graph=graph, state=state, keep=keep, keep_best=keep_best,
                            run_info=run_info, comm=comm)
            if loop.writer is not None:
                held.enter_context(loop.writer)    # the run's writer lock
        if on_ready is not None and comm.writer:
            on_ready()
        return loop.run()


def _prepare(model, train, test, *, config, run_dir, callback, report_every, should_stop, optimizer,
             graph, state, keep, keep_best, run_info, comm):
    """Every check of :func:`fit` and its set-up, nothing written: the loop to run."""
    if not isinstance(model, VAE):
        raise InputError(f"model must be a scratchvae.VAE, got {type(model).__name__}")
    cfg = (config or TrainConfig()).check_model(model.settings)
    if keep is not None and (isinstance(keep, bool) or not isinstance(keep, int) or keep < 1):
        raise InputError(f"keep must be a positive integer or None (every checkpoint), got {keep!r}")
    writer = None
    if run_dir is not None:
        check_run_dir(run_dir, continuing=state is not None)
        doc = config_document(model, cfg, {"keep": "all" if keep is None else keep, **(run_info or {})}, comm)
        writer = RunWriter(run_dir, doc, keep, keep_best)
    resumed = state is not None
    state = state if resumed else TrainState.start(model)
    xtrain, xtest = _prepare_data(model, train, test, cfg, state)
    if comm.size > 1 and model.backend.name != "numpy":
        raise InputError(f"training on {comm.size} ranks runs on the numpy backend only (ranks on GPUs need "
                         f"NCCL, not built yet): use --backend numpy, or one rank")
    if cfg.output_bias == "data-mean" and not resumed:
        _start_output_bias(model, xtrain)
    opt = optimizer or make_optimizer(model, cfg)
    batches = -(-xtrain.shape[0] // cfg.batch_size)
    schedule = LR_SCHEDULES.get(cfg.lr_schedule or "constant")
    schedule = Schedule(opt, model.beta, cfg.kl_warmup * batches,
                        lr_at=None if schedule is None else schedule(cfg.lr, batches))
    step = TrainStep(model, opt, xtrain, cfg.batch_size, schedule,
                     streams=state.streams, binarize=cfg.binarize == "dynamic",
                     corrupt=parse_corrupt(cfg.corrupt), capture=graph is not False, notify=callback, comm=comm)
    return _Loop(model, opt, cfg, state, step, writer, callback, report_every, should_stop, xtest=xtest,
                 saved=resumed, comm=comm)


def _start_output_bias(model, xtrain):
    """The decoder's output bias set to the output whose mean is each pixel's training mean
    (Burda et al.'s released code: the logit of the mean, for a Bernoulli likelihood)."""
    mean = model.backend.to_host(model.xp.mean(xtrain, axis=0, dtype=np.float64))
    model.params["dec.out.b"][...] = model.backend.asarray(model.likelihood.output_for_mean(mean),
                                                          dtype=model.dtype)


def _prepare_data(model, train, test, cfg, state):
    """The training and test images on the model's backend, statically binarised if asked."""
    xtrain = prepare_split(train, model, "static" if cfg.binarize == "static" else "none", "train")
    xtest = prepare_split(test, model, cfg.binarize, "test") if test is not None else None
    n, B = xtrain.shape[0], cfg.batch_size
    if B > n:
        raise InputError(f"batch_size ({B}) is larger than the training set ({n} images)")
    perm = state.perm
    if perm is not None and (len(perm) != n or not np.array_equal(np.sort(perm), np.arange(n))):
        raise InputError(f"the mid-epoch checkpoint's permutation does not fit a training set of "
                         f"{n} images (it has {len(perm)} entries): resume with the run's own data")
    return xtrain, xtest


class _Loop:
    """One epoch at a time: the batches, the checks, the callbacks and the checkpoints."""

    def __init__(self, model, opt, cfg, state, step, writer, callback, report_every, should_stop, *, xtest,
                 saved, comm):
        self.model, self.opt, self.cfg, self.state, self.step, self.comm = model, opt, cfg, state, step, comm
        self.writer, self.callback, self.report_every, self.should_stop = (
            writer, callback, report_every, should_stop)
        self.xtest, self.saved = xtest, saved   # the prepared test images; whether a checkpoint exists

    def run(self):
        """Train to the configured epochs; returns the history."""
        while self.state.epoch < self.cfg.epochs:
            self.train_epoch()
            self.end_epoch()
        return self.state.history

    def report(self):
        s = self.state
        self.callback("batch", {"epoch": s.epoch + 1, "epochs": self.cfg.epochs, "batch": s.batch,
                                "batches": self.step.rows, "step": s.step})

    def train_epoch(self):
        """The remaining batches of the current epoch; the epoch's loss sums go to state.acc."""
        s, step = self.state, self.step
        t0 = time.perf_counter()
        if s.perm is None:
            s.perm, s.acc, s.batch, s.epoch_seconds = s.streams["shuffle"].permutation(step.n), np.zeros(3), 0, 0.0
        losses = step.begin(s.batch, s.step, s.perm)
        first = checked = s.batch
        if self.callback:
            self.report()
        for b in range(s.batch, step.rows):
            step(b)
            s.step, s.batch = s.step + 1, b + 1
            faults.mid_epoch_step(s.step)
            if s.step % NONFINITE_CHECK_EVERY == 0:
                if step.failed_batch() is not None:
                    self.check_finite(losses, checked, b + 1)
                checked = b + 1
            if self.callback and (s.step % self.report_every == 0 or b + 1 == step.rows):
                self.report()
            if self.should_stop is not None and b + 1 < step.rows and self.comm.any(self.should_stop()):
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
        last = s.history[-1] if s.history and s.history[-1].get("epoch") == s.epoch else None
        path = self.save(last)
        raise Interrupted(f"stopped during epoch {s.epoch + 1} after batch {s.batch}", path)

    def end_epoch(self):
        """The metrics row (and test −ELBO), the end-of-epoch checkpoint, the row, the callback."""
        s = self.state
        n = self.step.n
        row = {"epoch": s.epoch + 1, "step": s.step, "train_loss": s.acc[0] / n,
               "train_recon": s.acc[1] / n, "train_kl": s.acc[2] / n,
               "beta": self.step.schedule.beta_at(s.step)}
        te = time.perf_counter()
        if self.xtest is not None:
            ev = evaluate_elbo(self.model, self.xtest, comm=self.comm)
            row.update(test_loss=ev["loss"], test_recon=ev["recon"], test_kl=ev["kl"])
            if "kl_layers" in ev:
                row["test_kl_layers"] = ev["kl_layers"]
        row["eval_seconds"] = time.perf_counter() - te
        row["seconds"] = s.epoch_seconds + row["eval_seconds"]
        s.epoch, s.perm, s.acc, s.batch = s.epoch + 1, None, None, 0
        if self.comm.size > 1:
            self.comm.same(_digest(self.model, self.opt, s), "parameters, optimizer state or random streams")
        self.save(row)
        s.history.append(row)
        if self.writer is not None:
            self.writer.end_epoch(row, s.history)
        if self.callback:
            self.callback("epoch", {**row, "epochs": self.cfg.epochs, "objective": self.model.objective})

    def save(self, row=None):
        """The checkpoint of this moment (mid-epoch if a batch is done), or None without a run dir."""
        if self.writer is None:
            return None
        s = self.state
        path = self.writer.save(self.model, self.opt, self.cfg, s, row)
        self.saved = True
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
            kept = ("" if self.writer is None else "the checkpoints already written predate it and are intact. "
                    if self.saved else "nothing was written. ")
            hint = self.nonfinite_hint()
            raise NonFiniteError(
                f"the loss became non-finite at step {step} (epoch {s.epoch + 1}, batch {start + int(bad[0]) + 1}); "
                f"{kept}{hint if kept else hint[0].lower() + hint[1:]}")

    def nonfinite_hint(self):
        """What to try after a non-finite loss; for an optimizer whose step scales with the gradient
        (SGD), that the gradients are batch sums, and the learning rate of a mean's step."""
        if not getattr(self.opt, "scales_with_gradient", False):
            return "Try a smaller --lr, --kl-warmup, or float64"
        B, lr = self.cfg.batch_size, self.opt.lr
        return (f"The gradients are sums over a batch's {B} images, so {type(self.opt).__name__}'s step is {B} times "
                f"a mean's: try --lr {lr / B:.2g} (--lr {lr:g} / {B}), or a smaller one, --kl-warmup, or float64")


def _digest(model, opt, state):
    """A digest of what every rank must hold alike: θ, the optimizer's state, every stream's."""
    h = hashlib.blake2b(digest_size=16)
    for a in (model.theta, *opt.state().values(), *model.rng.state().values(), *state.streams.state().values()):
        h.update(np.ascontiguousarray(model.backend.to_host(a)).tobytes())
    return h.hexdigest()


_RECORDED = object()


def resume(run: Run, train, test=None, *, epochs=None, run_dir=None, keep=_RECORDED, record=None, comm=SOLO,
           **kwargs):
    """Continue a loaded :class:`~scratchvae.runs.Run` to ``epochs`` total epochs (default: its
    config's), in ``run_dir`` (default: the run's own folder). Other keywords go to :func:`fit`.

    ``keep``: default the run's own (config.json's). Once every check has passed, a run
    continued in its own folder gets its metrics.jsonl repaired to the loaded checkpoint's
    history (rows past it dropped, a row lost to a kill rebuilt) and config.json records the
    resume: ``epochs`` becomes the new total, and ``resumes`` gains {"at", "from", "epochs",
    "keep", "provenance"} plus ``record``'s entries. "provenance" is where this sitting ran, as
    the run's own: versions, machine, threads, the backend and whether the Numba twins ran (a
    run may be resumed on another machine, or with the twins switched off where it started
    with them), and on how many ranks (``comm``, as :func:`fit` takes it: a run made on N ranks
    continues on M, or in one process, as an M-rank run would from there).
    """
    cfg = run.train_config
    if epochs is not None:
        cfg = cfg.replace(epochs=int(epochs))
    opt = make_optimizer(run.model, cfg)
    opt.load_state(run.optimizer_state)
    rd = Path(run_dir) if run_dir is not None else run.checkpoint.parent.parent
    keep = keep_of(run.config) if keep is _RECORDED else keep

    def ready():
        if not (rd / CONFIG).exists():
            return
        repair_metrics(rd, run.history)
        source = run.checkpoint.relative_to(rd) if run.checkpoint.is_relative_to(rd) else run.checkpoint
        note = {"at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "from": source.as_posix(),
                "epochs": cfg.epochs, "keep": "all" if keep is None else keep,
                "provenance": provenance(run.model, comm), **(record or {})}
        edit_config(rd, lambda doc: _note_resume(doc, note))
    return fit(run.model, train, test, config=cfg, run_dir=rd, optimizer=opt, state=run.state, keep=keep,
               on_ready=ready, comm=comm, **kwargs)


def _note_resume(doc, note):
    doc["train"]["epochs"] = note["epochs"]
    doc["keep"] = note["keep"]
    doc.setdefault("resumes", []).append(note)
