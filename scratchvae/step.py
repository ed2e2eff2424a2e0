"""THE training step, written once, and the schedule that feeds it.

One step: gather the batch by index -> binarise / corrupt it -> draw ε -> forward and
backward (:meth:`VAE.loss_and_grads`) -> the optimizer's update -> record what the objective
reports (−ELBO, recon, KL; with the importance-weighted objective −L_K beside the single-sample
ELBO's parts) and the non-finite flag, through one record block. :class:`TrainStep` holds it as one function of its inputs and of
device state, ``_body``. On NumPy it runs eagerly; on CuPy it is captured into a CUDA graph
once per batch shape and replayed (:class:`~scratchvae.backend.graph.StepGraphs`); with
``capture=False`` (``--no-graph``) the same body runs uncaptured. There is no second copy.

What the body may not do, because a captured CUDA graph replays it without Python:

* **allocate a buffer that must outlive one step** after its first call at a batch shape:
  its working buffers (the model's workspace, the step's batch buffers, the optimizer's
  scratch) are made by that first call, which runs eagerly before the capture, and a replay
  writes the same addresses. (Temporaries that live within one step, such as a reduction's
  partial sums, come from the graph's private pool while it is captured.)
* **synchronise** with the host or **read a device value on the host** (``float(x)``,
  ``.item()``, ``bool(x)``, ``if x.max() > ...`` on device data): a replay would not re-run
  it. Every per-step value is read on the device: the batch index ``bi``, the schedule's row
  (the optimizer's coefficients and β), the random streams' counters; every draw goes into
  an existing buffer (``draw_*_into``);
* **write host state**: the host advances its own copies (the optimizer's ``t``) between
  steps. Nothing writes ``model.beta``: β is an input, read from the schedule.

``tests/test_step.py`` and ``tests/test_engine_misc.py`` check on NumPy, with the Numba twins
and with the bodies, that a step after the first allocates less than one (B, L) array at its
peak for every kind of model (the rule is stated once, in ``tests/_alloc.py``), and that the warm-up, the captured call and the uncaptured step ask for the same
kernels, each of which the CUDA module has; the GPU tests compare captured and eager steps.

Device state, written by the host only between steps (once per epoch):

==============  =================  ===============================================================
buffer          shape, dtype       meaning
==============  =================  ===============================================================
``perm``        (n,) int64         this epoch's permutation of the training rows
``bi``          (1,) int64         the batch index: the gather reads it, ``record_losses`` adds 1
``table``       (S, 3) float64     per batch: the optimizer's two coefficients and β (``Schedule``)
``cur``         (3,) float64       ``table[bi]``, copied by a kernel at the start of each step
``losses``      (S, 3) float64     per batch: the objective's loss (−ELBO, −L_K, …), recon, KL sums
``flag``        (1,) int64         the first batch whose −ELBO was not finite, else −1
``row``         (3,) float64       on ranks: this step's loss, recon and KL sums, summed over ranks
==============  =================  ===============================================================
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .backend import fused
from .backend.graph import StepGraphs, gather_rows, load_row
from .backend.random import Streams
from .comm import SOLO
from .errors import InputError
from .inputs import CORRUPTIONS, binarize_dynamic

TRAIN_STREAMS = {"shuffle": 2, "binarize": 3}
"""The training loop's random streams and their ids (the model has its own, MODEL_STREAMS)."""
LOSSES = ("neg_elbo", "recon", "kl")
"""The columns of the ELBO's recorded losses (batch sums); a model's own are its objective's
``columns`` (the importance-weighted bound's first holds −L_K, the loss it reports)."""
BETA = 2
"""The schedule row's column holding β; columns 0 and 1 hold the optimizer's coefficients."""


class Schedule:
    """The per-step inputs of the step: β (linear KL warm-up) and the optimizer's coefficients.

    Step s (1-based, counted over the whole run) has β_s = β · min(1, s / warmup_steps)
    (β itself without warm-up) and the coefficients ``opt.coefficients(t, lr_at(s))`` of the
    optimizer's own step t (Adam's bias corrections at that step's learning rate; none for
    SGD), ``lr_at`` a learning-rate schedule (:data:`LR_SCHEDULES`) or None (constant).
    """

    def __init__(self, opt, beta, warmup_steps=0.0, lr_at=None):
        self.opt, self.beta, self.warmup_steps = opt, float(beta), float(warmup_steps)
        self.lr_at = lr_at          # step -> learning rate (None: the optimizer's own, constant)

    def beta_at(self, step):
        """β of global step ``step`` (1-based)."""
        if self.warmup_steps > 0:
            return self.beta * min(1.0, step / self.warmup_steps)
        return self.beta

    def rows(self, step, t, count):
        """(count, 3) float64: row r for global step ``step + r`` and optimizer step ``t + r``."""
        out = np.zeros((count, 3))
        for r in range(count):
            coef = self.opt.coefficients(t + r, None if self.lr_at is None else self.lr_at(step + r))
            out[r, :len(coef)] = coef
            out[r, BETA] = self.beta_at(step + r)
        return out


