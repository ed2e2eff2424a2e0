"""CuPy only: every fused kernel against its NumPy twin, the cuBLAS path, and NumPy/CuPy parity.

Kernel twins: the same inputs through the op with NumPy arrays (its readable body) and with
CuPy arrays (the kernel), compared norm-wise per output, ‖cupy − numpy‖ / ‖numpy‖:
float64 ≤ 1e-12, float32 ≤ 1e-6. Parity of the whole model: ``loss_and_grads`` on the same
parameters and ε, float64 ≤ 1e-10 and float32 ≤ 1e-5 per array, with TF32 off (true FP32);
tf32 and bf16 models against the NumPy bodies (tests/test_precision.py's emulating backend).
Portable runs: trained on one backend, evaluated and resumed on the other.
Every test skips, with its reason, where CuPy sees no GPU.
"""

import numpy as np
import pytest

from scratchvae import VAE, ops
from scratchvae.backend import cupy_usable, get_backend
from scratchvae.backend.graph import gather_rows, load_row
from scratchvae.evaluate import evaluate_elbo
from scratchvae.ops.dense import data_matmul, data_weight_grad, matmul, sum_rows
from scratchvae.optim import Adam, adam_update, adam_update_from
from scratchvae.step import record_losses
from scratchvae.train import TrainConfig, fit, load_run, resume

pytestmark = pytest.mark.skipif(not cupy_usable(), reason="needs CuPy and a usable CUDA GPU")

TWIN = {"float32": 1e-6, "float64": 1e-12}
PARITY = {"float32": 1e-5, "float64": 1e-10}
DTYPES = ("float32", "float64")


@pytest.fixture(scope="module")
def cb():
    return get_backend("cupy")


def rel(got, want):
    got = np.asarray(got, np.float64)
    want = np.asarray(want, np.float64)
    assert got.shape == want.shape, (got.shape, want.shape)
    assert np.isfinite(got).all() == np.isfinite(want).all()
    d = np.linalg.norm((got - want)[np.isfinite(want)])
    return float(d / max(np.linalg.norm(want[np.isfinite(want)]), 1e-300))


def twin(cb, dtype, *host):
    """Host arrays of ``dtype`` and their device copies."""
    h = [np.ascontiguousarray(a, dtype=dtype) for a in host]
    return h, [cb.asarray(a) for a in h]


# -- activations --------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ops.ACTIVATIONS)
def test_bias_act_kernel(name, dtype, cb):
    r = np.random.default_rng(1)
    (pre, b), (dpre, db) = twin(cb, dtype, 3 * r.normal(size=(64, 100)), r.normal(size=100))
    want = ops.bias_act_forward(pre.copy(), b, name)
    got = cb.to_host(ops.bias_act_forward(dpre.copy(), db, name))
    assert rel(got, want) <= TWIN[dtype]
    inplace = dpre.copy()
    ops.bias_act_forward(inplace, db, name, out=inplace)
    np.testing.assert_array_equal(cb.to_host(inplace), got)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ops.ACTIVATIONS)
def test_activation_backward_kernel(name, dtype, cb):
    r = np.random.default_rng(2)
    z = 3 * r.normal(size=(64, 100))
    z[0, :5] = 0.0                                       # the ReLU kink: derivative 0 (s for leaky)
    a = ops.activation_forward(name, z.astype(dtype))
    (a, da), (d_a, d_da) = twin(cb, dtype, a, r.normal(size=(64, 100)))
    want = ops.activation_backward(name, da, a.copy())
    got = cb.to_host(ops.activation_backward(name, d_da, d_a.copy()))
    assert rel(got, want) <= TWIN[dtype]
    inplace = d_a.copy()
    ops.activation_backward(name, d_da, inplace, out=inplace)
    np.testing.assert_array_equal(cb.to_host(inplace), got)


