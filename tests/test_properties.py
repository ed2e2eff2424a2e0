"""Property-based tests of the ops and the model (hypothesis): random shapes and values.

Two regimes. *Stable*: moderate values (|logits| ≤ 20, |logvar| ≤ 5, log σ ≥ −3, inputs
off the ReLU kink): outputs and gradients are finite and every backward matches central
differences (:func:`scratchvae.gradcheck`, float64). *Extreme but finite*: any finite
float32/float64 where the op promises it (the Bernoulli block for any logit, softplus,
sigmoid, the activations, the soft floor of log σ; logvar of any size through the clamp):
outputs and gradients are finite — nothing else is claimed there.

The CI profile (tests/conftest.py) is derandomized, ~60 examples a test, no deadline;
``HYPOTHESIS_PROFILE=long`` runs 5000 examples a test.
"""

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, strategies as st  # noqa: E402
from hypothesis.extra import numpy as hnp  # noqa: E402

from scratchvae import VAE, gradcheck, ops  # noqa: E402
from scratchvae.ops import reference  # noqa: E402
from scratchvae.ops.gaussian import LOGVAR_LIMIT  # noqa: E402

TOL = 1e-6          # a little looser than test_gradcheck_ops (1e-7): hypothesis hunts for bad spots
KINK = 1e-3         # ReLU-family inputs stay this far from 0, far beyond h = 1e-6
SMOOTH = ("tanh", "sigmoid", "softplus")

N = st.integers(1, 6)
D = st.integers(1, 8)


def floats(lo, hi, width=64):
    return st.floats(lo, hi, allow_nan=False, allow_infinity=False, width=width)


def arrays(shape, lo, hi, dtype="float64"):
    width = 32 if dtype == "float32" else 64
    return hnp.arrays(np.dtype(dtype), shape, elements=floats(lo, hi, width))


def extreme(shape, dtype):
    """Any finite value of the dtype, with the edges and zero likely."""
    big = float(np.finfo(dtype).max)
    return arrays(shape, -big, big, dtype)


def check(fun, inputs, grads):
    """:func:`gradcheck` of ``fun + Σ_k Σ c_k ⊙ p_k`` with fixed c_k ∈ [1, 2).

    The added term's gradient c_k keeps every array's scale ≥ 1, so a gradient that vanishes
    (σ(y) = x, a tiny input, a saturated unit) is compared on an absolute scale instead of
    against its own rounding noise; gradients larger than 1 still get a relative test.
    """
    rng = np.random.default_rng(0)
    cs = {k: rng.uniform(1, 2, size=np.shape(p)) for k, p in inputs.items()}

    def f():
        return float(fun()) + sum(float(np.sum(cs[k] * p)) for k, p in inputs.items())

    return gradcheck(f, inputs, {k: np.asarray(grads[k]) + cs[k] for k in inputs})


def finite(*arrs):
    return all(np.all(np.isfinite(np.asarray(a))) for a in arrs)


@st.composite
def shaped(draw, lo, hi, ndim=2, dtype="float64"):
    shape = tuple(draw(N if i == 0 else D) for i in range(ndim))
    return draw(arrays(shape, lo, hi, dtype))


# ------------------------------------------------------------------------ stable regime: gradients
@given(st.data())
def test_dense_gradients(data):
    n, i, o = data.draw(N), data.draw(D), data.draw(D)
    x, W, b, w = (data.draw(arrays(s, -3, 3)) for s in [(n, i), (i, o), (o,), (n, o)])
    dW, db, dx = ops.dense_backward(w, x, W)
    err = check(lambda: np.sum(w * reference.dense_forward(x, W, b)), {"x": x, "W": W, "b": b},
                    {"x": dx, "W": dW, "b": db})
    assert max(err.values()) <= TOL, err


@given(st.sampled_from(ops.ACTIVATIONS), shaped(-6, 6), st.data())
def test_activation_gradients(name, z, data):
    if name in ("relu", "leaky_relu"):
        z = np.where(np.abs(z) < KINK, np.copysign(KINK, z) + z, z)
    w = data.draw(arrays(z.shape, -2, 2))
    a = ops.activation_forward(name, z)
    dz = ops.activation_backward(name, w, a)
    assert finite(a, dz)
    err = check(lambda: np.sum(w * ops.activation_forward(name, z)), {"z": z}, {"z": dz})
    assert err["z"] <= TOL, err
    b = data.draw(arrays(z.shape[1:], -1, 1))
    np.testing.assert_allclose(ops.bias_act_forward(z.copy(), b, name),
                               ops.activation_forward(name, z + b), rtol=1e-13, atol=1e-15)