@fused("record_losses", on="losses")
def record_losses(first, second, recon, kl, losses, bi, flag):
    """losses[b] = (first + second, recon, kl) with b = bi[0]; then bi[0] = b + 1.

    The first column is the loss the objective reports, the sum of two of its 0-d terms that
    :meth:`record_terms <scratchvae.objectives.ELBO.record_terms>` names (the ELBO: recon and
    kl; the importance-weighted bound: −L_K and None, which stands for nothing to add), formed
    in their dtype; recon, kl: the model's dtype; losses (S, 3) float64. ``flag`` (1,) int64
    starts at −1 and receives b the first time the loss is not finite, so one small read tells
    whether any step failed.
    """
    b = int(bi[0])
    loss = first if second is None else first + second
    losses[b, 0], losses[b, 1], losses[b, 2] = loss, recon, kl
    if not np.isfinite(loss) and flag[0] < 0:
        flag[0] = b
    bi[0] = b + 1


@dataclass
class TrainState:
    """Where a training run stands, beyond the model's parameters and the optimizer's state:
    what a checkpoint must hold to continue exactly.

    ``perm``/``acc``/``epoch_seconds`` describe an unfinished epoch (None between epochs);
    ``streams`` are the training loop's random streams (:data:`TRAIN_STREAMS`); ``history`` the
    metrics rows of the finished epochs.
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


@dataclass
class Part:
    """A rank's rows [lo, lo + m) of a batch of ``nb``: what it gathers (``perm``, a view from
    lo) and the streams' rows it draws from; ``empty``: it has none (it runs row 0 and adds 0)."""

    lo: int
    m: int
    empty: bool
    perm: object
    binarize: object
    noise: object


