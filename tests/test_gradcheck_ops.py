"""Layer 1: every backward against central differences (float64, tiny shapes, off kinks)."""

import numpy as np
import pytest

from scratchvae import gradcheck
from scratchvae import ops
from scratchvae.ops import reference
from scratchvae.gradcheck import DEFAULT_H

TOL = 1e-7
ACTS = ops.ACTIVATIONS


def rng(seed=0):
    return np.random.default_rng(seed)


def off_kink(shape, r, margin=10 * DEFAULT_H):
    """Random values at least ``margin`` away from 0 (the ReLU kink)."""
    z = r.normal(size=shape)
    z[np.abs(z) < 0.05] += 0.1
    assert np.min(np.abs(z)) > margin
    return z


def test_dense(backend):
    r = rng(1)
    xp = backend.xp
    x, W, b = (backend.asarray(r.normal(size=s)) for s in [(5, 4), (4, 3), (3,)])
    w = backend.asarray(r.normal(size=(5, 3)))  # upstream gradient: ℓ = Σ w ⊙ y
    dW, db, dx = ops.dense_backward(w, x, W)
    err = gradcheck(lambda: xp.sum(w * reference.dense_forward(x, W, b)),
                    {"x": x, "W": W, "b": b}, {"x": dx, "W": dW, "b": db})
    assert max(err.values()) <= TOL, err


@pytest.mark.parametrize("name", ACTS)
def test_activation(name, backend):
    r = rng(2)
    xp = backend.xp
    z = backend.asarray(off_kink((6, 5), r))
    w = backend.asarray(r.normal(size=(6, 5)))
    a = ops.activation_forward(name, z)
    dz = ops.activation_backward(name, w, a)
    err = gradcheck(lambda: xp.sum(w * ops.activation_forward(name, z)), {"z": z}, {"z": dz})
    assert err["z"] <= TOL, err


