"""A thin ctypes binding to cuBLAS: the matrix products of the CuPy backend, capturable.

Why not ``cupy.matmul``: CuPy refuses every cuBLAS call while a stream is being captured
into a CUDA graph (``cupy_backends/cuda/libs/cublas.pyx`` raises from its stream setter;
cupy/cupy#6290), although cuBLAS itself supports capture. This module calls libcublas
directly (the same library CuPy loaded) through its own handle, on CuPy's current stream,
so the eager step and the captured step run the very same GEMM path.

The handle is set up once per device:
* ``cublasSetMathMode(CUBLAS_DEFAULT_MATH)``: an FP32 product is true FP32 (no TF32 tensor
  cores) whatever the process's environment says (``CUPY_TF32`` is CuPy's own switch and does
  not reach this handle): a model asks for TF32 itself, through its precision.
* ``cublasSetWorkspace_v2`` with a preallocated 32 MiB buffer (NVIDIA's advice for Hopper),
  so cuBLAS allocates nothing during capture; the buffer lives as long as the process.

The precision travels with each call (so two models of different precisions share the handle,
and nothing about the handle changes during a capture):

=========  ===============================  ===============================================
precision  operands -> output               call
=========  ===============================  ===============================================
``fp32``   float32 (or float64) -> same     ``cublasSgemm_v2`` (``cublasDgemm_v2``)
``tf32``   float32 -> float32               ``cublasGemmEx``, ``CUBLAS_COMPUTE_32F_FAST_TF32``:
                                            TF32 tensor cores, FP32 accumulation
``bf16``   bfloat16 words (uint16) ->       ``cublasGemmEx``, A/B ``CUDA_R_16BF``, C
           float32                          ``CUDA_R_32F``, ``CUBLAS_COMPUTE_32F``: BF16
                                            tensor cores, FP32 accumulation and output
=========  ===============================  ===============================================

Row-major products use the transpose identity: C = A B (row-major) is Cᵀ = Bᵀ Aᵀ in
cuBLAS's column-major view, and a row-major array *is* its transpose in column-major. A
transposed view (``x.T``) is passed as ``CUBLAS_OP_T`` on the original memory, never copied.
``out`` must not overlap ``a`` or ``b`` (cuBLAS would read what it is writing).
"""

from __future__ import annotations

import ctypes
import glob
import os

import numpy as np

from ..errors import BackendError, InputError

OP_N, OP_T = 0, 1
DEFAULT_MATH = 0                                 # cublasMath_t
CUDA_R_32F, CUDA_R_16BF = 0, 14                  # cudaDataType_t (library_types.h)
COMPUTE_32F, COMPUTE_32F_FAST_TF32 = 68, 77      # cublasComputeType_t
GEMM_DEFAULT = -1                                # cublasGemmAlgo_t
REDUCED = {"tf32": (np.dtype(np.float32), CUDA_R_32F, COMPUTE_32F_FAST_TF32),
           "bf16": (np.dtype(np.uint16), CUDA_R_16BF, COMPUTE_32F)}
"""precision -> (the operands' dtype, their cudaDataType, the compute type) of the GemmEx
products; the output is float32 (``CUDA_R_32F``) for both."""
WORKSPACE_BYTES = 32 << 20
_LIB = None


def _loaded_path(stem):
    """The path of an already loaded shared library whose name starts with ``stem``."""
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                path = line.rstrip("\n").split(" ")[-1]
                if os.path.basename(path).startswith(stem + ".so"):
                    return path
    except OSError:
        pass
    return None


def load_libcublas(cupy):
    """The libcublas CuPy uses (or, failing that, the first one found), as a ctypes CDLL."""
    global _LIB
    if _LIB is not None:
        return _LIB
    tried = []
    try:  # make CuPy load its cuBLAS, then open the very same file
        cupy.cuda.device.get_cublas_handle()
    except Exception as err:  # pragma: no cover - depends on the installation
        tried.append(f"cupy's cuBLAS handle ({type(err).__name__}: {err})")
    candidates = [_loaded_path("libcublas")]
    try:
        from cuda.pathfinder import load_nvidia_dynamic_lib

        candidates.append(load_nvidia_dynamic_lib("cublas").abs_path)
    except Exception:
        pass
    candidates += ["libcublas.so.13", "libcublas.so.12", "libcublas.so.11", "libcublas.so"]
    for root in {os.path.dirname(os.path.dirname(cupy.__file__))}:
        candidates += sorted(glob.glob(os.path.join(root, "nvidia", "*", "lib", "libcublas.so*")))
        candidates += sorted(glob.glob(os.path.join(root, "nvidia", "cublas", "lib", "libcublas.so*")))
    candidates += sorted(glob.glob("/usr/local/cuda*/lib64/libcublas.so*"))
    for c in candidates:
        if not c:
            continue
        try:
            _LIB = ctypes.CDLL(c)
            _LIB.cublasSgemm_v2  # noqa: B018 - the symbol must be there
            return _LIB
        except (OSError, AttributeError) as err:
            tried.append(f"{c} ({err})")
            _LIB = None
    raise BackendError("could not load libcublas for the capturable GEMM path; tried: " + "; ".join(tried))


