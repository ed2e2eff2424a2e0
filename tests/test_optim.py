"""SGD and Adam against their textbook updates, written out here independently.

The problem: f(p) = ½ (p − c)ᵀ A (p − c) with A symmetric positive definite, ∇f = A (p − c),
float64, 50 steps. The references follow PyTorch's documented rules:

  SGD (momentum μ, no dampening):  v ← μ v + g;  p ← p − lr · v          (v₀ = 0)
  Adam (Kingma & Ba 2015, ε after the root):
      m ← β₁ m + (1 − β₁) g;  v ← β₂ v + (1 − β₂) g²
      m̂ = m / (1 − β₁ᵗ);  v̂ = v / (1 − β₂ᵗ);  p ← p − lr · m̂ / (√v̂ + ε)
"""

import math

import numpy as np
import pytest

from scratchvae import SGD, Adam
from scratchvae.errors import InputError

DIM, STEPS = 7, 50


def _problem(seed=0):
    rng = np.random.default_rng(seed)
    B = rng.standard_normal((DIM, DIM))
    A = B @ B.T / DIM + 0.5 * np.eye(DIM)          # SPD, condition number ~10
    c = rng.standard_normal(DIM)
    p0 = c + 2.0 * rng.standard_normal(DIM)
    return A, c, p0


def _grad(A, c, p):
    return A @ (p - c)


def _ref_sgd(A, c, p0, lr, momentum, steps=STEPS):
    p, v, traj = p0.copy(), np.zeros_like(p0), []
    for _ in range(steps):
        g = _grad(A, c, p)
        v = momentum * v + g if momentum else g
        p = p - lr * v
        traj.append(p)
    return np.array(traj)


def _ref_adam(A, c, p0, lr, b1=0.9, b2=0.999, eps=1e-8, steps=STEPS):
    p, m, v, traj = p0.copy(), np.zeros_like(p0), np.zeros_like(p0), []
    for t in range(1, steps + 1):
        g = _grad(A, c, p)
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        m_hat = m / (1 - b1**t)
        v_hat = v / (1 - b2**t)
        p = p - lr * m_hat / (np.sqrt(v_hat) + eps)
        traj.append(p)
    return np.array(traj)


def _run(backend, make_opt, A, c, p0, steps=STEPS):
    """Step an optimizer built over one flat backend array; the host trajectory."""
    xp = backend.xp
    A_b, c_b = backend.asarray(A), backend.asarray(c)
    p = backend.asarray(p0.copy())
    opt = make_opt(p)
    traj = []
    for _ in range(steps):
        opt.step(xp.matmul(A_b, p - c_b))
        traj.append(backend.to_host(p).copy())
    return np.array(traj), opt, p


def _assert_same_trajectory(got, ref, rtol=1e-12):
    scale = np.abs(ref).max(axis=1, keepdims=True)
    err = np.abs(got - ref).max(axis=1, keepdims=True) / scale
    assert err.max() <= rtol, f"max relative deviation {err.max():.3g} at step {err.argmax() + 1}"


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_sgd_matches_the_textbook_rule(backend, momentum):
    A, c, p0 = _problem()
    lr = 0.05
    got, opt, _ = _run(backend, lambda p: SGD(p, lr=lr, momentum=momentum), A, c, p0)
    ref = _ref_sgd(A, c, p0, lr, momentum)
    _assert_same_trajectory(got, ref)
    assert opt.t == STEPS
    # it is descending the quadratic, and momentum changes the path
    f = lambda p: 0.5 * (p - c) @ A @ (p - c)  # noqa: E731
    assert f(got[-1]) < 1e-2 * f(p0)
    assert not np.allclose(ref, _ref_sgd(A, c, p0, lr, 0.9 - momentum), rtol=1e-6)


@pytest.mark.parametrize("lr", [1e-3, 0.1])
def test_adam_matches_the_textbook_rule(backend, lr):
    A, c, p0 = _problem(1)
    got, opt, _ = _run(backend, lambda p: Adam(p, lr=lr), A, c, p0)
    ref = _ref_adam(A, c, p0, lr)
    _assert_same_trajectory(got, ref)
    assert opt.t == STEPS
    # the first step moves every coordinate by lr · g/(|g| + ε) (m̂ = g, √v̂ = |g|): close to
    # lr · sign(g) where |g| ≫ ε, not exactly
    g0 = _grad(A, c, p0)
    np.testing.assert_allclose(got[0] - p0, -lr * g0 / (np.abs(g0) + 1e-8), rtol=1e-12)
    # and the reference's constants matter: other betas or eps give a different path
    assert not np.allclose(ref, _ref_adam(A, c, p0, lr, b1=0.8), rtol=1e-9)
    assert not np.allclose(ref, _ref_adam(A, c, p0, lr, eps=1e-2), rtol=1e-9)


