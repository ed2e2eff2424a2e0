"""The training step as one CUDA graph: what :func:`scratchvae.train.fit` replays on CuPy.

One step of ``fit`` (gather the batch, dynamic binarisation / corruption, draw ε, forward,
backward, Adam, record the losses) is written here once as :meth:`GraphRunner._body`, a
function of device state only, and :class:`~scratchvae.backend.graph.StepGraphs` captures it
once per batch shape (the partial last batch gets a graph of its own) and replays it. The
same body runs on NumPy, eagerly, which is how the CPU tests check it against the eager loop.

Device state, written by the host only between replays (once per epoch):

==============  =================  ===============================================================
buffer          shape, dtype       meaning
==============  =================  ===============================================================
``perm``        (n,) int64         this epoch's permutation (uploaded before the first replay)
``bi``          (1,) int64         the batch index: the gather reads it, ``record_losses`` adds 1
``table``       (S, 3) float64     per batch: Adam's (lr / (1 − β₁ᵗ), √(1 − β₂ᵗ)) and β
``cur``         (3,) float64       ``table[bi]``, copied by a kernel at the start of each step
``losses``      (S, 3) float64     per batch: (−ELBO, recon, KL) sums, as the eager loop's array
``flag``        (1,) int64         the first batch whose loss was not finite, else −1
==============  =================  ===============================================================

The host keeps the same schedule (it computed the table), so ``opt.t`` and ``model.beta``
advance on the host by one step per replay with no read-back. The table holds the very
float64 coefficients :meth:`Adam.step` would compute, so a replayed step and an eager step
do the same arithmetic; β lives in ``cur[2]``, so KL warm-up works under the graph too.
"""

from __future__ import annotations

import numpy as np

from .backend.graph import StepGraphs, gather_rows, load_row, record_losses


def graph_unsupported(model, opt):
    """Why the graph step cannot run this training (a sentence), or None when it can.

    On NumPy the graph step runs (eagerly, the same body): that is how the CPU tests check it.
    """
    if not hasattr(opt, "step_from") or not hasattr(opt, "coefficients"):
        return f"the optimizer {type(opt).__name__} has no device-side step (step_from)"
    return None


class _Schedule:
    """Host and device copies of the per-step table (Adam coefficients, β) and the counters."""

    def __init__(self, model, opt, rows, warm_steps=0.0, beta_target=None):
        xp = model.xp
        self.model, self.opt, self.rows = model, opt, rows
        self.warm_steps = warm_steps
        self.beta_target = model.beta if beta_target is None else beta_target
        self.table = xp.zeros((rows, 3), dtype=np.float64)
        self.cur = xp.zeros(3, dtype=np.float64)
        self.bi = xp.zeros(1, dtype=np.int64)
        self.flag = xp.full(1, -1, dtype=np.int64)
        self.losses = xp.zeros((rows, 3), dtype=np.float64)
        self.beta_host = np.zeros(rows)
        # β as a 0-d float64 view of cur[2] (CuPy); NumPy reads the value as a Python float.
        self.beta_dev = self.cur[2:3].reshape(()) if model.backend.name == "cupy" else None

    def fill(self, first, step):
        """Rows first.. for the steps after ``step`` (global, completed); bi = first; flag = −1."""
        host = np.zeros((self.rows, 3))
        for r in range(first, self.rows):
            s = step + (r - first) + 1                       # the step this row belongs to
            coef = self.opt.coefficients(self.opt.t + (r - first) + 1)
            host[r, :len(coef)] = coef
            host[r, 2] = (self.beta_target * min(1.0, s / self.warm_steps) if self.warm_steps > 0
                          else self.model.beta)
        self.beta_host = host[:, 2].copy()
        _upload(self.table, host)
        _upload(self.bi, np.array([first], dtype=np.int64))
        _upload(self.flag, np.array([-1], dtype=np.int64))
        if first:
            self.losses[:first] = 0

    def beta_for_body(self):
        if self.warm_steps <= 0:
            return self.model.beta
        return self.beta_dev if self.beta_dev is not None else float(self.cur[2])


def _upload(dst, host):
    """Host -> existing device buffer, in place (its address is baked into the graphs)."""
    if isinstance(dst, np.ndarray):
        dst[...] = host
    else:
        dst.set(np.ascontiguousarray(host, dtype=dst.dtype))


