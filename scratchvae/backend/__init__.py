"""Array backends: NumPy (default) or CuPy, chosen once and bound to a model.

Model code is written once against a :class:`Backend`. ``backend.xp`` is the array module
(``numpy`` or ``cupy``); everything else in scratchvae reaches the GPU only through here.
This package is the only place that imports CuPy, and it does so lazily: ``import
scratchvae`` works with NumPy alone. It imports nothing of scratchvae but :mod:`~scratchvae.errors`.

Host/device transfers happen only at explicit boundaries: :meth:`Backend.asarray`
(host -> backend), :meth:`Backend.to_host` (backend -> host NumPy) and :meth:`Backend.upload`
(host -> an existing buffer, in place). Mixing arrays of two backends is an error
(:class:`~scratchvae.errors.BackendError`), never a silent copy. "Which backend owns this
array?" has one answer, :func:`backend_of`.

The fused-block seam
--------------------
Each elementwise block that sits between two matrix products (bias + activation, the
activation's backward, reparameterize + KL, the Bernoulli loss and its gradient, the Adam
update, ...) is one function decorated with :func:`fused`, which declares the name of its
kernel. Its body is the readable NumPy implementation (and the one the CPU runs). For an
array of another backend the call goes to that backend's kernel of the declared name, which
must exist: a CuPy array reaching a block without its kernel raises :class:`BackendError`
rather than running the NumPy body (correct, but slow, allocating and unsafe in a CUDA-graph
capture). :data:`DECLARED` lists every declared kernel, so a test can check each exists and
takes its block's arguments.

On NumPy arrays a block runs its body, or, with Numba installed (the ``fast`` extra), the
block's Numba twin (``_numba_kernels.py``): the same computation in one pass, compiled on
first use and cached on disk, taking the block's arguments as a CUDA launcher does. The
environment variable ``SCRATCHVAE_NUMBA=0`` (read once, at the first block call) keeps the
bodies; :meth:`Backend.describe` records which ran.
"""

from __future__ import annotations

import functools
import inspect
import os

import numpy as np

from ..errors import BackendError, InputError

BACKENDS = ("numpy", "cupy", "auto")

DECLARED: dict = {}
"""kernel name -> the fused block (the decorated function) that declared it."""


def body_of(name: str):
    """The NumPy body of the block declared under kernel ``name``: what a backend's kernel table
    runs where it has no kernel of its own for part of its blocks (the Numba twins' fallback, a
    CuPy launcher made of the body's own operations)."""
    return DECLARED[name].body


class Backend:
    """One array backend. Use :func:`get_backend` rather than constructing it."""

    name = "numpy"
    can_capture = False      # CUDA-graph capture of a step (CuPy only)
    precisions = ("fp32",)   # what its matrix products compute in (see ops.precision)

    def __init__(self):
        self.xp = np
        self._twins = None       # the Numba twins, resolved at the first kernel() call
        self.blas_threads = None  # the threads numpy's BLAS was set to, where one said (comm)

    # -- transfers ----------------------------------------------------------------------------
    def asarray(self, a, dtype=None):
        """Host -> backend transfer (an explicit boundary). NumPy: no copy if possible."""
        return np.asarray(a, dtype=dtype)

    def to_host(self, a):
        """Backend -> host NumPy array (a sync on a GPU: use at logging/checkpoint boundaries)."""
        return np.asarray(a)

    def upload(self, dst, host):
        """Write host values into the existing buffer ``dst`` in place (its address is kept,
        which is what a captured CUDA graph needs)."""
        dst[...] = host

    def copy(self, dst, src):
        """dst[...] = src between two arrays of this backend, queued on the current stream
        (asynchronous on a GPU)."""
        dst[...] = src

    # -- identity ------------------------------------------------------------------------------
    def owns(self, a) -> bool:
        """True if ``a`` is an array of this backend."""
        return isinstance(a, np.ndarray)

    def check(self, what: str, a):
        """Raise BackendError unless ``a`` is an array of this backend."""
        if not self.owns(a):
            raise BackendError(
                f"{what} must be a {self.name} array (the model's backend), got {describe_type(a)}; "
                f"convert explicitly with backend.asarray(...) or backend.to_host(...)"
            )

    def describe(self) -> dict:
        """What a run records about where it ran (JSON-able): the backend, and on NumPy whether
        the fused blocks run their Numba twins (``fast_path``) or the NumPy bodies, and why."""
        twins = self.twins()
        on = {"numba": twins.version} if twins else {"fast_path_off": twins.why}
        return {"backend": self.name, "fast_path": bool(twins), **on}

    def synchronize(self):
        """Wait for queued device work (no-op on NumPy)."""

    def kernel(self, name: str):
        """The kernel ``name`` of this backend, or None. NumPy: the Numba twin of that name,
        where the ``fast`` extra is installed and not switched off; else None (the body runs)."""
        twins = self._twins
        return (self.twins() if twins is None else twins).get(name)

    def set_blas_threads(self, n):
        """Record the threads numpy's BLAS was set to (``scratchvae.comm.limit_threads`` does,
        after setting them; None forgets). The twins read it to choose a path
        (:func:`scratchvae.ops.dense.data_matmul`); without it they go by the environment."""
        self.blas_threads = n

    def twins(self):
        """The NumPy backend's Numba twins: a table (``get(name)``, ``version``),
        empty (false, with ``why``) when Numba does not import or ``SCRATCHVAE_NUMBA=0``."""
        if self._twins is None:
            self._twins = _numba_twins()
        return self._twins

    def __repr__(self):
        return f"<scratchvae backend {self.name}>"