def _signatures(lib):
    vp, i, p = ctypes.c_void_p, ctypes.c_int, ctypes.POINTER
    lib.cublasCreate_v2.argtypes = [p(vp)]
    lib.cublasSetStream_v2.argtypes = [vp, vp]
    lib.cublasSetMathMode.argtypes = [vp, i]
    lib.cublasSetWorkspace_v2.argtypes = [vp, vp, ctypes.c_size_t]
    for name in ("cublasSgemm_v2", "cublasDgemm_v2"):
        getattr(lib, name).argtypes = [vp, i, i, i, i, i, vp, vp, i, vp, i, vp, vp, i]
    # handle, transa, transb, m, n, k, alpha, A, Atype, lda, B, Btype, ldb, beta, C, Ctype, ldc,
    # computeType, algo
    lib.cublasGemmEx.argtypes = [vp, i, i, i, i, i, vp, vp, i, i, vp, i, i, vp, vp, i, i, i, i]
    for name in ("cublasCreate_v2", "cublasSetStream_v2", "cublasSetMathMode", "cublasSetWorkspace_v2",
                 "cublasSgemm_v2", "cublasDgemm_v2", "cublasGemmEx"):
        getattr(lib, name).restype = ctypes.c_int


def _check(status, what):
    if status != 0:
        raise BackendError(f"cuBLAS {what} failed with status {status}")


def _check_reduced(a, b, precision):
    """Refuse operands a reduced-precision product cannot take."""
    if precision not in REDUCED:
        raise InputError(f"matmul: precision must be fp32, {' or '.join(REDUCED)}, got {precision!r}")
    want = REDUCED[precision][0]
    if a.ndim != 2 or b.ndim != 2 or a.dtype != want or b.dtype != want:
        what = "bfloat16 words (uint16)" if precision == "bf16" else "float32"
        raise InputError(f"matmul: precision {precision} takes 2-D {what} operands, got {a.dtype} "
                         f"{tuple(a.shape)} and {b.dtype} {tuple(b.shape)}")


def _operand(a):
    """(op, ld) of a 2-D array for the column-major call, or None if it needs a copy.

    Row-major (unit column stride): op N, ld = row stride. Column-major (a transposed view,
    unit row stride): op T, ld = column stride.
    """
    s = a.itemsize
    r, c = a.shape
    s0, s1 = a.strides
    if (s1 == s or c == 1) and s0 % s == 0 and s0 >= max(c, 1) * s:
        return OP_N, s0 // s
    if (s0 == s or r == 1) and s1 % s == 0 and s1 >= max(r, 1) * s:
        return OP_T, s1 // s
    return None