@given(st.data(), st.floats(0, 2), st.booleans())
def test_reparam_kl_gradients(data, beta, with_dz):
    n, L = data.draw(N), data.draw(st.integers(1, 4))
    ml = np.concatenate([data.draw(arrays((n, L), -3, 3)), data.draw(arrays((n, L), -5, 5))], axis=1)
    eps, w = data.draw(arrays((n, L), -3, 3)), data.draw(arrays((n, L), -2, 2))
    bufs = lambda: [np.empty((n, L)) for _ in range(3)]  # noqa: E731

    def f():
        z, std, s = bufs()
        kl = ops.reparam_kl_forward(ml, eps, z, std, s)
        return (np.sum(w * z) if with_dz else 0.0) + beta * kl

    z, std, s = bufs()
    kl = ops.reparam_kl_forward(ml, eps, z, std, s)
    assert float(kl) >= 0 and finite(kl, z, std)
    dml = np.empty((n, 2 * L))
    ops.reparam_kl_backward(w.copy() if with_dz else None, eps, std, ml, beta, dml)
    assert finite(dml)
    err = check(f, {"ml": ml}, {"ml": dml})
    assert err["ml"] <= TOL, err


@given(shaped(-20, 20), st.data())
def test_bernoulli_gradients(y, data):
    x = data.draw(arrays(y.shape, 0, 1))
    dy, s = np.empty_like(y), np.empty_like(y)
    loss = ops.bernoulli_nll_forward_backward(y.copy(), x, dy, s)
    assert finite(loss, dy)
    np.testing.assert_allclose(float(loss), float(reference.bernoulli_nll(y, x)), rtol=1e-10, atol=1e-10)
    err = check(lambda: reference.bernoulli_nll(y, x), {"y": y}, {"y": dy})
    assert err["y"] <= TOL, err


@given(shaped(-4, 4), st.sampled_from(["fixed", "shared", "per-pixel"]), st.data())
def test_gaussian_gradients(m, kind, data):
    n, d = m.shape
    x = data.draw(arrays((n, d), -4, 4))
    ls = (data.draw(floats(-3, 2)) if kind == "fixed"
          else data.draw(arrays((1,) if kind == "shared" else (d,), -3, 2)))
    pp = kind == "per-pixel"

    def f():
        return ops.gaussian_nll_forward_backward(m, x, ls, np.empty((n, d)), np.empty((n, d)), per_pixel=pp)[0]

    dm = np.empty((n, d))
    loss, dls = ops.gaussian_nll_forward_backward(m, x, ls, dm, np.empty((n, d)), per_pixel=pp)
    assert finite(loss, dm)
    np.testing.assert_allclose(float(loss), float(reference.gaussian_nll(m, x, ls)), rtol=1e-12)
    inputs, grads = {"mean": m}, {"mean": dm}
    if kind != "fixed":
        inputs["log_sigma"], grads["log_sigma"] = ls, dls
    err = check(f, inputs, grads)
    assert max(err.values()) <= TOL, err


@given(shaped(-30, 30, ndim=1), st.data())
def test_soft_floor_gradients(s, data):
    w = data.draw(arrays(s.shape, -2, 2))
    ds = ops.soft_floor_log_sigma_backward(w, s)
    assert np.all(ops.soft_floor_log_sigma(s) >= ops.LOG_SIGMA_FLOOR)
    err = check(lambda: np.sum(w * ops.soft_floor_log_sigma(s)), {"s": s}, {"s": ds})
    assert err["s"] <= TOL, err


@given(st.integers(1, 8), st.integers(1, 6), st.integers(1, 3), st.integers(1, 4),
       st.sampled_from(SMOOTH), st.sampled_from(["bernoulli", "gaussian", "per-pixel"]),
       st.sampled_from(["vae", "ae", "kl-only"]), st.integers(0, 2**16))
def test_whole_model_gradients(d, h, latent, n, act, lik, mode, seed):
    """Random small VAEs (smooth activations, every likelihood and mode): every parameter."""
    m = VAE(input_dim=d, hidden=(h,), latent=latent, activation=act,
            likelihood="bernoulli" if lik == "bernoulli" else "gaussian",
            sigma="per-pixel" if lik == "per-pixel" else 1.0, mode=mode, dtype="float64", seed=seed)
    x = np.random.default_rng(seed).random((n, d))
    eps = None if mode == "ae" else m.rng["noise"].normal((n, latent), "float64")
    res = m.loss_and_grads(x, eps=eps)
    grads = {k: v.copy() for k, v in res.grads.items()}
    assert finite(res.objective, *grads.values())
    err = check(lambda: m.loss_and_grads(x, eps=eps, need_grads=False).objective, m.params, grads)
    assert max(err.values()) <= TOL, err