class CupyBackend(Backend):
    """The CuPy backend. Construct through :func:`get_backend("cupy")`."""

    name = "cupy"
    can_capture = True
    precisions = ("fp32", "tf32", "bf16")

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

    def upload(self, dst, host):
        dst.set(np.ascontiguousarray(host, dtype=dst.dtype))

    def copy(self, dst, src):
        if dst.shape != src.shape or dst.dtype != src.dtype or not (
                dst.flags.c_contiguous and src.flags.c_contiguous):
            dst[...] = src
            return
        dst.data.copy_from_device_async(src.data, src.nbytes, stream=self.xp.cuda.get_current_stream())

    def owns(self, a) -> bool:
        return isinstance(a, self.xp.ndarray)

    def describe(self) -> dict:
        info = {"backend": self.name, "cupy": self.xp.__version__}
        try:
            props = self.xp.cuda.runtime.getDeviceProperties(self.xp.cuda.Device().id)
            name = props["name"]
            info["gpu"] = name.decode() if isinstance(name, bytes) else str(name)
        except Exception as err:  # pragma: no cover - informational only
            info["gpu"] = f"unknown ({type(err).__name__}: {err})"
        return info

    def synchronize(self):
        self.xp.cuda.get_current_stream().synchronize()

    def kernel(self, name: str):
        if self._kernels is None:
            from . import _cupy_kernels

            self._kernels = _cupy_kernels.Kernels(self.xp, body_of)
        return self._kernels.get(name)


class _NoTwins(dict):
    """No Numba twins (an empty table), and why."""

    def __init__(self, why):
        super().__init__()
        self.why = why


def _numba_twins():
    """The Numba twins, or an empty table saying why there are none."""
    if os.environ.get("SCRATCHVAE_NUMBA", "1").strip() == "0":
        return _NoTwins("SCRATCHVAE_NUMBA=0")
    try:
        from . import _numba_kernels
    except ImportError as err:
        return _NoTwins(f"Numba does not import ({err}); install the 'fast' extra")
    return _numba_kernels.Twins(body_of, lambda: NUMPY.blas_threads)


def describe_type(a) -> str:
    t = type(a)
    return f"{t.__module__}.{t.__qualname__}"


def cupy_unusable_reason():
    """None if CuPy imports and runs a kernel on a CUDA device; else why not (a sentence)."""
    try:
        import cupy
    except Exception as err:
        return f"CuPy does not import ({type(err).__name__}: {err}); install the 'gpu' extra"
    try:
        if cupy.cuda.runtime.getDeviceCount() < 1:
            return "CuPy sees no CUDA device"
        cupy.arange(2).sum().item()
    except Exception as err:
        return f"CuPy cannot run on the GPU ({type(err).__name__}: {err})"
    return None