class GraphRunner:
    """The ``fit`` loop's steps on device state, replayed as CUDA graphs on CuPy.

    ``buffers(nb)`` -> (xb, xin, u) and ``prepare(xb, xin, u)`` -> (encoder input, target) are
    ``fit``'s own batch buffers and batch preparation, so both loops share that code.
    """

    def __init__(self, model, opt, xtrain, batch_size, n_batches, buffers, prepare,
                 warm_steps=0.0, beta_target=None, notify=None):
        self.model, self.opt, self.xtrain = model, opt, xtrain
        self.B, self.n = batch_size, xtrain.shape[0]
        self.buffers, self.prepare = buffers, prepare
        self.sched = _Schedule(model, opt, n_batches, warm_steps, beta_target)
        self.perm = model.xp.empty(self.n, dtype=np.int64)
        self.graphs = StepGraphs(model.backend)
        self.notify = notify

    @property
    def losses(self):
        return self.sched.losses

    @property
    def failed(self):
        """Why the capture failed (the steps then run eagerly, one kernel at a time), or None."""
        return self.graphs.failed

    def begin_epoch(self, perm, first, step):
        """Upload the permutation and the schedule (before any replay); returns the loss array."""
        _upload(self.perm, np.asarray(perm, dtype=np.int64))
        self.sched.fill(first, step)
        return self.sched.losses

    def step(self, bi):
        """Batch ``bi``: one graph launch (the first step of each batch shape runs eagerly)."""
        nb = min(self.B, self.n - bi * self.B)
        self.graphs.run(nb, lambda: self._body(nb))
        if self.graphs.failed is not None and self.notify is not None:
            self.notify("graph", {"enabled": False, "reason": f"capture failed, running eagerly: "
                                                             f"{self.graphs.failed}"})
            self.notify = None
        self.opt.t += 1
        if self.sched.warm_steps > 0:
            self.model.beta = float(self.sched.beta_host[bi])

    def failed_batch(self):
        """The first batch of this epoch whose loss was not finite, or None (one host sync)."""
        f = int(self.model.backend.to_host(self.sched.flag)[0])
        return None if f < 0 else f

    def _body(self, nb):
        """One training step that reads and writes device state only (capturable)."""
        model, s = self.model, self.sched
        xb, xin, u = self.buffers(nb)
        gather_rows(self.xtrain, self.perm, s.bi, self.B, xb)
        xin, target = self.prepare(xb, xin, u)
        load_row(s.table, s.bi, s.cur)
        host_beta = model.beta
        model.beta = s.beta_for_body()
        try:
            res = model.loss_and_grads(xin, target=target)
        finally:
            model.beta = host_beta
        self.opt.step_from(model.grad, s.cur)
        record_losses(res.recon, res.kl, s.losses, s.bi, s.flag)
        return res


class GraphStep:
    """A training step on a caller-supplied batch, replayed as a CUDA graph (benchmarks).

    ``step(x)`` copies ``x`` into the graph's input buffer, replays forward, backward and the
    optimizer step (ε from the model's 'noise' stream), and returns the step's objective as a
    0-d device array (no host sync). Gradients are left in ``model.grad`` as after
    ``loss_and_grads``. The Adam schedule is uploaded ``chunk`` steps at a time.
    """

    def __init__(self, model, opt, x_example, chunk=4096):
        why = graph_unsupported(model, opt)
        if why is not None:
            raise ValueError(why)
        self.model, self.opt = model, opt
        self.x = model.xp.empty_like(x_example)
        self.sched = _Schedule(model, opt, chunk)
        self.graphs = StepGraphs(model.backend)
        self.left = 0

    def step(self, x):
        if x.shape != self.x.shape or x.dtype != self.x.dtype:
            raise ValueError(f"step(x): x must be {self.x.dtype} {tuple(self.x.shape)}, got {x.dtype} {tuple(x.shape)}")
        if self.left == 0:
            self.sched.fill(0, self.opt.t)
            self.left = self.sched.rows
        if self.graphs.enabled:
            self.x.data.copy_from_device_async(x.data, x.nbytes, stream=self.graphs.stream)
        else:
            self.x[...] = x
        res = self.graphs.run(x.shape[0], self._body)
        self.opt.t += 1
        self.left -= 1
        return res.objective

    __call__ = step

    def _body(self):
        s = self.sched
        load_row(s.table, s.bi, s.cur)
        res = self.model.loss_and_grads(self.x)
        self.opt.step_from(self.model.grad, s.cur)
        record_losses(res.recon, res.kl, s.losses, s.bi, s.flag)
        return res


def make_graph_step(model, opt, x_example):
    """A :class:`GraphStep` for ``model`` and ``opt`` at ``x_example``'s shape (its ``step(x)``)."""
    return GraphStep(model, opt, x_example)
