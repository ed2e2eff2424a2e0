"""The CUDA kernels, compiled and run on the host (``_cuda_host``), against their NumPy twins.

These run on every machine with a C++20 compiler, so CI checks the device code's indexing,
launch geometry, block reductions and arithmetic order even without a GPU. Tolerances as
in ``test_cupy.py`` where a transcendental function is involved (host libm stands in for
libdevice); exact where the kernel uses only correctly rounded operations (Philox and its
transforms, Adam, the graph plumbing).
"""

import numpy as np
import pytest

from scratchvae import ops
from scratchvae.backend import _cupy_kernels, philox
from scratchvae.backend.graph import gather_rows, load_row
from scratchvae.backend.random import Stream
from scratchvae.errors import InputError
from scratchvae.optim import adam_update, adam_update_from
from scratchvae.step import record_losses

from _cuda_host import HostCupy, box_muller_edges, host_kernels

TWIN = {"float32": 1e-6, "float64": 1e-12}
DTYPES = ("float32", "float64")


@pytest.fixture(scope="module")
def hk():
    return host_kernels()


def K(hk, block, *args, **kwargs):
    """The host-compiled kernel that ``block`` declares, called as the block calls it on a GPU
    (its own arguments, defaults filled in)."""
    return block.call_kernel(hk.get(block.kernel), *args, **kwargs)


def rel(got, want):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape
    return float(np.linalg.norm(got - want) / max(np.linalg.norm(want), 1e-300))


def arrays(dtype, *host):
    return [np.ascontiguousarray(a, dtype=dtype) for a in host]


# -- the fused blocks ---------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ops.ACTIVATIONS)
def test_bias_act_and_backward(name, dtype, hk):
    r = np.random.default_rng(1)
    pre, b, da = arrays(dtype, 3 * r.normal(size=(9, 70)), r.normal(size=70), r.normal(size=(9, 70)))
    pre[0, :5] = -b[:5]                                  # pre + b = 0: the ReLU kink
    want = ops.bias_act_forward(pre.copy(), b, name)
    got = K(hk, ops.bias_act_forward, pre.copy(), b, name)
    assert rel(got, want) <= TWIN[dtype]
    back_want = ops.activation_backward(name, da, want.copy())
    back_got = K(hk, ops.activation_backward, name, da, want.copy())
    assert rel(back_got, back_want) <= TWIN[dtype]
    if name in ("relu", "leaky_relu"):                   # piecewise linear: exact
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(back_got, back_want)


@pytest.mark.parametrize("dtype", DTYPES)
def test_reparam_kl_forward_and_backward(dtype, hk):
    r = np.random.default_rng(3)
    N, L = 37, 20                                        # 740 values: three blocks of partial sums
    ml, eps, dz = arrays(dtype, r.normal(size=(N, 2 * L)), r.normal(size=(N, L)), r.normal(size=(N, L)))
    for clamp in (False, True):                          # the sum alone; then ±30 clamps, whose
        if clamp:                                        # e^30 would swamp a wrong sum
            ml[0, L:L + 3] = [40.0, -45.0, 30.0]
        for bias in (r.normal(size=2 * L).astype(dtype), None):  # the head's bias folded in
            host = [np.empty((N, L), dtype) for _ in range(3)]
            dev = [np.empty((N, L), dtype) for _ in range(3)]
            ml_h, ml_d = ml.copy(), ml.copy()
            kl = ops.reparam_kl_forward(ml_h, eps, *host, bias=bias)
            got = K(hk, ops.reparam_kl_forward, ml_d, eps, *dev, bias=bias)
            assert got.shape == () and got.dtype == np.dtype(dtype)
            assert rel(got, kl) <= TWIN[dtype]
            for g, w in zip(dev[:2], host[:2]):          # z, std
                assert rel(g, w) <= TWIN[dtype]
            np.testing.assert_array_equal(ml_d, ml_h)    # ml + bias and the clamp, in place
    std = host[1]                          # of ml_h with its clamps (the NumPy body writes into dz)
    for beta, with_dz in [(1.0, True), (0.3, False), (np.array([0.7]), True)]:
        b_host = float(beta[0]) if isinstance(beta, np.ndarray) else beta
        want = ops.reparam_kl_backward(dz.copy() if with_dz else None, eps, std, ml_h, b_host,
                                       np.empty((N, 2 * L), dtype))
        out = K(hk, ops.reparam_kl_backward, dz.copy() if with_dz else None, eps, std, ml_h, beta,
                np.empty((N, 2 * L), dtype))
        assert rel(out, want) <= TWIN[dtype]
        assert out[0, L] == 0 and out[0, L + 1] == 0 and out[0, L + 2] == 0  # clamped: no gradient


