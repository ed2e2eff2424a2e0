"""Array backends: NumPy (default) or CuPy, chosen once and bound to a model.

Model code is written once against a :class:`Backend`. ``backend.xp`` is the array module
(``numpy`` or ``cupy``); everything else in scratchvae reaches the GPU only through here.
This package is the only place that imports CuPy, and it does so lazily: ``import
scratchvae`` works with NumPy alone.

Host/device transfers happen only at explicit boundaries: :meth:`Backend.asarray`
(host -> backend) and :meth:`Backend.to_host` (backend -> host NumPy). Mixing arrays of
two backends is an error (:class:`~scratchvae.errors.BackendError`), never a silent copy.

The fused-block seam
--------------------
Each elementwise block that sits between two matrix products (bias + activation, the
activation's backward, reparameterize + KL gradient, sigmoid - x, the Adam update) is one
function in :mod:`scratchvae.ops` / :mod:`scratchvae.optim`. Its body is the readable NumPy
implementation (and the one the CPU runs); on a backend that provides a fused kernel of
the same name (:meth:`Backend.kernel`), the function hands the whole block to that kernel
instead. Tests compare every kernel with its NumPy twin.
"""

from __future__ import annotations

import functools
import os

import numpy as np

from ..errors import BackendError, InputError

BACKENDS = ("numpy", "cupy", "auto")


class Backend:
    """One array backend. Use :func:`get_backend` rather than constructing it."""

    name = "numpy"

    def __init__(self):
        self.xp = np

    # -- creation and transfers -------------------------------------------------
    def empty(self, shape, dtype):
        return self.xp.empty(shape, dtype=dtype)

    def zeros(self, shape, dtype):
        return self.xp.zeros(shape, dtype=dtype)

    def asarray(self, a, dtype=None):
        """Host -> backend transfer (an explicit boundary). NumPy: no copy if possible."""
        return np.asarray(a, dtype=dtype)

    def to_host(self, a):
        """Backend -> host NumPy array (a sync on a GPU: use at logging/checkpoint boundaries)."""
        return np.asarray(a)

    def owns(self, a) -> bool:
        """True if ``a`` is an array of this backend."""
        return isinstance(a, np.ndarray)

    def check(self, what: str, a):
        """Raise BackendError unless ``a`` is an array of this backend."""
        if not self.owns(a):
            got = _describe_array_type(a)
            raise BackendError(
                f"{what} must be a {self.name} array (the model's backend), got {got}; "
                f"convert explicitly with backend.asarray(...) or backend.to_host(...)"
            )

    def synchronize(self):
        """Wait for queued device work (no-op on NumPy)."""

    def kernel(self, name: str):
        """The fused kernel called ``name``, or None (NumPy: always None)."""
        return None

    def __repr__(self):
        return f"<scratchvae backend {self.name}>"


class CupyBackend(Backend):
    """The CuPy backend. Construct through :func:`get_backend("cupy")`."""

    name = "cupy"

    def __init__(self, cupy):
        self.xp = cupy
        self._kernels = None

    def asarray(self, a, dtype=None):
        if isinstance(a, np.ndarray) or np.isscalar(a):
            return self.xp.asarray(a, dtype=dtype)
        if isinstance(a, self.xp.ndarray):
            return a if dtype is None else a.astype(dtype, copy=False)
        return self.xp.asarray(np.asarray(a), dtype=dtype)

    def to_host(self, a):
        if isinstance(a, self.xp.ndarray):
            return self.xp.asnumpy(a)
        return np.asarray(a)

    def owns(self, a) -> bool:
        return isinstance(a, self.xp.ndarray)

    def synchronize(self):
        self.xp.cuda.get_current_stream().synchronize()

    def kernel(self, name: str):
        if self._kernels is None:
            from . import _cupy_kernels

            self._kernels = _cupy_kernels.Kernels(self.xp)
        return self._kernels.get(name)


def _describe_array_type(a) -> str:
    t = type(a)
    return f"{t.__module__}.{t.__qualname__}"


def cupy_usable() -> bool:
    """True if CuPy imports and sees at least one working CUDA device."""
    try:
        import cupy
    except Exception:
        return False
    try:
        if cupy.cuda.runtime.getDeviceCount() < 1:
            return False
        cupy.arange(2).sum().item()
    except Exception:
        return False
    return True


@functools.lru_cache(maxsize=None)
def _cupy_backend():
    try:
        import cupy
    except ImportError as e:
        raise BackendError(
            "backend 'cupy' needs CuPy: install the 'gpu' extra (pip install 'scratchvae[gpu]')"
        ) from e
    if not cupy_usable():
        raise BackendError("backend 'cupy' was asked for, but CuPy sees no usable CUDA GPU")
    return CupyBackend(cupy)


_NUMPY = Backend()


def get_backend(name: "str | Backend | None" = None) -> Backend:
    """The backend called ``name``: 'numpy' (default), 'cupy', or 'auto'.

    'auto' is CuPy when a usable GPU is present, else NumPy. ``None`` reads the
    environment variable ``SCRATCHVAE_BACKEND`` (default 'numpy').
    """
    if isinstance(name, Backend):
        return name
    if name is None:
        name = os.environ.get("SCRATCHVAE_BACKEND", "numpy")
    if name == "numpy":
        return _NUMPY
    if name == "cupy":
        return _cupy_backend()
    if name == "auto":
        return _cupy_backend() if cupy_usable() else _NUMPY
    raise InputError(f"backend must be one of {', '.join(BACKENDS)}, got {name!r}")


def backend_of(a) -> Backend:
    """The backend an array belongs to (NumPy arrays -> numpy; CuPy arrays -> cupy)."""
    if isinstance(a, np.ndarray):
        return _NUMPY
    if type(a).__module__.startswith("cupy"):
        return _cupy_backend()
    raise BackendError(f"expected a numpy or cupy array, got {_describe_array_type(a)}")


def available_backends() -> list[str]:
    """Names of the backends usable on this machine ('numpy', and 'cupy' with a GPU)."""
    return ["numpy"] + (["cupy"] if cupy_usable() else [])


def fused(name, a):
    """The fused kernel ``name`` of the backend owning ``a``, or None to run the NumPy body.

    NumPy arrays always run the readable NumPy body of an op (see the module docstring).
    """
    if isinstance(a, np.ndarray):
        return None
    return backend_of(a).kernel(name)


def xp_of(a):
    """The array module of ``a`` (numpy or cupy) without importing cupy for numpy arrays."""
    if isinstance(a, np.ndarray):
        return np
    return backend_of(a).xp
