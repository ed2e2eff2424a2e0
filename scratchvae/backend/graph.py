"""Capture of a step callable as a CUDA graph, and the two device-side reads a captured step needs.

A small VAE step is ~30 kernels of a few microseconds each; on a modern GPU the host time to
launch them one by one (CuPy: ~10-20 µs each) is the step time. :class:`StepGraphs` runs a
step function eagerly once per *key* (a batch shape), captures it into a CUDA graph, and from
then on replays the whole step with one ``cudaGraphLaunch``. On NumPy, or with capture turned
off, it simply calls the function every time, so the same step code (and its tests) runs
everywhere.

What makes a function capturable (CuPy's own limits: no host copies in a capture, and graphs
keep raw pointers that CuPy's memory pool does not know about, cupy/cupy#6290 and #9655):

* no host <-> device copies and no host syncs inside: every per-step value (the batch index,
  the optimizer's coefficients, β, the RNG counters) lives in device memory, and kernels read
  it there (:func:`gather_rows`, :func:`load_row` below);
* matrix products through :mod:`scratchvae.backend.cublas` (CuPy refuses cuBLAS in capture);
* buffers that outlive the graph: temporaries made while capturing come from a **private
  memory pool** kept by the :class:`StepGraphs` object and used for nothing else, so no later
  allocation outside it can be handed a block that a replay writes. The eager warm-up runs
  under that pool too, so the capture finds its blocks cached and calls no ``cudaMalloc``;
  what the captured call returns is kept alive with its graph;
* a stream of its own (capture is impossible on the legacy default stream). It is a
  *blocking* stream, so work queued on CuPy's default stream (evaluation, checkpoint copies)
  is ordered with the replays without explicit events.
"""

from __future__ import annotations

import contextlib

import numpy as np

from . import fused


class StepGraphs:
    """One CUDA graph per key, each captured from ``fn`` after one eager run.

    ``run(key, fn)``: with capture on (CuPy, ``capture=True``) the first call for ``key`` runs
    ``fn()`` eagerly (a real step: kernels compile, buffers allocate) and then captures ``fn``
    (capturing executes nothing); later calls replay the graph. Otherwise ``run`` calls ``fn``.

    If a capture fails, the reason is kept in ``failed`` and every later ``run`` calls ``fn``
    eagerly (the same device-side step, one kernel launch at a time). Only ``Exception`` is
    caught: an interrupt during a capture ends the capture and propagates.
    """

    def __init__(self, backend, capture=True):
        self.backend = backend
        self.enabled = bool(capture) and backend.can_capture
        self.failed = None
        self._graphs = {}
        self._kept = {}
        if self.enabled:
            cp = backend.xp
            self.stream = cp.cuda.Stream()          # blocking: ordered with the default stream
            self.pool = cp.cuda.MemoryPool()        # graph-owned memory; never used elsewhere

    def __len__(self):
        return len(self._graphs)

    @contextlib.contextmanager
    def context(self):
        """The graphs' stream and private memory pool as the current ones (a no-op when off)."""
        if not self.enabled:
            yield
            return
        with self.stream, self.backend.xp.cuda.using_allocator(self.pool.malloc):
            yield

    def run(self, key, fn):
        """Replay the graph of ``key``; capture it first if there is none (see the class)."""
        g = self._graphs.get(key) if self.failed is None else None
        if g is not None:
            g.launch(self.stream)
            return self._kept[key]
        with self.context():
            out = fn()                                # eager: the warm-up, or every step when off
            if self.enabled and self.failed is None:
                self._capture(key, fn)
        return out

    def _capture(self, key, fn):
        self.stream.begin_capture()
        done = False
        try:
            kept = fn()
            graph = self.stream.end_capture()
            done = True
        except Exception as err:
            self.failed = f"{type(err).__name__}: {err}"
        finally:
            if not done:
                with contextlib.suppress(Exception):
                    self.stream.end_capture()
        if done:
            self._graphs[key] = graph
            self._kept[key] = kept


# -- device-side reads (NumPy bodies; CuPy kernels of the same names) ----------------------------
@fused("gather_rows")
def gather_rows(src, perm, bi, batch, out):
    """out[r] = src[perm[bi·batch + r]] for r < len(out), with bi = ``bi[0]`` read on the device.

    src (n, D); perm (n,) int64; bi (1,) int64; out (nb, D). NumPy: ``numpy.take``, in place.
    """
    start = int(bi[0]) * batch
    # mode="clip": the indices are a permutation's, always valid; NumPy's default "raise"
    # buffers the whole output in a temporary before writing ``out``
    np.take(src, perm[start:start + out.shape[0]], axis=0, out=out, mode="clip")
    return out


@fused("load_row")
def load_row(table, bi, out):
    """out = table[bi[0]] (a row of a per-step schedule, chosen on the device); table (S, w)."""
    out[...] = table[int(bi[0])]
    return out