@pytest.mark.parametrize("dtype", DTYPES)
def test_cond_prior_forward_and_backward(dtype, hk):
    """A hierarchical model's conditional prior: the rows ½ Σ (r² + lv_p) (one thread per row,
    two blocks of them) and the head as the forward leaves it (bias added, clamps) exactly; the
    backward with a β, a schedule's float64 device β, and one weight per row (w̃), its clamped
    entries 0, and its ∂/∂h added into what dh holds."""
    r = np.random.default_rng(5)
    N, L = 300, 7
    head, h, dh0 = arrays(dtype, r.normal(size=(N, 2 * L)), r.normal(size=(N, L)), r.normal(size=(N, L)))
    head[0, L:L + 3] = [40.0, -45.0, 30.0]
    for bias in (r.normal(size=2 * L).astype(dtype) * 0.3, None):
        h_h, h_d = head.copy(), head.copy()
        want = ops.cond_prior_forward(h_h, h, np.empty(N, dtype), np.empty((N, L), dtype), np.empty((N, L), dtype),
                                      bias=bias)
        got = K(hk, ops.cond_prior_forward, h_d, h, np.full(N, np.nan, dtype), None, None, bias=bias)
        assert got.dtype == np.dtype(dtype) and rel(got, want) <= TWIN[dtype]
        np.testing.assert_array_equal(h_d, h_h)
    for weights in (0.5, np.array([0.7]), r.uniform(size=N).astype(dtype)):
        w_host = float(weights[0]) if isinstance(weights, np.ndarray) and weights.size == 1 else weights
        dh_h, dh_d = dh0.copy(), dh0.copy()
        want = ops.cond_prior_backward(h_h, h, w_host, np.empty((N, 2 * L), dtype), dh_h, np.empty((N, L), dtype))
        out = K(hk, ops.cond_prior_backward, h_h, h, weights, np.full((N, 2 * L), np.nan, dtype), dh_d, None)
        assert rel(out, want) <= TWIN[dtype] and rel(dh_d, dh_h) <= TWIN[dtype]
        assert out[0, L] == 0 and out[0, L + 1] == 0 and out[0, L + 2] == 0


@pytest.mark.parametrize("offdiag", [1.0, 0.375])
@pytest.mark.parametrize("dtype", DTYPES)
def test_fullcov_reparam_kl_forward_and_backward(dtype, offdiag, hk):
    """The full-covariance block (S_ij = c·o_ij below the diagonal, c = 1 and c = 0.375): S, z,
    the KL sum (three blocks of partial sums) and the head as the forward leaves it (bias added,
    clamps) within the twin tolerance / exactly; the backward, made of products and sums only,
    bit for bit."""
    r = np.random.default_rng(4)
    N, L = 61, 6                                         # 366 threads: two blocks; M = 15
    P = 2 * L + L * (L - 1) // 2
    head, eps, dz = arrays(dtype, 0.5 * r.normal(size=(N, P)), r.normal(size=(N, L)), r.normal(size=(N, L)))
    head[0, L:L + 3] = [20.0, -22.0, 15.0]               # clamped to ±15 (e^30 would swamp a wrong sum)
    bufs = lambda: (np.empty((N, L), dtype), np.zeros((N, L, L), dtype), np.empty((N, L), dtype))  # noqa: E731
    for bias in (r.normal(size=P).astype(dtype) * 0.1, None):
        (z_h, S_h, s_h), (z_d, S_d, s_d) = bufs(), bufs()
        h_h, h_d = head.copy(), head.copy()
        kl = ops.fullcov_reparam_kl_forward(h_h, eps, z_h, S_h, s_h, bias=bias, offdiag=offdiag)
        got = K(hk, ops.fullcov_reparam_kl_forward, h_d, eps, z_d, S_d + np.nan, s_d, bias=bias, offdiag=offdiag)
        assert got.shape == () and got.dtype == np.dtype(dtype)
        assert rel(got, kl) <= TWIN[dtype]
        np.testing.assert_array_equal(h_d, h_h)          # head + bias and the clamp, in place
        assert rel(z_d, z_h) <= TWIN[dtype]
    S_d = np.full((N, L, L), np.nan, dtype)              # the kernel writes every entry of S
    K(hk, ops.fullcov_reparam_kl_forward, h_h.copy(), eps, z_d, S_d, s_d, offdiag=offdiag)
    assert rel(S_d, S_h) <= TWIN[dtype] and np.all(np.triu(S_d, 1) == 0)
    outer, gathered = np.empty((N, L, L), dtype), np.empty((N, P - 2 * L), dtype)
    for beta, with_dz in [(1.0, True), (0.3, False), (np.array([0.7]), True)]:
        b_host = float(beta[0]) if isinstance(beta, np.ndarray) else beta
        want = ops.fullcov_reparam_kl_backward(dz.copy() if with_dz else None, eps, S_h, h_h, b_host,
                                               np.empty((N, P), dtype), outer, gathered, offdiag=offdiag)
        got = K(hk, ops.fullcov_reparam_kl_backward, dz.copy() if with_dz else None, eps, S_h, h_h, beta,
                np.empty((N, P), dtype), None, None, offdiag=offdiag)
        np.testing.assert_array_equal(got, want)
        assert got[0, L] == 0 and got[0, L + 1] == 0 and got[0, L + 2] == 0   # clamped: no gradient