# -- reparameterize + KL ---------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
def test_reparam_kl_forward_kernel(dtype, cb):
    r = np.random.default_rng(3)
    N, L = 128, 20
    base = r.normal(size=(N, 2 * L))
    eps = r.normal(size=(N, L))
    for clamp in (False, True):                           # the sum alone; then ±30 clamps,
        if clamp:                                         # whose e^30 would swamp a wrong sum
            base[0, L:L + 3] = [40.0, -45.0, 30.0]
        (ml, e), (dml, de) = twin(cb, dtype, base, eps)
        bufs = [np.empty((N, L), dtype) for _ in range(3)]
        dbufs = [cb.xp.empty((N, L), dtype) for _ in range(3)]
        kl = ops.reparam_kl_forward(ml, e, *bufs)
        dkl = ops.reparam_kl_forward(dml, de, *dbufs)
        assert dkl.shape == () and dkl.dtype == np.dtype(dtype)
        assert rel(cb.to_host(dkl), kl) <= TWIN[dtype]
        for got, want in zip(dbufs[:2], bufs[:2]):        # z, std
            assert rel(cb.to_host(got), want) <= TWIN[dtype]
        np.testing.assert_array_equal(cb.to_host(dml), ml)  # the clamp, in place


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("beta", [1.0, 0.3, "device"])
@pytest.mark.parametrize("with_dz", [True, False])
def test_reparam_kl_backward_kernel(dtype, beta, with_dz, cb):
    r = np.random.default_rng(4)
    N, L = 128, 20
    ml = r.normal(size=(N, 2 * L))
    ml[1, L] = 30.0                                       # at the clamp: zero gradient
    (ml, eps, dz), (dml, deps, ddz) = twin(cb, dtype, ml, r.normal(size=(N, L)), r.normal(size=(N, L)))
    std = np.exp(0.5 * ml[:, L:]).astype(dtype)
    dstd = cb.asarray(std)
    b_host = 0.7 if beta == "device" else beta
    b_dev = cb.xp.asarray(np.float64(0.7)) if beta == "device" else beta
    want = ops.reparam_kl_backward(dz.copy() if with_dz else None, eps, std, ml, b_host,
                                   np.empty((N, 2 * L), dtype))
    got = ops.reparam_kl_backward(ddz.copy() if with_dz else None, deps, dstd, dml, b_dev,
                                  cb.xp.empty((N, 2 * L), dtype))
    got = cb.to_host(got)
    assert rel(got, want) <= TWIN[dtype]
    assert got[1, L] == 0


# -- full-covariance reparameterize + KL --------------------------------------------------------------
@pytest.mark.parametrize("offdiag", [1.0, 0.2236])
@pytest.mark.parametrize("dtype", DTYPES)
def test_fullcov_kernels(dtype, offdiag, cb):
    r = np.random.default_rng(5)
    N, L = 128, 20
    P = 2 * L + L * (L - 1) // 2
    base = 0.3 * r.normal(size=(N, P))
    base[0, L:L + 3] = [20.0, -22.0, 15.0]                # clamped to ±15
    (h, eps, dz, bias), (dh, deps, ddz, dbias) = twin(cb, dtype, base, r.normal(size=(N, L)),
                                                      r.normal(size=(N, L)), 0.1 * r.normal(size=P))
    S, dS = np.zeros((N, L, L), dtype), cb.xp.full((N, L, L), np.nan, dtype)
    z, dzz = np.empty((N, L), dtype), cb.xp.empty((N, L), dtype)
    kl = ops.fullcov_reparam_kl_forward(h, eps, z, S, np.empty((N, L), dtype), bias=bias, offdiag=offdiag)
    dkl = ops.fullcov_reparam_kl_forward(dh, deps, dzz, dS, cb.xp.empty((N, L), dtype), bias=dbias, offdiag=offdiag)
    assert dkl.shape == () and rel(cb.to_host(dkl), kl) <= TWIN[dtype]
    for got, want in ((dzz, z), (dS, S)):
        assert rel(cb.to_host(got), want) <= TWIN[dtype]
    np.testing.assert_array_equal(cb.to_host(dh), h)      # bias and clamp, in place
    dS = cb.asarray(S)                                    # the backward from the same S
    for beta, b_dev, with_dz in [(1.0, 1.0, True), (0.3, 0.3, False), (0.7, cb.xp.asarray(np.float64(0.7)), True)]:
        want = ops.fullcov_reparam_kl_backward(dz.copy() if with_dz else None, eps, S, h, beta, np.empty((N, P), dtype),
                                               np.empty((N, L, L), dtype), np.empty((N, P - 2 * L), dtype),
                                               offdiag=offdiag)
        got = ops.fullcov_reparam_kl_backward(ddz.copy() if with_dz else None, deps, dS, dh, b_dev,
                                              cb.xp.empty((N, P), dtype), None, None, offdiag=offdiag)
        got = cb.to_host(got)
        assert rel(got, want) <= TWIN[dtype] and got[0, L] == 0 and got[0, L + 1] == 0


