"""Capture of a step callable as a CUDA graph, and the device-side plumbing a captured step needs.

A small VAE step is ~30 kernels of a few microseconds each; on a modern GPU the host time to
launch them one by one (CuPy: ~10-20 µs each) is the step time. :class:`StepGraphs` runs a
step function eagerly once per *key* (a batch shape), captures it into a CUDA graph, and from
then on replays the whole step with one ``cudaGraphLaunch``. On NumPy it simply calls the
function every time, so the same step code (and its tests) runs on the CPU.

What makes a step capturable (see ``../shared/notes/GPU.md``, and cupy/cupy#9655):
* no host <-> device copies and no host syncs inside: every per-step value (the batch index,
  the Adam bias corrections, β, the RNG counters) lives in device memory, and kernels read it
  there. :func:`gather_rows`, :func:`load_row` and :func:`record_losses` below are those reads
  and writes, each a NumPy body with a CuPy kernel twin;
* matrix products through :mod:`scratchvae.backend.cublas` (CuPy refuses cuBLAS in capture);
* buffers that outlive the graph: a graph holds raw pointers, and CuPy's memory pool does not
  know. Temporaries made while capturing come from a **private memory pool** kept by the
  :class:`StepGraphs` object and used for nothing else, so no later allocation can be handed a
  block that a replay writes. The eager warm-up runs under that pool too, so the capture finds
  its blocks cached and calls no ``cudaMalloc``.
* a stream of its own (capture is impossible on the legacy default stream). It is a *blocking*
  stream, so work queued on CuPy's default stream (evaluation, checkpoint copies) is ordered
  with the replays without explicit events.
"""

from __future__ import annotations

import numpy as np

from . import fused


class StepGraphs:
    """One CUDA graph per key, each captured from ``fn`` after one eager run (CuPy).

    ``run(key, fn)``: the first call for ``key`` runs ``fn()`` eagerly (a real step: kernels
    compile, workspaces allocate) and then captures ``fn`` (capturing executes nothing); later
    calls replay the graph. ``fn``'s return value from the capture is kept alive with the graph
    (``outputs(key)``): the arrays a replay writes its results into. On NumPy ``run`` calls ``fn``.

    If a capture fails, the reason is kept in ``failed`` and every later ``run`` calls ``fn``
    eagerly (the same device-side step, one kernel launch at a time).
    """

    def __init__(self, backend):
        self.backend = backend
        self.enabled = backend.name == "cupy"
        self.failed = None
        self._graphs = {}
        self._outputs = {}
        if self.enabled:
            cp = backend.xp
            self.stream = cp.cuda.Stream()          # blocking: ordered with the default stream
            self.pool = cp.cuda.MemoryPool()        # graph-owned memory; never used elsewhere
        else:
            self.stream = self.pool = None

    def __len__(self):
        return len(self._graphs)

    def outputs(self, key):
        return self._outputs.get(key)

    def run(self, key, fn):
        if not self.enabled or self.failed is not None:
            if self.enabled:
                with self.stream, self.backend.xp.cuda.using_allocator(self.pool.malloc):
                    return fn()
            return fn()
        g = self._graphs.get(key)
        if g is not None:
            g.launch(self.stream)
            return self._outputs[key]
        cp = self.backend.xp
        with self.stream, cp.cuda.using_allocator(self.pool.malloc):
            out = fn()                                # the eager warm-up, a real step
            self.stream.begin_capture()
            try:
                captured = fn()
            except BaseException as err:
                try:
                    self.stream.end_capture()
                except Exception:
                    pass
                self.failed = f"{type(err).__name__}: {err}"
                return out
            try:
                graph = self.stream.end_capture()
            except Exception as err:
                self.failed = f"{type(err).__name__}: {err}"
                return out
        self._graphs[key] = graph
        self._outputs[key] = captured
        return out

    def synchronize(self):
        if self.enabled:
            self.stream.synchronize()


# -- device-side plumbing (NumPy bodies; CuPy kernels of the same names) ----------------------------
def gather_rows(src, perm, bi, batch, out):
    """out[r] = src[perm[bi·batch + r]] for r < len(out), with bi = ``bi[0]`` read on the device.

    src (n, D); perm (n,) int64; bi (1,) int64; out (nb, D). NumPy: ``numpy.take`` (bit-for-bit
    the copy the eager loop makes).
    """
    k = fused("gather_rows", src)
    if k is not None:
        return k(src, perm, bi, batch, out)
    start = int(bi[0]) * batch
    np.take(src, perm[start:start + out.shape[0]], axis=0, out=out)
    return out


def load_row(table, bi, out):
    """out = table[bi[0]] (a row of a per-step schedule, chosen on the device); table (S, w)."""
    k = fused("load_row", table)
    if k is not None:
        return k(table, bi, out)
    out[...] = table[int(bi[0])]
    return out


def record_losses(recon, kl, losses, bi, flag):
    """losses[b] = (recon + kl, recon, kl) with b = bi[0]; then bi[0] = b + 1.

    recon, kl: 0-d arrays of the model's dtype (the sum is formed in that dtype, as the eager
    loop's ``neg_elbo``); losses (S, 3) float64. ``flag`` (1,) int64 starts at −1 and receives
    b the first time recon + kl is not finite, so one small read tells whether any step failed.
    """
    k = fused("record_losses", losses)
    if k is not None:
        return k(recon, kl, losses, bi, flag)
    b = int(bi[0])
    ne = recon + kl
    losses[b, 0], losses[b, 1], losses[b, 2] = ne, recon, kl
    if not np.isfinite(ne) and flag[0] < 0:
        flag[0] = b
    bi[0] = b + 1
