"""Where an op hands its whole elementwise block to a backend's fused kernel.

NumPy arrays always run the readable NumPy body of the op; for any other array type the
owning backend is asked for a kernel of the same name (see :mod:`scratchvae.backend`).
"""

import numpy as np


def fused(name, a):
    """The fused kernel ``name`` of the backend owning ``a``, or None to run the NumPy body."""
    if isinstance(a, np.ndarray):
        return None
    from ..backend import backend_of

    return backend_of(a).kernel(name)


def xp_of(a):
    """The array module of ``a`` (numpy or cupy) without importing cupy for numpy arrays."""
    if isinstance(a, np.ndarray):
        return np
    from ..backend import backend_of

    return backend_of(a).xp