@pytest.mark.parametrize("dtype", DTYPES)
def test_bernoulli(dtype, hk):
    """The kernel against the NumPy body, and its loss (summed in float64) against the exact
    Σ softplus(y) − x·y: within 4ε, also with the tails where a cancelling form loses the term."""
    r = np.random.default_rng(5)
    y = 4 * r.normal(size=(3, 784))
    y[0, :5] = [1e3, 60.0, -60.0, 0.0, -86.0]            # large logits, short of both caps
    x = r.uniform(size=y.shape)
    x[1] = x[1] > 0.5
    y[2, :8] = [-10.0, -20.0, -40.0, -80.0, 10.0, 20.0, 40.0, 80.0]   # term e^{−|y|}: the tails
    x[2, :8] = [0, 0, 0, 0, 1, 1, 1, 1]
    y, x = arrays(dtype, y, x)
    for bias in (None, r.normal(size=784).astype(dtype)):   # the output layer's bias folded in
        dl_h, dl_d = np.empty_like(y), np.empty_like(y)
        want = ops.bernoulli_nll_forward_backward(y.copy(), x, dl_h, np.empty_like(y), bias=bias)
        got = K(hk, ops.bernoulli_nll_forward_backward, y.copy(), x, dl_d, None, bias=bias)
        assert got.shape == () and got.dtype == np.dtype(dtype)
        assert rel(got, want) <= TWIN[dtype]
        assert rel(dl_d, dl_h) <= TWIN[dtype]
        yb = (y if bias is None else y + bias).astype(np.longdouble)
        exact = np.sum(np.maximum(yb, 0) - x.astype(np.longdouble) * yb + np.log1p(np.exp(-np.abs(yb))))
        assert abs(float(got) - float(exact)) <= 4 * np.finfo(dtype).eps * float(exact)
    # only tail terms, each e^{−|y|}: a cancelling form is 0.8% off at |y| = 10 and 0 from 15 on
    yt, xt = arrays(dtype, [[-10.0, -20.0, -40.0, -80.0], [10.0, 20.0, 40.0, 80.0]], [[0.0] * 4, [1.0] * 4])
    got = K(hk, ops.bernoulli_nll_forward_backward, yt, xt, np.empty_like(yt), None)
    exact = float(np.sum(np.log1p(np.exp(-np.abs(yt.astype(np.longdouble))))))
    assert abs(float(got) - exact) <= 4 * np.finfo(dtype).eps * exact
    with pytest.raises(InputError, match=r"bias must be a \(784,\)"):
        K(hk, ops.bernoulli_nll_forward_backward, y, x, dl_d, None, bias=np.zeros(783, dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_adam_is_adam_update_bit_for_bit(dtype, hk):
    """Only * + / and sqrt, in adam_update's order: the same bits, host or kernel."""
    r = np.random.default_rng(6)
    n = 3000
    p, g, m, v = arrays(dtype, r.normal(size=n), r.normal(size=n), r.normal(size=n) * 0.1,
                        r.uniform(size=n) * 0.01)
    want = [a.copy() for a in (p, m, v)]
    adam_update(want[0], g, want[1], want[2], 1e-3 / 0.19, 0.0447, 0.9, 0.999, 1e-8, np.empty_like(p))
    got = [a.copy() for a in (p, m, v)]
    K(hk, adam_update, got[0], g, got[1], got[2], 1e-3 / 0.19, 0.0447, 0.9, 0.999, 1e-8, None)
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)
    got2 = [a.copy() for a in (p, m, v)]
    K(hk, adam_update_from, got2[0], g, got2[1], got2[2], np.array([1e-3 / 0.19, 0.0447]), 0.9, 0.999, 1e-8,
      None)
    want2 = [a.copy() for a in (p, m, v)]
    adam_update_from(want2[0], g, want2[1], want2[2], np.array([1e-3 / 0.19, 0.0447]), 0.9, 0.999,
                     1e-8, np.empty_like(p))
    for a, b in zip(got2, want2):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("dtype", DTYPES)
def test_graph_plumbing(dtype, hk):
    r = np.random.default_rng(10)
    src = r.normal(size=(50, 7)).astype(dtype)
    perm = r.permutation(50).astype(np.int64)
    for bi, rows in ((2, 9), (5, 5)):                    # a full batch and the partial last one
        want = gather_rows(src, perm, np.array([bi]), 9, np.empty((rows, 7), dtype))
        got = K(hk, gather_rows, src, perm, np.array([bi]), 9, np.empty((rows, 7), dtype))
        np.testing.assert_array_equal(got, want)
    table = r.normal(size=(6, 3))
    cur = np.empty(3)
    K(hk, load_row, table, np.array([4]), cur)
    np.testing.assert_array_equal(cur, load_row(table, np.array([4]), np.empty(3)))
    # the one record block: the loss as first + second (the ELBO's recon + kl), or first alone
    # (second None: a bound), beside recon and kl; the first non-finite loss's row is flagged
    for second in (np.array(0.25, dtype), None):
        state = {}
        for name, rec in (("kernel", lambda *a: K(hk, record_losses, *a)), ("numpy", record_losses)):
            losses, bi, flag = np.zeros((5, 3)), np.array([1]), np.array([-1])
            for first in (5.5, 7.0, np.inf, np.nan):
                rec(np.array(first, dtype), second, np.array(5.25, dtype), np.array(0.25, dtype), losses, bi, flag)
            state[name] = (losses, bi, flag)
        for a, b in zip(state["kernel"], state["numpy"]):
            np.testing.assert_array_equal(a, b)
        total = 5.75 if second is not None else 5.5
        assert state["kernel"][0][1].tolist() == [total, 5.25, 0.25] and state["kernel"][2][0] == 3


# -- Philox and its transforms -------------------------------------------------------------------
@pytest.mark.parametrize("grid", [1, 3])
def test_philox_kernels_give_numpys_bits_on_any_grid(grid, hk):
    """Every draw kernel of PHILOX_CUDA_SRC, bit for bit with the NumPy stream, normals too."""
    cp = HostCupy()
    seed, sid, d = 31337, 2, 2**32 - 1                    # the draw counter carries into d_hi
    draws = {"philox_uint32": lambda s, n: s.uint32(n),
             "philox_uniform_f32": lambda s, n: s.uniform(n, np.float32),
             "philox_uniform_f64": lambda s, n: s.uniform(n, np.float64),
             "philox_normal_f32": lambda s, n: s.normal(n, np.float32),
             "philox_normal_f64": lambda s, n: s.normal(n, np.float64)}
    advance = cp.RawKernel(philox.PHILOX_CUDA_SRC, "philox_advance", options=philox.CUDA_OPTIONS)
    for name, host_draw in draws.items():
        kernel = cp.RawKernel(philox.PHILOX_CUDA_SRC, name, options=philox.CUDA_OPTIONS)
        for n in (1, 7, 1001):
            s = Stream(seed, sid)
            s.set_state(np.array([*s.key, d & 0xFFFFFFFF, d >> 32], np.uint32))
            want = host_draw(s, n)
            dev_d = np.array([d & 0xFFFFFFFF, d >> 32], np.uint32)
            out = np.empty(n, want.dtype)
            kernel((grid,), (64,), (np.uint32(s.key[0]), np.uint32(s.key[1]), dev_d, out, np.uint64(n), np.uint64(0)))
            np.testing.assert_array_equal(out.view(f"u{out.itemsize}"), want.view(f"u{want.itemsize}"),
                                          err_msg=f"{name} n={n}")
            advance((1,), (1,), (dev_d,))
            np.testing.assert_array_equal(dev_d, s.state()[2:])


def test_philox_block_kernel_gives_the_known_answers(hk):
    from test_philox import KAT

    cp = HostCupy()
    ctr = np.array([c for c, _, _ in KAT], np.uint32)
    key = np.array([k for _, k, _ in KAT], np.uint32)
    out = np.empty_like(ctr)
    kernel = cp.RawKernel(philox.PHILOX_CUDA_SRC, "philox4x32_10_blocks", options=philox.CUDA_OPTIONS)
    kernel((1,), (32,), (ctr, key, out, np.uint64(len(KAT))))
    assert out.tolist() == [list(e) for _, _, e in KAT]


PAIRS = r"""
extern "C" __global__ void normal_pairs(const double *u1, const double *u2, double *out, u64 b) {
    for (u64 j = (u64)blockIdx.x * blockDim.x + threadIdx.x; j < b; j += (u64)gridDim.x * blockDim.x)
        normal_pair(u1[j], u2[j], out + 2 * j, out + 2 * j + 1);
}
"""


def test_normal_pair_is_box_muller_bit_for_bit_at_the_edges(hk):
    """u at 2**-53 and 1 - 2**-53, both sides of the sqrt(1/2) split, every quarter turn and
    the half-way points where rint rounds to even, and random pairs."""
    u1, u2 = box_muller_edges(5000)
    out = np.empty(2 * u1.size)
    kernel = HostCupy.RawKernel(philox.PHILOX_DEVICE_SRC + PAIRS, "normal_pairs",
                                options=philox.CUDA_OPTIONS)
    kernel((4,), (64,), (u1, u2, out, np.uint64(u1.size)))
    np.testing.assert_array_equal(out.view(np.int64), philox.box_muller(u1, u2).view(np.int64))


# -- the same sources through nvcc (where the CUDA toolkit is installed; no GPU needed) ------------
def nvcc_ptx(tmp_path, code, options):
    import shutil
    import subprocess

    if shutil.which("nvcc") is None:
        pytest.skip("no nvcc")
    (tmp_path / "m.cu").write_text(code)
    run = subprocess.run(["nvcc", "--ptx", "-arch=sm_80", *options, "-o", str(tmp_path / "m.ptx"),
                          str(tmp_path / "m.cu")], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    return (tmp_path / "m.ptx").read_text()


def test_philox_module_compiles_with_no_fma_and_rounded_div_sqrt(tmp_path):
    """nvcc's PTX of the Philox module: no FMA anywhere, IEEE ``div.rn``/``sqrt.rn``/``cvt.rni``."""
    ptx = nvcc_ptx(tmp_path, philox.PHILOX_CUDA_SRC, philox.CUDA_OPTIONS)
    for name in philox.CUDA_KERNELS:
        assert f".entry {name}(" in ptx, name
    assert "fma." not in ptx and "div.approx" not in ptx
    for op in ("div.rn.f64", "sqrt.rn.f64", "cvt.rni.f64.f64"):
        assert op in ptx, op


def test_fused_kernel_module_compiles_with_every_kernel_the_launchers_name(tmp_path):
    ptx = nvcc_ptx(tmp_path, _cupy_kernels.CUDA_SRC, _cupy_kernels.CUDA_OPTIONS)
    names = ["load_row", "to_bf16", "from_bf16"] + [f"{k}_{suf}" for suf in ("f32", "f64") for k in (
        "finish_sum", "reparam_kl_forward", "reparam_kl_backward", "bernoulli_nll", "adam",
        "adam_from", "gather_rows", "record_losses", "fullcov_reparam_kl_forward",
        "fullcov_reparam_kl_backward",
        *(f"{p}_{a}" for p in ("bias_act", "act_backward") for a in ops.ACTIVATIONS))]
    for name in names:
        assert f".entry {name}(" in ptx, name