def test_adam_custom_hyperparameters(backend):
    A, c, p0 = _problem(2)
    kw = dict(lr=0.03, betas=(0.5, 0.9), eps=1e-3)
    got, _, _ = _run(backend, lambda p: Adam(p, **kw), A, c, p0)
    ref = _ref_adam(A, c, p0, 0.03, b1=0.5, b2=0.9, eps=1e-3)
    _assert_same_trajectory(got, ref)


def _split(flat):
    """A dict of arrays of several shapes covering the flat vector (views would also do)."""
    return {"w": flat[:4].reshape(2, 2).copy(), "b": flat[4:].copy()}


@pytest.mark.parametrize("make", [
    lambda p: SGD(p, lr=0.05),
    lambda p: SGD(p, lr=0.05, momentum=0.9),
    lambda p: Adam(p, lr=0.02),
], ids=["sgd", "sgd-momentum", "adam"])
def test_dict_and_flat_forms_agree(backend, make):
    A, c, p0 = _problem(3)
    xp = backend.xp
    flat_traj, _, _ = _run(backend, make, A, c, p0)

    params = {k: backend.asarray(v) for k, v in _split(p0).items()}
    opt = make(params)
    A_b, c_b = backend.asarray(A), backend.asarray(c)
    traj = []
    for _ in range(STEPS):
        p = xp.concatenate([params["w"].ravel(), params["b"]])
        g = xp.matmul(A_b, p - c_b)
        opt.step({"w": g[:4].reshape(2, 2), "b": g[4:]})
        traj.append(backend.to_host(xp.concatenate([params["w"].ravel(), params["b"]])))
    _assert_same_trajectory(np.array(traj), flat_traj, rtol=1e-14)

    # a gradient of the wrong structure is refused
    with pytest.raises(InputError):
        opt.step({"w": g[:4].reshape(2, 2)})
    with pytest.raises(InputError):
        opt.step({"w": g[:4], "b": g[4:]})


@pytest.mark.parametrize("make", [
    lambda p: SGD(p, lr=0.05, momentum=0.9),
    lambda p: Adam(p, lr=0.02),
], ids=["sgd-momentum", "adam"])
def test_state_round_trip_continues_identically(backend, make):
    A, c, p0 = _problem(4)
    xp = backend.xp
    A_b, c_b = backend.asarray(A), backend.asarray(c)
    whole, _, _ = _run(backend, make, A, c, p0, steps=STEPS)

    first, opt, p = _run(backend, make, A, c, p0, steps=20)
    state = opt.state()
    assert int(state["t"]) == 20
    assert all(isinstance(v, np.ndarray) for v in state.values())

    # a fresh optimizer over a copy of the parameters, restored from the saved state
    p2 = backend.asarray(backend.to_host(p).copy())
    opt2 = make(p2)
    opt2.load_state({k: v.copy() for k, v in state.items()})
    assert opt2.t == 20
    rest = []
    for _ in range(STEPS - 20):
        opt2.step(xp.matmul(A_b, p2 - c_b))
        rest.append(backend.to_host(p2).copy())
    np.testing.assert_array_equal(np.concatenate([first, np.array(rest)]), whole)

    # without the state (moments zero, t = 0) the continuation differs
    p3 = backend.asarray(backend.to_host(p).copy())
    opt3 = make(p3)
    opt3.step(xp.matmul(A_b, p3 - c_b))
    assert not np.allclose(backend.to_host(p3), rest[0], rtol=1e-9)

    bad = dict(state)
    bad[next(k for k in state if k != "t")] = np.zeros(DIM + 1)
    with pytest.raises(InputError):
        make(backend.asarray(p0.copy())).load_state(bad)


@pytest.mark.parametrize("kwargs", [
    dict(lr=0.0), dict(lr=-1e-3), dict(lr=math.nan), dict(lr=math.inf),
    dict(betas=(1.0, 0.999)), dict(betas=(0.9, 1.0)), dict(betas=(-0.1, 0.999)),
    dict(betas=(0.9, math.nan)), dict(eps=0.0), dict(eps=-1e-8),
])
def test_adam_rejects_bad_hyperparameters(kwargs):
    with pytest.raises(InputError):
        Adam(np.zeros(3), **kwargs)


@pytest.mark.parametrize("kwargs", [
    dict(lr=0.0), dict(lr=-0.1), dict(lr=math.nan), dict(lr=math.inf),
    dict(momentum=1.0), dict(momentum=-0.1), dict(momentum=math.nan),
])
def test_sgd_rejects_bad_hyperparameters(kwargs):
    with pytest.raises(InputError):
        SGD(np.zeros(3), **kwargs)


def test_good_hyperparameters_are_accepted():
    Adam(np.zeros(3), lr=1e-3, betas=(0.0, 0.0), eps=1e-12)
    opt = SGD(np.zeros(3), lr=1.0, momentum=0.0)
    assert (opt.lr, opt.momentum) == (1.0, 0.0)
