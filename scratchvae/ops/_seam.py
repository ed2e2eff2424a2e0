"""Where an op hands its whole elementwise block to a backend's fused kernel.

NumPy arrays always run the readable NumPy body of the op; for any other array type the
owning backend is asked for a kernel of the same name (see :mod:`scratchvae.backend`).
The lookup lives in the backend (the floor below); the ops import it from here.
"""

from ..backend import fused, xp_of  # noqa: F401