def cupy_usable() -> bool:
    """True if CuPy imports and sees at least one working CUDA device."""
    return _cupy_reason() is None


@functools.lru_cache(maxsize=None)
def _cupy_reason():
    return cupy_unusable_reason()


@functools.lru_cache(maxsize=None)
def _cupy_backend():
    why = _cupy_reason()
    if why is not None:
        raise BackendError(f"backend 'cupy' is not usable: {why}")
    import cupy

    return CupyBackend(cupy)


NUMPY = Backend()


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
        return NUMPY
    if name == "cupy":
        return _cupy_backend()
    if name == "auto":
        return _cupy_backend() if cupy_usable() else NUMPY
    raise InputError(f"backend must be one of {', '.join(BACKENDS)}, got {name!r}")


def backend_of(a) -> Backend:
    """The backend an array (or array module) belongs to: NumPy's -> numpy, CuPy's -> cupy."""
    if isinstance(a, np.ndarray) or a is np:
        return NUMPY
    module = getattr(a, "__name__", None) if inspect.ismodule(a) else type(a).__module__
    if module is not None and module.split(".")[0] == "cupy":
        return _cupy_backend()
    what = f"module {a.__name__}" if inspect.ismodule(a) else describe_type(a)
    raise BackendError(f"expected a numpy or cupy array or module, got {what}; xp must be the numpy or cupy module")


def available_backends() -> list[str]:
    """Names of the backends usable on this machine ('numpy', and 'cupy' with a GPU)."""
    return ["numpy"] + (["cupy"] if cupy_usable() else [])


def xp_of(a):
    """The array module of ``a`` (numpy or cupy) without importing cupy for numpy arrays."""
    if isinstance(a, np.ndarray):
        return np
    return backend_of(a).xp


def fused(kernel: str, on: str | None = None):
    """Declare a fused block: the decorated function's body is its NumPy form, ``kernel``
    the name of its kernel on other backends.

    ``on`` names the argument whose backend decides (default: the first parameter). NumPy
    arrays run the body (or a compiled CPU twin, if the NumPy backend has one under the same
    name); any other array goes to its backend's kernel ``kernel``, called with
    every argument of the block in its order (defaults filled in, so a constant such as the
    leaky-ReLU slope has its one home in the block's signature), or raises BackendError if
    that backend has none.
    """
    def declare(body):
        sig = inspect.signature(body)
        params = list(sig.parameters)
        where = params.index(on) if on is not None else 0
        if kernel in DECLARED:
            raise BackendError(f"kernel {kernel!r} is declared twice ({DECLARED[kernel].__qualname__}, "
                               f"{body.__qualname__})")

        defaults = {n: q.default for n, q in sig.parameters.items() if q.default is not q.empty}

        def call_kernel(k, *args, **kwargs):
            """Run the launcher ``k`` on every argument of the block, in the block's order,
            defaults filled in (the launcher's parameters are the block's)."""
            if len(args) > len(params) or not kwargs.keys() <= set(params[len(args):]):
                sig.bind(*args, **kwargs)            # raises the TypeError Python would
            try:
                rest = [kwargs[n] if n in kwargs else defaults[n] for n in params[len(args):]]
            except KeyError:
                sig.bind(*args, **kwargs)            # a required argument is missing: TypeError
                raise
            return k(*args, *rest)

        @functools.wraps(body)
        def block(*args, **kwargs):
            a = args[where] if len(args) > where else kwargs[params[where]]
            if isinstance(a, np.ndarray):
                k = NUMPY.kernel(kernel)          # a compiled CPU twin, where there is one
                return body(*args, **kwargs) if k is None else call_kernel(k, *args, **kwargs)
            b = backend_of(a)
            k = b.kernel(kernel)
            if k is None:
                raise BackendError(f"{body.__qualname__}: the {b.name} backend has no kernel "
                                   f"{kernel!r}; refusing to run the NumPy body on {b.name} arrays")
            return call_kernel(k, *args, **kwargs)

        block.kernel = kernel
        block.body = body
        block.call_kernel = call_kernel
        DECLARED[kernel] = block
        return block

    return declare
