"""What a training step allocates after its first call at a batch shape, and the one threshold.

The promise (``scratchvae.step``): after its first call at a batch shape a step allocates
nothing large. "Large" is held to one rule everywhere it is tested: at its peak, a warmed-up
step allocates **less than one (B, L) array of the model's dtype**, the smallest matrix of a
batch the step holds (10 KiB at batch 128, L = 20, float32). Any temporary with a batch
dimension (an (N, D), (K·N, L) or (N, L) array) exceeds it; what may remain are a few vectors of
D or K·N entries (the importance-weighted bound's per-row sums: smaller than (B, L) while K < L)
and Python's own objects.

NumPy's ufunc machinery allocates an iteration buffer of ``numpy.getbufsize()`` elements per
operand for a ufunc over strided views (the head's column slices, say) or with a cast, freed
when the call returns: 64 KiB per call at the default 8192 elements, the same at any batch
size (``test_numpy_buffers_do_not_grow_with_the_batch`` in ``test_engine_misc.py`` measures
that). The measurement holds it at 256 elements, so what remains is the step's own arrays.
"""

from __future__ import annotations

import tracemalloc

import numpy as np

BUFSIZE = 256
"""NumPy's ufunc buffer (elements per operand) while a step is measured (see the module)."""


def threshold(model, batch):
    """The rule: bytes of one (batch, L) array of the model's dtype."""
    return batch * model.latent * model.dtype.itemsize


def peak_bytes(run, bufsize=BUFSIZE):
    """Peak bytes allocated (and not yet freed) while ``run()`` runs, with NumPy's ufunc
    buffers held at ``bufsize`` elements per operand."""
    old = np.setbufsize(bufsize)
    tracemalloc.start()
    try:
        base, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        run()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        np.setbufsize(old)
    return peak - base