class Cublas:
    """GEMMs on CuPy arrays through one cuBLAS handle per device, on CuPy's current stream.

    ``lib``: the libcublas to call (default: the one CuPy loaded); the tests pass a host stub
    with the same entry points.
    """

    def __init__(self, cupy, lib=None):
        self.cp = cupy
        self.lib = lib if lib is not None else load_libcublas(cupy)
        _signatures(self.lib)
        self._handles = {}     # device id -> [handle, workspace, last stream]
        self._ones = {}        # dtype -> ones vector (never freed: graphs may hold it)
        self._keep = []
        self._one = {np.dtype(np.float32): ctypes.c_float(1.0), np.dtype(np.float64): ctypes.c_double(1.0)}
        self._zero = {np.dtype(np.float32): ctypes.c_float(0.0), np.dtype(np.float64): ctypes.c_double(0.0)}
        self._gemm = {np.dtype(np.float32): self.lib.cublasSgemm_v2,
                      np.dtype(np.float64): self.lib.cublasDgemm_v2}

    def handle(self):
        """This device's handle, bound to CuPy's current stream."""
        dev = self.cp.cuda.runtime.getDevice()
        h = self._handles.get(dev)
        if h is None:
            handle = ctypes.c_void_p()
            _check(self.lib.cublasCreate_v2(ctypes.byref(handle)), "cublasCreate")
            _check(self.lib.cublasSetMathMode(handle, DEFAULT_MATH), "cublasSetMathMode")
            ws = self.cp.empty(WORKSPACE_BYTES, dtype=np.uint8)
            _check(self.lib.cublasSetWorkspace_v2(handle, ws.data.ptr, WORKSPACE_BYTES), "cublasSetWorkspace")
            h = self._handles[dev] = [handle, ws, None]
        stream = self.cp.cuda.get_current_stream().ptr
        if stream != h[2]:
            _check(self.lib.cublasSetStream_v2(h[0], stream), "cublasSetStream")
            h[2] = stream
        return h[0]

    def matmul(self, a, b, out=None, precision="fp32"):
        """out = a @ b for 2-D CuPy arrays, in ``precision`` (see the module docstring).

        fp32: float32/float64 operands (anything else: ``cupy.matmul``); tf32: float32
        operands; bf16: uint16 operands (bfloat16 words); the output of tf32 and bf16 is float32.
        """
        cp = self.cp
        if precision == "fp32":
            if a.ndim != 2 or b.ndim != 2 or a.dtype != b.dtype or a.dtype not in self._gemm:
                return cp.matmul(a, b, out=out)
            dtype = a.dtype
        else:
            _check_reduced(a, b, precision)
            dtype = np.dtype(np.float32)
        M, K = a.shape
        K2, N = b.shape
        if K2 != K:
            raise InputError(f"matmul: shapes {tuple(a.shape)} and {tuple(b.shape)} do not align")
        if out is None:
            out = c = cp.empty((M, N), dtype=dtype)
        else:
            if tuple(out.shape) != (M, N) or out.dtype != dtype:
                raise InputError(f"matmul: out must be {dtype} of shape {(M, N)}, "
                                 f"got {out.dtype} {tuple(out.shape)}")
            c = out if out.flags.c_contiguous else cp.empty((M, N), dtype=dtype)
        if M and N:
            if K == 0:
                c.fill(0)
            else:
                self._gemm_rm(a, b, c, M, N, K, precision)
        if c is not out:
            out[...] = c
        return out

    def _gemm_rm(self, a, b, c, M, N, K, precision="fp32"):
        """Row-major c (M, N) = a (M, K) @ b (K, N): column-major cᵀ = bᵀ aᵀ."""
        oa, ob = _operand(a), _operand(b)
        if oa is None:
            a = self.cp.ascontiguousarray(a)
            oa = (OP_N, K)
        if ob is None:
            b = self.cp.ascontiguousarray(b)
            ob = (OP_N, N)
        if precision == "fp32":
            dt = a.dtype
            status = self._gemm[dt](self.handle(), ob[0], oa[0], N, M, K, ctypes.addressof(self._one[dt]),
                                    b.data.ptr, ob[1], a.data.ptr, oa[1], ctypes.addressof(self._zero[dt]),
                                    c.data.ptr, N)
            _check(status, "gemm")
            return
        _, kind, compute = REDUCED[precision]
        f32 = np.dtype(np.float32)
        status = self.lib.cublasGemmEx(self.handle(), ob[0], oa[0], N, M, K, ctypes.addressof(self._one[f32]),
                                       b.data.ptr, kind, ob[1], a.data.ptr, kind, oa[1],
                                       ctypes.addressof(self._zero[f32]), c.data.ptr, CUDA_R_32F, N,
                                       compute, GEMM_DEFAULT)
        _check(status, f"GemmEx ({precision})")

    def ones(self, n, dtype):
        v = self._ones.get(dtype)
        if v is None or v.size < n:
            v = self.cp.ones(max(n, 1024), dtype=dtype)
            self._keep.append(v)    # an older, smaller one may be referenced by a captured graph
            self._ones[dtype] = v
        return v[:n]

    def sum_rows(self, a, out=None):
        """Σ_n a[n, :] -> (O,) as the product ones(1, N) @ a (a deterministic cuBLAS GEMM)."""
        if a.ndim != 2 or a.dtype not in self._gemm:
            return self.cp.sum(a, axis=0, out=out)
        N, O = a.shape
        if out is None:
            out = self.cp.empty(O, dtype=a.dtype)
        if not out.flags.c_contiguous or out.shape != (O,) or out.dtype != a.dtype:
            return self.cp.sum(a, axis=0, out=out)
        self.matmul(self.ones(N, a.dtype).reshape(1, N), a, out.reshape(1, O))
        return out