class TrainStep:
    """The training step over ``data`` (N, D) (on the model's backend and dtype), see the module.

    ``schedule``: a :class:`Schedule`. ``streams``: the training streams (:data:`TRAIN_STREAMS`;
    'binarize' is drawn for ``binarize=True``). ``corrupt``: ('none' | 'gaussian' | 'mask',
    value), its noise from the model's 'noise' stream. ``rows``: batches per :meth:`begin`
    (default: one epoch's). ``supplied``: ``data`` *is* the batch (a caller copies each
    batch into it, see :func:`make_graph_step`), nothing is gathered. ``capture``: replay as
    CUDA graphs where the backend can (CuPy); ``notify(event, info)`` hears if a capture fails.
    ``comm``: the ranks (:mod:`scratchvae.comm`; default one process).
    """

    def __init__(self, model, opt, data, batch_size, schedule, *, streams=None, binarize=False,
                 corrupt=("none", 0.0), rows=None, supplied=False, capture=True, notify=None, comm=SOLO):
        for need in ("coefficients", "step_from"):
            if not callable(getattr(opt, need, None)):
                raise InputError(f"optimizer must provide coefficients(t) and step_from(grads, coef) "
                                 f"(as scratchvae's Adam and SGD do); {type(opt).__name__} has no {need}")
        xp = model.xp
        self.model, self.opt, self.data, self.schedule = model, opt, data, schedule
        self.n, self.B = data.shape[0], batch_size
        self.streams, self.binarize, self.corrupt, self.supplied = streams, binarize, corrupt, supplied
        self.rows = rows if rows is not None else -(-self.n // batch_size)
        self.perm = xp.empty(0 if supplied else self.n, dtype=np.int64)
        self.bi = xp.zeros(1, dtype=np.int64)
        self.flag = xp.full(1, -1, dtype=np.int64)
        self.table = xp.zeros((self.rows, 3), dtype=np.float64)
        self.cur = xp.zeros(3, dtype=np.float64)
        self.losses = xp.zeros((self.rows, 3), dtype=np.float64)
        self.graphs = StepGraphs(model.backend, capture)
        self.notify = notify
        self.comm = comm
        self.row = xp.zeros(3, dtype=np.float64)
        self._buffers, self._parts = {}, {}

    def begin(self, first, step, perm=None):
        """Before batch ``first`` of a new round of ``rows`` batches: upload the permutation and
        the schedule of the steps after global step ``step``; bi = first, flag = −1."""
        b = self.model.backend
        if perm is not None:
            b.upload(self.perm, np.asarray(perm, dtype=np.int64))
        table = np.zeros((self.rows, 3))
        table[first:] = self.schedule.rows(step + 1, self.opt.t + 1, self.rows - first)
        b.upload(self.table, table)
        b.upload(self.bi, np.array([first], dtype=np.int64))
        b.upload(self.flag, np.array([-1], dtype=np.int64))
        if first:
            self.losses[:first] = 0
        return self.losses

    def __call__(self, index):
        """Run batch ``index`` of this round (a graph replay after the first at its shape)."""
        nb = self.B if self.supplied else min(self.B, self.n - index * self.B)
        self.graphs.run(nb, lambda: self._body(nb))
        if self.graphs.failed is not None and self.notify is not None:
            self.notify("graph", {"enabled": False, "reason": f"capture failed, running eagerly: "
                                                             f"{self.graphs.failed}"})
            self.notify = None
        self.opt.t += 1

    def failed_batch(self):
        """The first batch of this round whose loss was not finite, or None (one host sync)."""
        f = int(self.model.backend.to_host(self.flag)[0])
        return None if f < 0 else f

    def _batch_buffers(self, part):
        bufs = self._buffers.get(part.m)
        if bufs is None:
            xp, shape = self.model.xp, (part.m, self.model.input_dim)
            own = self.data[part.lo:part.lo + part.m] if self.supplied else xp.empty(shape, self.model.dtype)
            bufs = self._buffers[part.m] = (own, xp.empty(shape, self.model.dtype))
        return bufs

    def _part(self, nb):
        """This rank's :class:`Part` of a batch of nb rows (one process: all of it)."""
        part = self._parts.get(nb)
        if part is None:
            lo, hi = self.comm.rows(nb)
            empty = hi == lo
            lo, hi = (0, 1) if empty else (lo, hi)
            streams = [self.model.rng["noise"], self.streams["binarize"] if self.binarize else None]
            if self.comm.size > 1:
                streams = [s and s.rows(lo, hi, nb) for s in streams]
            part = self._parts[nb] = Part(lo, hi - lo, empty, self.perm[lo:], streams[1], streams[0])
        return part

    def _body(self, nb):
        """The step, on device state only (capturable; see the module docstring)."""
        model, part = self.model, self._part(nb)
        xb, x_in = self._batch_buffers(part)
        if not self.supplied:
            gather_rows(self.data, part.perm, self.bi, self.B, xb)
        if self.binarize:
            binarize_dynamic(xb, x_in, part.binarize)
        kind, value = self.corrupt
        x_in = CORRUPTIONS[kind](xb, value, x_in, part.noise) if kind in CORRUPTIONS else xb
        load_row(self.table, self.bi, self.cur)
        res = model.loss_and_grads(x_in, target=xb, beta=self.cur[BETA:BETA + 1], noise=part.noise)
        terms = (*model.objective.record_terms(res), res.recon, res.kl)
        if self.comm.size > 1:
            terms = self._sum_ranks(terms, part.empty)
        self.opt.step_from(model.grad, self.cur)
        record_losses(*terms, self.losses, self.bi, self.flag)
        return res

    def _sum_ranks(self, terms, empty):
        """The gradient and the loss row (first + second, recon, kl) summed over the ranks, in
        place (a rank with no rows adds zeros); the record block's terms from the summed row."""
        first, second, recon, kl = terms
        row, grad = self.row, self.model.grad
        if empty:
            grad[...] = 0
            row[...] = 0
        else:
            row[0] = first if second is None else first + second
            row[1], row[2] = recon, kl
        self.comm.sum_(grad)
        self.comm.sum_(row)
        return row[0], None, row[1], row[2]


class BatchStep:
    """A training step on a batch the caller supplies, replayed as a CUDA graph (benchmarks).

    ``step(x)`` copies ``x`` (the example's shape and dtype, on the model's backend) into the
    step's input buffer and runs :class:`TrainStep` on it (ε from the model's 'noise' stream,
    β the model's, the optimizer's coefficients from a schedule uploaded ``chunk`` steps at a
    time). It returns the step's −ELBO (−L_K with ``objective='iwae'``) as a 0-d float64 device array, a view of the loss
    table (no host sync; valid until ``chunk`` more steps). Gradients are left in
    ``model.grad`` as after ``loss_and_grads``.
    """

    def __init__(self, model, opt, x_example, chunk=4096, capture=True):
        model.backend.check("x_example", x_example)
        self.x = model.xp.empty_like(x_example)
        self.model = model
        self.step = TrainStep(model, opt, self.x, x_example.shape[0], Schedule(opt, model.beta),
                              rows=chunk, supplied=True, capture=capture)
        self.graphs = self.step.graphs
        self.row = chunk

    def __call__(self, x):
        if x.shape != self.x.shape or x.dtype != self.x.dtype:
            raise InputError(f"step(x): x must be {self.x.dtype} {tuple(self.x.shape)}, "
                             f"got {x.dtype} {tuple(x.shape)}")
        if self.row == self.step.rows:
            self.step.begin(0, self.step.opt.t)
            self.row = 0
        with self.graphs.context():
            self.model.backend.copy(self.x, x)
        self.step(self.row)
        self.row += 1
        return self.step.losses[self.row - 1, 0]


def make_graph_step(model, opt, x_example):
    """A :class:`BatchStep` for ``model`` and ``opt`` at ``x_example``'s shape: ``step(x)``."""
    return BatchStep(model, opt, x_example)