# -- Bernoulli -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
def test_bernoulli_kernel(dtype, cb):
    r = np.random.default_rng(5)
    y = 4 * r.normal(size=(128, 784))
    y[0, :5] = [1e3, 100.0, -80.0, 0.0, 60.0]             # large logits, short of the cap
    x = r.uniform(size=y.shape)
    x[1] = x[1] > 0.5                                     # binary rows too
    (y, x), (dy_, dx) = twin(cb, dtype, y, x)
    dl_h, dl_d = np.empty_like(y), cb.xp.empty_like(dy_)
    want = ops.bernoulli_nll_forward_backward(y.copy(), x, dl_h, np.empty_like(y))
    got = ops.bernoulli_nll_forward_backward(dy_.copy(), dx, dl_d, cb.xp.empty_like(dy_))
    assert got.shape == () and got.dtype == np.dtype(dtype)
    assert rel(cb.to_host(got), want) <= TWIN[dtype]
    assert rel(cb.to_host(dl_d), dl_h) <= TWIN[dtype]


@pytest.mark.parametrize("dtype", DTYPES)
def test_bernoulli_kernel_beyond_the_cap(dtype, cb):
    """Logits past the exponent cap: finite, and equal to softplus(y) − x·y and σ(y) − x
    computed in float64 (CuPy flushes float32 subnormals, so the kernel's cap is e^{87})."""
    y = np.array([[-1e3, -89.0, -88.5, -100.0, 1e3, 89.0]], dtype=dtype)
    x = np.array([[0.0, 0.25, 1.0, 0.5, 1.0, 0.0]], dtype=dtype)
    dl = cb.xp.empty_like(cb.asarray(y))
    got = float(ops.bernoulli_nll_forward_backward(cb.asarray(y), cb.asarray(x), dl, cb.xp.empty_like(dl)))
    y64, x64 = y.astype(np.float64), x.astype(np.float64)
    want = np.sum(np.logaddexp(y64, 0) - x64 * y64)
    assert abs(got - want) <= TWIN[dtype] * abs(want)
    with np.errstate(over="ignore"):
        sig = 1 / (1 + np.exp(-y64))
    np.testing.assert_allclose(cb.to_host(dl), sig - x64, rtol=0, atol=1e-30)


# -- Adam ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
def test_adam_kernels(dtype, cb):
    """The Adam kernel repeats adam_update's roundings: the same bits after 5 steps."""
    r = np.random.default_rng(6)
    n = 10_000
    (p, m, v), (dp, dm, dv) = twin(cb, dtype, r.normal(size=n), np.zeros(n), np.zeros(n))
    opt_h, opt_d = Adam(p.copy(), lr=1e-2), Adam(dp.copy(), lr=1e-2)
    for _ in range(5):
        g = r.normal(size=n).astype(dtype)
        opt_h.step(g)
        opt_d.step(cb.asarray(g))
    for a, b in [(opt_d._params[0], opt_h._params[0]), (opt_d.m[0], opt_h.m[0]), (opt_d.v[0], opt_h.v[0])]:
        assert rel(cb.to_host(a), b) <= TWIN[dtype]
    # adam_from (coefficients read on the device) is adam, bit for bit
    g = cb.asarray(r.normal(size=n).astype(dtype))
    step_size, sqrt_bc2 = opt_d.coefficients(6)
    p1, m1, v1 = dp.copy(), dm.copy(), dv.copy()
    p2, m2, v2 = dp.copy(), dm.copy(), dv.copy()
    adam_update(p1, g, m1, v1, step_size, sqrt_bc2, 0.9, 0.999, 1e-8, None)
    adam_update_from(p2, g, m2, v2, cb.xp.asarray([step_size, sqrt_bc2]), 0.9, 0.999, 1e-8, None)
    for a, b in [(p1, p2), (m1, m2), (v1, v2)]:
        np.testing.assert_array_equal(cb.to_host(a), cb.to_host(b))


