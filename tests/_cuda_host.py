"""Run scratchvae's CUDA kernels on the host: a test harness for machines without a GPU.

The CUDA sources (``philox.PHILOX_CUDA_SRC``, ``_cupy_kernels.CUDA_SRC``) are compiled as C++20
by the host compiler behind a small prelude that defines what CUDA would: ``threadIdx`` and
``blockIdx`` are thread-local, ``blockDim``/``gridDim`` are set per launch, ``__shared__``
arrays are statics (blocks run one after another), and ``__syncthreads()`` is a
``std::barrier`` over the block's threads. A launch runs each block's ``blockDim.x`` threads
as real OS threads (ctypes releases the GIL during the call), so block reductions behave as
on a GPU, in the same fixed order.

``HostCupy`` is the sliver of the ``cupy`` namespace that :class:`~scratchvae.backend.
_cupy_kernels.Kernels` and the Philox kernels use (``RawModule``, ``RawKernel``, ``empty``,
...), over NumPy arrays, so the real Python launch code runs unchanged.

What this checks and what it cannot: the kernels' indexing, launch geometry, reductions and
arithmetic order (``-ffp-contract=off`` is ``--fmad=false``; ``+ - * /`` and ``sqrt`` round
as on the GPU). It does not check CUDA's own math library (host libm stands in for
libdevice), float32 flush-to-zero, timing, or anything about graphs and cuBLAS: those need
the device tests (``tests/test_cupy.py``, ``tests/test_gpu_graph.py``).
"""

from __future__ import annotations

import ctypes
import hashlib
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

PRELUDE = r"""
#include <math.h>
#include <barrier>
struct host_uint3 { unsigned int x, y, z; };
static thread_local host_uint3 threadIdx, blockIdx;
static host_uint3 blockDim, gridDim;
static std::barrier<>* host_block_barrier = nullptr;
#define __device__
#define __forceinline__ inline
#define __global__
#define __shared__ static
static inline void __syncthreads() { host_block_barrier->arrive_and_wait(); }
static inline unsigned int __umulhi(unsigned int a, unsigned int b) {
    return (unsigned int)(((unsigned long long)a * b) >> 32);
}
extern "C" void host_launch(unsigned int grid, unsigned int block) {
    gridDim = {grid, 1, 1};
    blockDim = {block, 1, 1};
    delete host_block_barrier;
    host_block_barrier = new std::barrier<>(block);
}
extern "C" void host_thread(unsigned int block, unsigned int thread) {
    blockIdx = {block, 0, 0};
    threadIdx = {thread, 0, 0};
}
#line 1 "cuda_source"
"""

MAX_THREADS = 1024
_CTYPES = {np.dtype(np.float32): ctypes.c_float, np.dtype(np.float64): ctypes.c_double,
           np.dtype(np.int32): ctypes.c_int32, np.dtype(np.int64): ctypes.c_int64,
           np.dtype(np.uint32): ctypes.c_uint32, np.dtype(np.uint64): ctypes.c_uint64}
_modules: dict = {}
_pool = None


def compiler():
    """The host C++ compiler, or None."""
    return shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")


def _compile(code: str) -> ctypes.CDLL:
    key = hashlib.sha256(code.encode()).hexdigest()[:16]
    lib = _modules.get(key)
    if lib is None:
        d = Path(tempfile.mkdtemp(prefix="scratchvae-cuda-host-"))
        src, so = d / "module.cpp", d / "module.so"
        src.write_text(PRELUDE + code)
        cmd = [compiler(), "-std=c++20", "-O1", "-ffp-contract=off", "-fno-fast-math", "-pthread",
               "-shared", "-fPIC", "-o", str(so), str(src)]
        run = subprocess.run(cmd, capture_output=True, text=True)
        if run.returncode:
            raise RuntimeError(f"host compile of the CUDA source failed:\n{run.stderr[-4000:]}")
        lib = _modules[key] = ctypes.CDLL(str(so))
    return lib


def _carg(a):
    if isinstance(a, np.ndarray):
        return ctypes.c_void_p(a.ctypes.data)
    if isinstance(a, np.generic) and a.dtype in _CTYPES:
        return _CTYPES[a.dtype](a.item())
    raise TypeError(f"kernel arguments must be NumPy arrays or NumPy scalars, got {type(a)}")


class HostKernel:
    """One ``extern "C" __global__`` function, launched as ``kernel(grid, block, args)``."""

    def __init__(self, lib, name):
        self.lib, self.name = lib, name
        self.fn = getattr(lib, name)
        self.fn.restype = None

    def __call__(self, grid, block, args):
        global _pool
        (g,), (b,) = tuple(grid), tuple(block)
        if not (1 <= b <= MAX_THREADS and g >= 1):
            raise ValueError(f"{self.name}: bad launch grid={grid} block={block}")
        cargs = [_carg(a) for a in args]
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=MAX_THREADS)
        self.lib.host_launch(g, b)

        def thread(bx, tx):
            self.lib.host_thread(bx, tx)
            self.fn(*cargs)

        for bx in range(g):   # blocks in turn; a block's threads at once (for __syncthreads)
            for f in [_pool.submit(thread, bx, tx) for tx in range(b)]:
                f.result()


class HostModule:
    def __init__(self, code, options=()):
        if "--fmad=false" not in options:
            raise ValueError("the CUDA sources are compiled with --fmad=false; so is the host copy")
        self.lib = _compile(code)

    def get_function(self, name):
        return HostKernel(self.lib, name)


class HostCupy:
    """What the kernel launchers use of ``cupy``, over NumPy arrays."""

    ndarray = np.ndarray
    empty = staticmethod(np.empty)
    empty_like = staticmethod(np.empty_like)
    ascontiguousarray = staticmethod(np.ascontiguousarray)
    broadcast_to = staticmethod(np.broadcast_to)

    @staticmethod
    def RawModule(code, options=()):
        return HostModule(code, options)

    @staticmethod
    def RawKernel(code, name, options=()):
        return HostModule(code, options).get_function(name)


def host_kernels():
    """``_cupy_kernels.Kernels`` over :class:`HostCupy` (the module's CUDA kernels compiled for
    the host), or a pytest skip naming why this machine cannot build them."""
    import pytest

    from scratchvae.backend import _cupy_kernels, body_of

    if compiler() is None:
        pytest.skip("no host C++ compiler")
    try:
        _compile("int host_probe() { return 0; }")
    except RuntimeError as e:
        pytest.skip(f"the host compiler has no C++20 <barrier>: {str(e)[-200:]}")
    return _cupy_kernels.Kernels(HostCupy(), body_of)


def box_muller_edges(n_random, seed=0):
    """(u1, u2) float64 pairs for Box–Muller bit-for-bit tests: u at 2**-53 and 1 − 2**-53, both
    sides of the √½ split, every quarter turn and the half-way points where rint rounds to
    even (all pairs of them), then ``n_random`` random odd multiples of 2**-53."""
    from scratchvae.backend import philox

    edges = [2.0**-53, 3 * 2.0**-53, 0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875,
             1 - 2.0**-53, philox.SQRT_HALF, np.nextafter(philox.SQRT_HALF, 0), 1 / 3]
    u1, u2 = (np.array(v) for v in zip(*[(a, b) for a in edges for b in edges]))
    r = np.random.default_rng(seed)
    u1 = np.concatenate([u1, (r.integers(0, 2**52, n_random) * 2 + 1) * 2.0**-53])
    u2 = np.concatenate([u2, (r.integers(0, 2**52, n_random) * 2 + 1) * 2.0**-53])
    return u1, u2