@pytest.mark.parametrize("name", ACTS)
def test_activation_backward_in_place_matches(name, backend):
    r = rng(3)
    z = backend.asarray(off_kink((4, 7), r))
    w = backend.asarray(r.normal(size=(4, 7)))
    a = ops.activation_forward(name, z)
    ref = backend.to_host(ops.activation_backward(name, w, a))
    got = backend.to_host(ops.activation_backward(name, w, a.copy(), out=None))
    a2 = a.copy()
    inplace = backend.to_host(ops.activation_backward(name, w, a2, out=a2))
    np.testing.assert_allclose(got, ref, rtol=1e-15, atol=1e-15)
    np.testing.assert_allclose(inplace, ref, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("name", ACTS)
def test_bias_act_forward_matches_unfused(name, backend):
    r = rng(4)
    pre = backend.asarray(r.normal(size=(5, 6)))
    b = backend.asarray(r.normal(size=6))
    want = backend.to_host(ops.activation_forward(name, pre + b))
    got = backend.to_host(ops.bias_act_forward(pre.copy(), b, name))
    np.testing.assert_allclose(got, want, rtol=1e-13, atol=1e-15)


def test_relu_derivative_is_zero_at_zero(backend):
    z = backend.asarray(np.array([[-1.0, 0.0, 2.0]]))
    a = ops.activation_forward("relu", z)
    d = backend.to_host(ops.activation_backward("relu", backend.asarray(np.ones((1, 3))), a))
    np.testing.assert_array_equal(d, [[0.0, 0.0, 1.0]])
    al = ops.activation_forward("leaky_relu", z)
    dl = backend.to_host(ops.activation_backward("leaky_relu", backend.asarray(np.ones((1, 3))), al))
    np.testing.assert_allclose(dl, [[ops.LEAKY_SLOPE, ops.LEAKY_SLOPE, 1.0]])


def test_reparameterize(backend):
    r = rng(5)
    xp = backend.xp
    mu, lv, eps, w = (backend.asarray(r.normal(size=(4, 3))) for _ in range(4))
    z, std = ops.reparameterize(mu, lv, eps)
    dmu, dlv = reference.reparameterize_backward(w, eps, std)
    err = gradcheck(lambda: xp.sum(w * ops.reparameterize(mu, lv, eps)[0]),
                    {"mu": mu, "logvar": lv}, {"mu": dmu, "logvar": dlv})
    assert max(err.values()) <= TOL, err


def test_kl(backend):
    r = rng(6)
    mu, lv = (backend.asarray(r.normal(size=(4, 3))) for _ in range(2))
    dmu, dlv = reference.kl_standard_normal_backward(mu, lv)
    err = gradcheck(lambda: reference.kl_standard_normal(mu, lv), {"mu": mu, "logvar": lv},
                    {"mu": dmu, "logvar": dlv})
    assert max(err.values()) <= TOL, err


@pytest.mark.parametrize("beta", [1.0, 0.3])
@pytest.mark.parametrize("with_dz", [True, False])
def test_fused_reparam_kl(beta, with_dz, backend):
    """The fused block's gradient is that of  Σ w ⊙ z + β·KL  (or β·KL alone)."""
    r = rng(7)
    xp = backend.xp
    N, L = 4, 3
    ml = backend.asarray(r.normal(size=(N, 2 * L)))
    eps = backend.asarray(r.normal(size=(N, L)))
    w = backend.asarray(r.normal(size=(N, L)))
    bufs = lambda: [xp.empty((N, L)) for _ in range(3)]  # noqa: E731

    def f():
        z, std, s = bufs()
        kl = ops.reparam_kl_forward(ml, eps, z, std, s)
        return (xp.sum(w * z) if with_dz else 0.0) + beta * kl

    z, std, s = bufs()
    kl = ops.reparam_kl_forward(ml, eps, z, std, s)
    np.testing.assert_allclose(float(kl), float(reference.kl_standard_normal(ml[:, :L], ml[:, L:])), rtol=1e-14)
    zr, _ = ops.reparameterize(ml[:, :L], ml[:, L:], eps)
    np.testing.assert_allclose(backend.to_host(z), backend.to_host(zr), rtol=1e-15)
    dml = xp.empty((N, 2 * L))
    ops.reparam_kl_backward(w.copy() if with_dz else None, eps, std, ml, beta, dml)
    err = gradcheck(f, {"ml": ml}, {"ml": dml})
    assert err["ml"] <= TOL, err


def test_bernoulli(backend):
    r = rng(8)
    xp = backend.xp
    y = backend.asarray(3 * r.normal(size=(4, 5)))
    x = backend.asarray(r.uniform(size=(4, 5)))
    g = reference.bernoulli_nll_backward(y, x)
    err = gradcheck(lambda: reference.bernoulli_nll(y, x), {"y": y}, {"y": g})
    assert err["y"] <= TOL, err
    dy, s = xp.empty((4, 5)), xp.empty((4, 5))
    loss = ops.bernoulli_nll_forward_backward(y, x, dy, s)
    np.testing.assert_allclose(float(loss), float(reference.bernoulli_nll(y, x)), rtol=1e-13)
    np.testing.assert_allclose(backend.to_host(dy), backend.to_host(g), rtol=1e-12, atol=1e-15)


def test_bernoulli_matches_definition():
    """softplus(y) − x y equals −[x log σ(y) + (1−x) log(1−σ(y))] where the latter is finite."""
    r = rng(9)
    y = r.normal(size=(3, 4)) * 4
    x = r.uniform(size=(3, 4))
    p = 1 / (1 + np.exp(-y))
    want = -np.sum(x * np.log(p) + (1 - x) * np.log1p(-p))
    np.testing.assert_allclose(float(reference.bernoulli_nll(y, x)), want, rtol=1e-12)


@pytest.mark.parametrize("kind", ["fixed", "shared", "per-pixel"])
def test_gaussian(kind, backend):
    r = rng(10)
    xp = backend.xp
    N, D = 4, 5
    m = backend.asarray(r.normal(size=(N, D)))
    x = backend.asarray(r.normal(size=(N, D)))
    if kind == "fixed":
        ls = -0.3
    else:
        ls = backend.asarray(r.normal(size=(1,) if kind == "shared" else (D,)) * 0.5)
    dm, s = xp.empty((N, D)), xp.empty((N, D))

    def f():
        return ops.gaussian_nll_forward_backward(m, x, ls, xp.empty((N, D)), xp.empty((N, D)),
                                                 per_pixel=kind == "per-pixel")[0]

    loss, dls = ops.gaussian_nll_forward_backward(m, x, ls, dm, s, per_pixel=kind == "per-pixel")
    np.testing.assert_allclose(float(loss), float(reference.gaussian_nll(m, x, ls)), rtol=1e-13)
    inputs, grads = {"mean": m}, {"mean": dm}
    if kind != "fixed":
        inputs["log_sigma"], grads["log_sigma"] = ls, dls
    err = gradcheck(f, inputs, grads)
    assert max(err.values()) <= TOL, err


def test_gaussian_is_a_density_in_nats():
    """With σ = 1 and x = mean, −log p = ½ log 2π per pixel (true nats, constants included)."""
    x = np.zeros((2, 3))
    assert float(reference.gaussian_nll(x, x, 0.0)) == pytest.approx(6 * 0.5 * np.log(2 * np.pi), rel=1e-15)


def test_soft_floor(backend):
    r = rng(11)
    xp = backend.xp
    s = backend.asarray(r.normal(size=7) * 4)
    w = backend.asarray(r.normal(size=7))
    ds = ops.soft_floor_log_sigma_backward(w, s)
    err = gradcheck(lambda: xp.sum(w * ops.soft_floor_log_sigma(s)), {"s": s}, {"s": ds})
    assert err["s"] <= TOL, err
    assert float(xp.min(ops.soft_floor_log_sigma(backend.asarray(np.array([-1e3]))))) >= ops.LOG_SIGMA_FLOOR


def test_gradcheck_catches_a_wrong_gradient():
    """The checker can fail: a gradient off by 1e-5 relative is reported."""
    r = rng(12)
    mu, lv = r.normal(size=(3, 2)), r.normal(size=(3, 2))
    dmu, dlv = reference.kl_standard_normal_backward(mu, lv)
    dlv = dlv * (1 + 1e-5)
    err = gradcheck(lambda: reference.kl_standard_normal(mu, lv), {"mu": mu, "logvar": lv},
                    {"mu": dmu, "logvar": dlv})
    assert err["mu"] <= TOL and err["logvar"] > 1e-6


def test_gradcheck_subsamples_large_arrays():
    a = np.linspace(-1, 1, 1000)
    calls = []

    def f():
        calls.append(1)
        return np.sum(a ** 2)

    err = gradcheck(f, {"a": a}, {"a": 2 * a}, max_coords=50)
    assert err["a"] <= TOL and len(calls) == 1 + 100          # f(p) once (for the floor), then two per coordinate
    assert err.checked == {"a": 50} and err.kinks == {"a": 0}
    assert err.floor["a"] == pytest.approx(np.finfo(float).eps * np.sum(a ** 2) / (1e-6 * 2.0), rel=0.02)


def test_logvar_clamp_keeps_everything_finite_and_gradients_exact_inside(backend):
    """Far-out logvar is clamped to ±30 (finite in float32); gradients check inside the range."""
    xp = backend.xp
    from scratchvae.ops.gaussian import LOGVAR_LIMIT

    N, L = 3, 2
    ml = backend.asarray(np.array([[0.1, -0.2, 500.0, -3.0], [1.0, 2.0, -1e4, 29.0],
                                   [0.0, 0.0, 0.0, 0.0]], dtype=np.float32))
    eps = backend.asarray(np.ones((N, L), np.float32))
    z, std, s = (xp.empty((N, L), np.float32) for _ in range(3))
    kl = ops.reparam_kl_forward(ml, eps, z, std, s)
    assert np.isfinite(float(kl)) and np.all(np.isfinite(backend.to_host(z)))
    assert float(xp.max(ml[:, L:])) == LOGVAR_LIMIT and float(xp.min(ml[:, L:])) == -LOGVAR_LIMIT
    dml = xp.empty((N, 2 * L), np.float32)
    ops.reparam_kl_backward(xp.ones((N, L), np.float32), eps, std, ml, 1.0, dml)
    d = backend.to_host(dml)
    assert np.all(np.isfinite(d)) and d[0, 2] == 0 and d[1, 2] == 0 and d[1, 3] != 0