# -- GEMMs (the capturable cuBLAS path) ----------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("ta", [False, True])
@pytest.mark.parametrize("tb", [False, True])
def test_matmul_matches_cupy_and_numpy(dtype, ta, tb, cb):
    r = np.random.default_rng(7)
    M, K, N = 128, 784, 400
    a = r.normal(size=(K, M) if ta else (M, K))
    b = r.normal(size=(N, K) if tb else (K, N))
    (a, b), (da, db) = twin(cb, dtype, a, b)
    A, B = (a.T if ta else a), (b.T if tb else b)
    dA, dB = (da.T if ta else da), (db.T if tb else db)
    out = cb.xp.full((M, N), np.nan, dtype=dtype)
    got = matmul(dA, dB, out=out)
    assert got is out
    assert rel(cb.to_host(got), A @ B) <= TWIN[dtype] * 10
    assert rel(cb.to_host(got), cb.to_host(cb.xp.matmul(dA, dB))) <= TWIN[dtype] * 10


def test_float32_gemm_is_true_fp32(cb):
    """TF32 (10-bit mantissa) would miss float64 by ~1e-3; true FP32 by ~1e-7."""
    r = np.random.default_rng(8)
    a, b = r.normal(size=(256, 784)), r.normal(size=(784, 400))
    got = cb.to_host(matmul(cb.asarray(a.astype(np.float32)), cb.asarray(b.astype(np.float32))))
    want = a.astype(np.float32).astype(np.float64) @ b.astype(np.float32).astype(np.float64)
    assert rel(got, want) <= 1e-6


@pytest.mark.parametrize("dtype", DTYPES)
def test_sum_rows(dtype, cb):
    r = np.random.default_rng(9)
    (a,), (da,) = twin(cb, dtype, r.normal(size=(4096, 784)))
    assert rel(cb.to_host(sum_rows(da)), a.sum(axis=0)) <= TWIN[dtype] * 10


@pytest.mark.parametrize("dtype", DTYPES)
def test_the_first_layer_blocks_are_the_cublas_products_and_keep_no_list(dtype, cb):
    """On CuPy, data_matmul and data_weight_grad are the dense products (no list of nonzeros:
    the NumPy twins' listing buys nothing on cuBLAS), and an encoder's cache holds no list."""
    r = np.random.default_rng(10)
    x = r.uniform(size=(64, 784)) * (r.uniform(size=(64, 784)) < 0.2)
    (x, W, dy), (dx, dW, ddy) = twin(cb, dtype, x, r.normal(size=(784, 400)), r.normal(size=(64, 400)))
    out, grad = cb.xp.full((64, 400), np.nan, dtype=dtype), cb.xp.full((784, 400), np.nan, dtype=dtype)
    assert data_matmul(dx, dW, out, None) is out
    assert data_weight_grad(dx, ddy, grad, None) is grad
    assert rel(cb.to_host(out), x @ W) <= TWIN[dtype] * 10
    assert rel(cb.to_host(grad), x.T @ dy) <= TWIN[dtype] * 10
    m = VAE(input_dim=784, hidden=(400,), latent=20, dtype=dtype, backend=cb)
    m.loss_and_grads(dx)
    assert m.workspace(64).enc.nonzeros is None


