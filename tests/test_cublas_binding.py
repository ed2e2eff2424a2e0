"""The ctypes cuBLAS binding (scratchvae/backend/cublas.py) against a host stub of libcublas.

The stub, compiled here with the host compiler, exports the entry points the binding calls
with cuBLAS's documented prototypes (cublas_api.h) and does what cuBLAS would, on host memory:
a column-major GEMM that honours transa/transb, m, n, k, the leading dimensions, the α and β
pointers and, for cublasGemmEx, the operand and output types (CUDA_R_32F, CUDA_R_16BF), and
records the last call. The binding runs unchanged over it (its argtypes, the row-major ->
column-major transpose identity, the status checks), with "device" arrays that are NumPy
arrays carrying a ``.data.ptr`` as CuPy's do. What this cannot check is cuBLAS itself: that the
GPU's TF32 and BF16 products are what the stub computes (tests/test_cupy.py does, on a GPU).
"""

import ctypes
import shutil
import subprocess
import types

import numpy as np
import pytest

from scratchvae import ops
from scratchvae.backend import _cupy_kernels, body_of, cublas
from scratchvae.errors import BackendError, InputError
from scratchvae.ops.bf16 import from_bf16, to_bf16

from _cuda_host import HostCupy, compiler

STUB = r"""
#include <stddef.h>
#include <stdint.h>
#include <string.h>
typedef int cublasStatus_t;
typedef void* cublasHandle_t;
enum { R_32F = 0, R_64F = 1, R_16BF = 14, COMPUTE_32F = 68, COMPUTE_32F_FAST_TF32 = 77, INVALID = 7 };

struct Call { int fn, transa, transb, m, n, k, lda, ldb, ldc, atype, btype, ctype, compute, algo; };
static Call last;
static int math_mode = -1, fail_with = 0;
static size_t workspace_bytes = 0;
static void* stream = 0;

static double load(const void* p, int type, long i) {
    if (type == R_32F) return ((const float*)p)[i];
    if (type == R_64F) return ((const double*)p)[i];
    uint32_t bits = (uint32_t)((const uint16_t*)p)[i] << 16;          /* R_16BF */
    float f; memcpy(&f, &bits, 4); return f;
}

/* C = alpha op(A) op(B) + beta C, column-major; beta == 0: C is not read (as cuBLAS). */
static void gemm(int ta, int tb, int m, int n, int k, double alpha, const void* A, int at, int lda,
                 const void* B, int bt, int ldb, double beta, void* C, int ct, int ldc) {
    for (int j = 0; j < n; ++j)
        for (int i = 0; i < m; ++i) {
            double acc = 0.0;
            for (int l = 0; l < k; ++l)
                acc += load(A, at, ta ? l + (long)i * lda : i + (long)l * lda)
                     * load(B, bt, tb ? j + (long)l * ldb : l + (long)j * ldb);
            double c = alpha * acc + (beta != 0.0 ? beta * load(C, ct, i + (long)j * ldc) : 0.0);
            if (ct == R_64F) ((double*)C)[i + (long)j * ldc] = c; else ((float*)C)[i + (long)j * ldc] = (float)c;
        }
}

static void record(int fn, int ta, int tb, int m, int n, int k, int lda, int ldb, int ldc, int at, int bt,
                   int ct, int compute, int algo) {
    Call c = {fn, ta, tb, m, n, k, lda, ldb, ldc, at, bt, ct, compute, algo};
    last = c;
}

extern "C" {
cublasStatus_t cublasCreate_v2(cublasHandle_t* h) { *h = (void*)0x5ca7c4; return 0; }
cublasStatus_t cublasSetStream_v2(cublasHandle_t h, void* s) { stream = s; return 0; }
cublasStatus_t cublasSetMathMode(cublasHandle_t h, int mode) { math_mode = mode; return 0; }
cublasStatus_t cublasSetWorkspace_v2(cublasHandle_t h, void* w, size_t bytes) { workspace_bytes = bytes; return 0; }

cublasStatus_t cublasSgemm_v2(cublasHandle_t h, int ta, int tb, int m, int n, int k, const float* alpha,
                              const float* A, int lda, const float* B, int ldb, const float* beta,
                              float* C, int ldc) {
    record(1, ta, tb, m, n, k, lda, ldb, ldc, R_32F, R_32F, R_32F, -1, -1);
    if (fail_with) return fail_with;
    gemm(ta, tb, m, n, k, *alpha, A, R_32F, lda, B, R_32F, ldb, *beta, C, R_32F, ldc);
    return 0;
}

cublasStatus_t cublasDgemm_v2(cublasHandle_t h, int ta, int tb, int m, int n, int k, const double* alpha,
                              const double* A, int lda, const double* B, int ldb, const double* beta,
                              double* C, int ldc) {
    record(2, ta, tb, m, n, k, lda, ldb, ldc, R_64F, R_64F, R_64F, -1, -1);
    if (fail_with) return fail_with;
    gemm(ta, tb, m, n, k, *alpha, A, R_64F, lda, B, R_64F, ldb, *beta, C, R_64F, ldc);
    return 0;
}

cublasStatus_t cublasGemmEx(cublasHandle_t h, int ta, int tb, int m, int n, int k, const void* alpha,
                            const void* A, int at, int lda, const void* B, int bt, int ldb,
                            const void* beta, void* C, int ct, int ldc, int compute, int algo) {
    record(3, ta, tb, m, n, k, lda, ldb, ldc, at, bt, ct, compute, algo);
    if (fail_with) return fail_with;
    /* the combinations scratchvae uses; alpha and beta are floats for the 32F compute types */
    bool tf32 = compute == COMPUTE_32F_FAST_TF32 && at == R_32F && bt == R_32F;
    bool bf16 = compute == COMPUTE_32F && at == R_16BF && bt == R_16BF;
    if (!(tf32 || bf16) || ct != R_32F) return INVALID;
    gemm(ta, tb, m, n, k, *(const float*)alpha, A, at, lda, B, bt, ldb, *(const float*)beta, C, R_32F, ldc);
    return 0;
}

void stub_last(int* out) { memcpy(out, &last, sizeof last); }
int stub_math_mode() { return math_mode; }
size_t stub_workspace_bytes() { return workspace_bytes; }
void* stub_stream() { return stream; }
void stub_fail_with(int status) { fail_with = status; }
}
"""
FIELDS = ("fn", "transa", "transb", "m", "n", "k", "lda", "ldb", "ldc", "atype", "btype", "ctype",
          "compute", "algo")