# ------------------------------------------------------------------------ extreme but finite
@given(st.sampled_from(["float32", "float64"]), st.data())
def test_bernoulli_block_is_finite_for_any_finite_logit(dtype, data):
    """Logits up to max/64 (so the sum of ≤ 48 terms, each ≤ |y| + log 2, cannot overflow)."""
    n, d = data.draw(N), data.draw(D)
    big = float(np.finfo(dtype).max) / 64
    y = data.draw(arrays((n, d), -big, big, dtype))
    x = data.draw(arrays((n, d), 0, 1, dtype))
    dy, s = np.empty_like(y), np.empty_like(y)
    with np.errstate(over="raise", invalid="raise"):
        loss = ops.bernoulli_nll_forward_backward(y.copy(), x, dy, s)
    assert finite(loss, dy) and np.all(np.abs(dy) <= 1)
    slack = 4 * float(np.finfo(dtype).eps) * float(np.sum(np.abs(y), dtype=np.float64)) + 1e-3
    assert float(loss) >= -slack   # −log p ≥ 0 per pixel, up to rounding


@given(st.sampled_from(["float32", "float64"]), st.sampled_from(ops.ACTIVATIONS), st.data())
def test_activations_finite_for_any_finite_input(dtype, name, data):
    z = data.draw(extreme((data.draw(N), data.draw(D)), dtype))
    w = data.draw(arrays(z.shape, -1, 1, dtype))
    a = ops.activation_forward(name, z)
    dz = ops.activation_backward(name, w, a)
    assert finite(a, dz)
    assert finite(ops.sigmoid(z), ops.softplus(z))


@given(st.sampled_from(["float32", "float64"]), st.data())
def test_soft_floor_finite_for_any_finite_input(dtype, data):
    s = data.draw(extreme((data.draw(D),), dtype))
    ls = ops.soft_floor_log_sigma(s)
    assert finite(ls, ops.soft_floor_log_sigma_backward(np.ones_like(s), s))
    assert np.all(ls >= ops.LOG_SIGMA_FLOOR)


@given(st.sampled_from(["float32", "float64"]), st.data())
def test_reparam_kl_finite_for_any_logvar(dtype, data):
    """Any finite logvar is clamped to ±30 (σ² in [9e−14, 1e13]); μ and ε of ordinary size."""
    n, L = data.draw(N), data.draw(st.integers(1, 4))
    mu = data.draw(arrays((n, L), -1e3, 1e3, dtype))
    ml = np.concatenate([mu, data.draw(extreme((n, L), dtype))], axis=1)
    eps, dz = data.draw(arrays((n, L), -5, 5, dtype)), data.draw(arrays((n, L), -1e3, 1e3, dtype))
    z, std, s = (np.empty((n, L), dtype) for _ in range(3))
    kl = ops.reparam_kl_forward(ml, eps, z, std, s)
    assert np.all(np.abs(ml[:, L:]) <= LOGVAR_LIMIT)
    dml = np.empty((n, 2 * L), dtype)
    ops.reparam_kl_backward(dz, eps, std, ml, 1.0, dml)
    assert finite(kl, z, std, dml) and float(kl) >= 0


@given(st.sampled_from(["float32", "float64"]), st.sampled_from(["shared", "per-pixel"]), st.data())
def test_gaussian_finite_with_large_means_and_any_learned_sigma(dtype, kind, data):
    n, d = data.draw(N), data.draw(D)
    m, x = data.draw(arrays((n, d), -1e4, 1e4, dtype)), data.draw(arrays((n, d), -10, 10, dtype))
    # raw log σ from −max up to 80 (σ = e^80; far beyond, Σ log σ itself overflows float32)
    s = data.draw(arrays((1,) if kind == "shared" else (d,), -float(np.finfo(dtype).max), 80, dtype))
    ls = ops.soft_floor_log_sigma(s)                     # what the model feeds the likelihood
    dm = np.empty((n, d), dtype)
    with np.errstate(over="raise", invalid="raise"):
        loss, dls = ops.gaussian_nll_forward_backward(m, x, ls, dm, np.empty((n, d), dtype),
                                                      per_pixel=kind == "per-pixel")
    assert finite(loss, dm, dls, ops.soft_floor_log_sigma_backward(dls, s))