# -- precision: the bfloat16 conversions, TF32 and BF16 products, a model in each --------------------------------
def test_bf16_conversions_on_the_gpu_are_the_numpy_bodies_bit_for_bit(cb):
    from scratchvae.ops.bf16 import from_bf16, to_bf16

    upper = np.arange(1 << 16, dtype=np.uint32) << np.uint32(16)
    for lower in (0x0000, 0x0001, 0x7FFF, 0x8000, 0x8001, 0xFFFF):
        x = (upper | np.uint32(lower)).view(np.float32).reshape(-1, 256)
        np.testing.assert_array_equal(cb.to_host(to_bf16(cb.asarray(x))), to_bf16(x))
    words = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    np.testing.assert_array_equal(cb.to_host(from_bf16(cb.asarray(words))).view(np.uint32),
                                  from_bf16(words).view(np.uint32))


def test_tf32_products_round_and_fp32_products_stay_true_fp32_beside_them(cb):
    """The precision travels with each call: a TF32 product misses float64 by ~1e-4 (10-bit
    operands; on Ampere or newer), the FP32 product right after it by ~1e-7."""
    r = np.random.default_rng(8)
    a, b = r.normal(size=(256, 784)).astype(np.float32), r.normal(size=(784, 400)).astype(np.float32)
    want = a.astype(np.float64) @ b.astype(np.float64)
    da, db = cb.asarray(a), cb.asarray(b)
    tf32 = cb.to_host(matmul(da, db, precision="tf32"))
    fp32 = cb.to_host(matmul(da, db))
    assert rel(fp32, want) <= 1e-6 and rel(tf32, want) <= 2e-3
    if int(cb.xp.cuda.Device().compute_capability) >= 80:
        assert rel(tf32, want) > 1e-5, "TF32 tensor cores did not round the operands"


@pytest.mark.parametrize("ta", [False, True])
@pytest.mark.parametrize("tb", [False, True])
def test_bf16_products_accumulate_the_words_values_in_fp32(ta, tb, cb):
    from scratchvae.ops.bf16 import from_bf16, to_bf16

    r = np.random.default_rng(10)
    M, K, N = 128, 784, 400
    a = to_bf16(r.normal(size=(K, M) if ta else (M, K)).astype(np.float32))
    b = to_bf16(r.normal(size=(N, K) if tb else (K, N)).astype(np.float32))
    A, B = (a.T if ta else a), (b.T if tb else b)
    da, db = cb.asarray(a), cb.asarray(b)
    got = matmul(da.T if ta else da, db.T if tb else db, precision="bf16")
    assert got.dtype == np.float32
    want = from_bf16(np.ascontiguousarray(A)).astype(np.float64) @ from_bf16(np.ascontiguousarray(B)).astype(np.float64)
    assert rel(cb.to_host(got), want) <= 1e-5


@pytest.mark.parametrize("precision", ["tf32", "bf16"])
def test_loss_and_grads_in_a_reduced_precision(precision, cb):
    """The GPU model in ``precision`` against the NumPy bodies on the same parameters and ε
    (tests/test_precision.py's emulating backend: bf16, the products of the same bfloat16 words
    accumulated in float32; tf32, FP32 products): bf16 agrees far closer than it does with
    the FP32 model; tf32 stays within TF32's rounding of FP32."""
    from test_precision import EMU

    r = np.random.default_rng(12)
    N, D, L = 128, 784, 20
    x = r.uniform(size=(N, D)).astype(np.float32)
    mh = VAE(hidden=(400,), latent=L, seed=1, backend=EMU, precision=precision)
    eps = r.normal(size=mh.eps_shape(N)).astype(np.float32)
    keep_off_kinks(mh, x, eps)
    md = VAE(hidden=(400,), latent=L, seed=1, backend="cupy", precision=precision)
    m32 = VAE(hidden=(400,), latent=L, seed=1)
    md.set_params(mh.host_params())
    m32.set_params(mh.host_params())
    rh, rd, r32 = mh.loss_and_grads(x, eps=eps), md.loss_and_grads(cb.asarray(x), eps=cb.asarray(eps)), \
        m32.loss_and_grads(x, eps=eps)
    to_emulated = max(rel(cb.to_host(rd.grads[k]), rh.grads[k]) for k in mh.shapes if np.any(rh.grads[k]))
    to_fp32 = max(rel(cb.to_host(rd.grads[k]), r32.grads[k]) for k in mh.shapes if np.any(r32.grads[k]))
    if precision == "bf16":
        assert to_emulated <= 5e-4 and to_emulated < to_fp32 / 5, (to_emulated, to_fp32)
        assert rel(cb.to_host(rd.objective), rh.objective) <= 1e-5
    else:
        assert to_fp32 <= 5e-3 and rel(cb.to_host(rd.objective), r32.objective) <= 1e-4, to_fp32