FUNCTIONS = {1: "cublasSgemm_v2", 2: "cublasDgemm_v2", 3: "cublasGemmEx"}


class DeviceArray(np.ndarray):
    """A NumPy array with CuPy's ``.data.ptr`` (the binding passes that address to cuBLAS)."""

    @property
    def data(self):
        return types.SimpleNamespace(ptr=self.__array_interface__["data"][0])


def dev(a):
    return np.ascontiguousarray(a).view(DeviceArray)


class StubCupy(HostCupy):
    """What the binding uses of cupy: arrays, a current stream, a device id."""

    ndarray = DeviceArray
    cuda = types.SimpleNamespace(runtime=types.SimpleNamespace(getDevice=lambda: 0),
                                 get_current_stream=lambda: types.SimpleNamespace(ptr=0x57e4))

    @staticmethod
    def empty(shape, dtype=np.float32):
        return np.empty(shape, dtype).view(DeviceArray)

    @staticmethod
    def ones(shape, dtype=np.float32):
        return np.ones(shape, dtype).view(DeviceArray)

    @staticmethod
    def ascontiguousarray(a):
        return dev(a)

    matmul = staticmethod(np.matmul)
    sum = staticmethod(np.sum)


@pytest.fixture(scope="module")
def stub(tmp_path_factory):
    if compiler() is None:
        pytest.skip("no host C++ compiler")
    d = tmp_path_factory.mktemp("cublas-stub")
    (d / "stub.cpp").write_text(STUB)
    run = subprocess.run([compiler(), "-O1", "-shared", "-fPIC", "-o", str(d / "libstub.so"), str(d / "stub.cpp")],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    lib = ctypes.CDLL(str(d / "libstub.so"))
    lib.stub_workspace_bytes.restype = ctypes.c_size_t
    lib.stub_stream.restype = ctypes.c_void_p
    return lib


@pytest.fixture
def binding(stub):
    stub.stub_fail_with(0)
    return cublas.Cublas(StubCupy(), lib=stub)


def last_call(stub):
    out = (ctypes.c_int * len(FIELDS))()
    stub.stub_last(out)
    call = dict(zip(FIELDS, out))
    call["fn"] = FUNCTIONS[call["fn"]]
    return call


def rel(got, want):
    return float(np.abs(np.asarray(got, np.float64) - want).max() / np.abs(want).max())


# The backward's shapes: y = x W (forward), dW = xᵀ dy, dx = dy Wᵀ; transposes are views.
SHAPES = [("forward", lambda x, W, dy: (x, W)), ("weight gradient", lambda x, W, dy: (x.T, dy)),
          ("input gradient", lambda x, W, dy: (dy, W.T))]


@pytest.fixture(scope="module")
def operands():
    r = np.random.default_rng(0)
    return (r.standard_normal((6, 9)).astype(np.float32), r.standard_normal((9, 5)).astype(np.float32),
            r.standard_normal((6, 5)).astype(np.float32))


@pytest.mark.parametrize("which", [s[0] for s in SHAPES])
@pytest.mark.parametrize("precision", ["fp32", "tf32", "bf16"])
def test_each_precision_calls_its_cublas_function_with_the_right_arguments(binding, stub, operands, which,
                                                                           precision, monkeypatch):
    monkeypatch.setenv("CUPY_TF32", "1")         # CuPy's switch: no effect on the binding's handle
    pick = dict(SHAPES)[which]
    if precision == "bf16":
        a, b = pick(*(dev(to_bf16(m)) for m in operands))
        want = from_bf16(np.asarray(a)).astype(np.float64) @ from_bf16(np.asarray(b)).astype(np.float64)
    else:
        a, b = pick(*(dev(m) for m in operands))
        want = np.asarray(a, np.float64) @ np.asarray(b, np.float64)
    (M, K), (_, N) = a.shape, b.shape
    out = StubCupy.empty((M, N))
    assert binding.matmul(a, b, out, precision) is out
    assert rel(out, want) <= 1e-6
    call = last_call(stub)
    # row-major out = a b is column-major outᵀ = bᵀ aᵀ: m = N, n = M, B first; a transposed view is op T
    t = {"forward": (0, 0), "weight gradient": (0, 1), "input gradient": (1, 0)}[which]
    assert (call["m"], call["n"], call["k"], call["ldc"]) == (N, M, K, N)
    assert (call["transa"], call["transb"]) == t
    assert call["lda"] == (b.shape[0] if t[0] else N) and call["ldb"] == (a.shape[0] if t[1] else K)
    kind = {"fp32": ("cublasSgemm_v2", 0, -1, -1), "tf32": ("cublasGemmEx", 0, 77, -1),
            "bf16": ("cublasGemmEx", 14, 68, -1)}[precision]
    assert (call["fn"], call["atype"], call["compute"], call["algo"]) == kind
    assert call["btype"] == call["atype"] and call["ctype"] == 0
    assert stub.stub_math_mode() == cublas.DEFAULT_MATH and stub.stub_stream() == 0x57e4
    assert stub.stub_workspace_bytes() == cublas.WORKSPACE_BYTES


def test_float64_fp32_products_and_bias_sums_stay_on_the_exact_path(binding, stub):
    r = np.random.default_rng(1)
    a, b = dev(r.standard_normal((4, 3))), dev(r.standard_normal((3, 2)))
    np.testing.assert_allclose(binding.matmul(a, b), np.asarray(a) @ np.asarray(b), rtol=1e-13)
    assert last_call(stub)["fn"] == "cublasDgemm_v2"
    dy = dev(r.standard_normal((7, 5)).astype(np.float32))
    np.testing.assert_allclose(binding.sum_rows(dy), np.asarray(dy).sum(axis=0), rtol=1e-6)
    assert last_call(stub)["fn"] == "cublasSgemm_v2"         # a bias gradient is summed in FP32


def test_the_launcher_takes_the_blocks_precision_through_the_seam(stub, operands):
    kernels = _cupy_kernels.Kernels(StubCupy(), body_of)
    kernels._cublas = cublas.Cublas(StubCupy(), lib=stub)
    a16, b16 = dev(to_bf16(operands[0])), dev(to_bf16(operands[1]))
    got = ops.matmul.call_kernel(kernels.get("matmul"), a16, b16, precision="bf16")
    assert rel(got, ops.matmul(np.asarray(a16), np.asarray(b16), precision="bf16")) <= 1e-6
    assert last_call(stub)["compute"] == cublas.COMPUTE_32F


def test_wrong_operands_and_a_failing_status_are_refused(binding, stub, operands):
    a, b, _ = (dev(m) for m in operands)
    with pytest.raises(InputError, match=r"precision bf16 takes 2-D bfloat16 words \(uint16\) operands"):
        binding.matmul(a, b, precision="bf16")
    with pytest.raises(InputError, match="precision tf32 takes 2-D float32 operands"):
        binding.matmul(dev(np.asarray(a, np.float64)), dev(np.asarray(b, np.float64)), precision="tf32")
    with pytest.raises(InputError, match="precision must be fp32, tf32 or bf16, got 'fp8'"):
        binding.matmul(a, b, precision="fp8")
    with pytest.raises(InputError, match=r"out must be float32 of shape \(6, 5\)"):
        binding.matmul(dev(to_bf16(operands[0])), dev(to_bf16(operands[1])), StubCupy.empty((6, 5), np.float64),
                       "bf16")
    stub.stub_fail_with(13)
    with pytest.raises(BackendError, match=r"cuBLAS GemmEx \(bf16\) failed with status 13"):
        binding.matmul(dev(to_bf16(operands[0])), dev(to_bf16(operands[1])), precision="bf16")


def test_the_cuda_data_types_are_the_toolkits_where_it_is_installed(tmp_path):
    """CUDA_R_32F and CUDA_R_16BF as the CUDA toolkit's library_types.h defines them (a host
    program compiled by nvcc, which puts the toolkit's headers on the include path)."""
    if shutil.which("nvcc") is None:
        pytest.skip("no CUDA toolkit (nvcc)")
    (tmp_path / "t.cpp").write_text('#include <library_types.h>\n#include <stdio.h>\n'
                                    'int main() { printf("%d %d", (int)CUDA_R_32F, (int)CUDA_R_16BF); }\n')
    build = subprocess.run(["nvcc", "-o", str(tmp_path / "t"), str(tmp_path / "t.cpp")], capture_output=True,
                           text=True)
    assert build.returncode == 0, build.stderr[-2000:]
    out = subprocess.run([str(tmp_path / "t")], capture_output=True, text=True).stdout
    assert out == f"{cublas.CUDA_R_32F} {cublas.CUDA_R_16BF}"