# -- CUDA-graph plumbing ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
def test_graph_plumbing_kernels(dtype, cb):
    r = np.random.default_rng(10)
    src = r.normal(size=(50, 7)).astype(dtype)
    perm = r.permutation(50).astype(np.int64)
    xp = cb.xp
    for host, dev in [((src, perm, np.array([2]), np.empty((9, 7), dtype)),
                       (cb.asarray(src), cb.asarray(perm), xp.asarray([2]), xp.empty((9, 7), dtype))),
                      ((src, perm, np.array([5]), np.empty((5, 7), dtype)),       # the partial batch
                       (cb.asarray(src), cb.asarray(perm), xp.asarray([5]), xp.empty((5, 7), dtype)))]:
        np.testing.assert_array_equal(cb.to_host(gather_rows(*dev[:3], 9, dev[3])),
                                      gather_rows(*host[:3], 9, host[3]))
    table = r.normal(size=(6, 3))
    cur = xp.empty(3)
    load_row(cb.asarray(table), xp.asarray([4]), cur)
    np.testing.assert_array_equal(cb.to_host(cur), table[4])
    losses, bi, flag = xp.zeros((4, 3)), xp.asarray([1]), xp.asarray([-1])
    recon, kl = xp.asarray(np.array(5.5, dtype)), xp.asarray(np.array(0.25, dtype))
    record_losses(recon, kl, recon, kl, losses, bi, flag)                       # the ELBO's: recon + kl
    record_losses(xp.asarray(np.array(7.0, dtype)), None, recon, kl, losses, bi, flag)   # a bound's
    record_losses(xp.asarray(np.array(np.inf, dtype)), kl, recon, kl, losses, bi, flag)
    np.testing.assert_array_equal(cb.to_host(losses)[1:3], [[5.75, 5.5, 0.25], [7.0, 5.5, 0.25]])
    assert int(bi.get()[0]) == 4 and int(flag.get()[0]) == 3


# -- the whole model: NumPy vs CuPy --------------------------------------------------------------------------
MODELS = {
    "relu": {},
    "tanh-2layer": {"hidden": (64, 32), "activation": "tanh"},
    "leaky": {"activation": "leaky_relu"},
    "sigmoid": {"activation": "sigmoid"},
    "softplus": {"activation": "softplus"},
    "gaussian-shared": {"likelihood": "gaussian", "sigma": "shared"},
    "ae": {"mode": "ae"},
    "kl-only": {"mode": "kl-only", "beta": 0.5},
    "full-tanh": {"posterior": "full", "activation": "tanh"},
    "full-iwae-tanh": {"posterior": "full", "objective": "iwae", "iw_samples": 3, "activation": "tanh"},
    "diagonal-iwae-tanh": {"objective": "iwae", "iw_samples": 2, "activation": "tanh"},
}


def keep_off_kinks(m, x, eps, margin=1e-3):
    """Shift each ReLU unit's bias so that no pre-activation of the batch lies within
    ``margin`` of 0 (float64 forward on the host). At a kink, float32 rounding can flip the
    derivative between 1 and 0 on one backend only: a real O(1) difference per flip, not an
    error of either backend (the same rule as the gradient checks: inputs off kinks)."""
    if m.activation not in ("relu", "leaky_relu"):
        return
    P = {k: np.asarray(v, np.float64) for k, v in m.host_params().items()}
    act = (lambda a: np.maximum(a, 0)) if m.activation == "relu" else (lambda a: np.maximum(a, 0.01 * a))

    def fix(h, prefix, count):
        for i in range(count):
            pre = h @ P[f"{prefix}.{i}.W"] + P[f"{prefix}.{i}.b"]
            for j in range(pre.shape[1]):
                for s in (0.0, *(k * margin * (-1) ** k for k in range(3, 200))):
                    if np.min(np.abs(pre[:, j] + s)) > margin:
                        break
                P[f"{prefix}.{i}.b"][j] += s
                pre[:, j] += s
            h = act(pre)
        return h

    h = fix(np.asarray(x, np.float64), "enc", len(m.hidden))
    ml = h @ P["enc.head.W"] + P["enc.head.b"]
    L = m.latent
    z = ml[:, :L] if m.mode == "ae" else ml[:, :L] + np.exp(0.5 * ml[:, L:]) * np.asarray(eps, np.float64)
    fix(z, "dec", len(m.dec_hidden))
    m.set_params({k: v.astype(m.dtype) for k, v in P.items()})


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", list(MODELS))
def test_loss_and_grads_parity(case, dtype, cb):
    kw = dict(MODELS[case])
    hidden = kw.pop("hidden", (400,))
    r = np.random.default_rng(11)
    N, D, L = 128, 784, 20
    x = r.uniform(size=(N, D)).astype(dtype)
    mh = VAE(hidden=hidden, latent=L, dtype=dtype, seed=1, **kw)
    eps = r.normal(size=mh.eps_shape(N)).astype(dtype)
    keep_off_kinks(mh, x, eps)
    md = VAE(hidden=hidden, latent=L, dtype=dtype, seed=1, backend="cupy", **kw)
    md.set_params(mh.host_params())
    rh = mh.loss_and_grads(x, eps=eps)
    rd = md.loss_and_grads(cb.asarray(x), eps=cb.asarray(eps))
    errs = {k: rel(cb.to_host(rd.grads[k]), rh.grads[k]) for k in mh.shapes if np.any(rh.grads[k])}
    for part in ("recon", "kl", "objective"):
        errs[part] = rel(cb.to_host(getattr(rd, part)), getattr(rh, part))
    worst = max(errs, key=errs.get)
    assert errs[worst] <= PARITY[dtype], (worst, errs[worst])


# -- portable runs ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_data():
    from scratchvae.data import load_dataset

    train, test = load_dataset("embedded")
    return train.images[:300], test.images[:100]


@pytest.mark.parametrize("first", ["numpy", "cupy"])
def test_portable_runs(first, small_data, tmp_path, cb):
    """Trained one epoch on ``first``; evaluated and resumed to two epochs on both backends."""
    train, test = small_data
    other = "cupy" if first == "numpy" else "numpy"
    m = VAE(hidden=(32,), latent=4, seed=2, dtype="float64", backend=first)
    fit(m, train, test, config=TrainConfig(epochs=1, batch_size=64), run_dir=tmp_path / "run")
    evals, params = {}, {}
    for b in (first, other):
        run = load_run(tmp_path / "run", backend=b)
        assert run.model.backend.name == b
        xt = run.model.backend.asarray(test.astype(np.float64) / 255)
        run.model.rng["eval"].set_state(m.rng.state()["eval"])
        evals[b] = evaluate_elbo(run.model, xt)["loss"]
        resume(run, train, test, epochs=2, run_dir=tmp_path / f"resumed-{b}")
        params[b] = run.model.backend.to_host(run.model.theta)
    assert abs(evals["cupy"] - evals["numpy"]) <= 1e-10 * abs(evals["numpy"])
    assert rel(params["cupy"], params["numpy"]) <= 1e-9


# -- last: a capture that fails leaves training on the eager path ------------------------------------------
def test_capture_failure_falls_back_to_eager(cb):
    from scratchvae.backend.graph import StepGraphs

    g = StepGraphs(cb)
    x = cb.xp.zeros(4)

    def fn():
        x[...] += 1
        return float(x.sum())          # a host sync: not capturable

    g.run("k", fn)                     # eager warm-up (x = 1), then the capture fails
    g.run("k", fn)                     # eager again (x = 2)
    assert g.failed is not None and len(g) == 0
    assert float(x[0]) == 2.0
