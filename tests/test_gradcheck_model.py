"""Layer 2: the whole model's gradients with a fixed ε, every parameter, every mode.

``loss_and_grads`` *is* the fast path (workspaces, ``out=`` buffers, fused blocks), so
these checks cover it; a second call at the same batch shape reuses the workspace and
must give the same numbers.
"""

import numpy as np
import pytest

from scratchvae import VAE, gradcheck_model
from scratchvae.backend import get_backend
from scratchvae.gradcheck import DEFAULT_H

NUMPY = get_backend("numpy")

TOL = 1e-7
N, D, L = 5, 7, 3


def make(backend, hidden=(6, 4), activation="tanh", seed=0, **kw):
    """A float64 model whose parameters are scaled so every gradient is O(1)."""
    m = VAE(input_dim=D, hidden=hidden, latent=L, activation=activation, dtype="float64",
            seed=seed, backend=backend, **kw)
    r = np.random.default_rng(seed)
    host = {}
    gain = 3.0 if activation == "sigmoid" else 1.5
    for k, shape in m.shapes.items():
        host[k] = r.normal(size=shape) * (gain / np.sqrt(shape[0]) if len(shape) == 2 else 0.3)
    m.set_params(host)
    x = backend.asarray(r.uniform(size=(N, D)))
    eps = backend.asarray(r.normal(size=(N, L)))
    return m, x, eps


def preactivations(m, x, eps, backend):
    """Every hidden pre-activation of the forward pass (to keep them off the ReLU kink)."""
    P = {k: backend.to_host(v) for k, v in m.params.items()}
    from scratchvae.ops import activation_forward

    out, h = [], backend.to_host(x)
    for i in range(len(m.hidden)):
        z = h @ P[f"enc.{i}.W"] + P[f"enc.{i}.b"]
        out.append(z)
        h = activation_forward(m.activation, z)
    ml = h @ P["enc.head.W"] + P["enc.head.b"]
    if m.mode == "ae":
        h = ml
    else:
        h = ml[:, :L] + np.exp(0.5 * ml[:, L:]) * backend.to_host(eps)
    for i in range(len(m.hidden)):
        z = h @ P[f"dec.{i}.W"] + P[f"dec.{i}.b"]
        out.append(z)
        h = activation_forward(m.activation, z)
    return np.concatenate([o.ravel() for o in out]) if out else np.array([1.0])


CASES = [
    dict(likelihood="bernoulli"),
    dict(likelihood="bernoulli", beta=0.25),
    dict(likelihood="bernoulli", beta=4.0, hidden=(5,)),
    dict(likelihood="bernoulli", hidden=()),
    dict(likelihood="gaussian", sigma=1.0),
    dict(likelihood="gaussian", sigma="fixed:0.3"),
    dict(likelihood="gaussian", sigma="shared"),
    dict(likelihood="gaussian", sigma="per-pixel", beta=2.0),
    dict(likelihood="bernoulli", mode="ae"),
    dict(likelihood="gaussian", sigma="shared", mode="ae"),
    dict(likelihood="bernoulli", mode="kl-only"),
    dict(likelihood="gaussian", sigma="per-pixel", mode="kl-only", beta=0.5),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_model_gradients(case, backend):
    m, x, eps = make(backend, **case)
    err = gradcheck_model(m, x, eps=eps)
    assert set(err) == set(m.params)
    assert max(err.values()) <= TOL, err


@pytest.mark.parametrize("activation", ["relu", "leaky_relu", "tanh", "sigmoid", "softplus"])
def test_model_gradients_each_activation(activation, backend):
    m, x, eps = make(backend, activation=activation, seed=3)
    assert np.min(np.abs(preactivations(m, x, eps, backend))) > 10 * DEFAULT_H
    err = gradcheck_model(m, x, eps=eps)
    assert max(err.values()) <= TOL, err


def test_denoising_target(backend):
    """With a separate target the gradient is of −log p(target | z) for z from q(z | x)."""
    m, x, eps = make(backend, seed=4)
    target = backend.asarray(np.random.default_rng(9).uniform(size=(N, D)))
    err = gradcheck_model(m, x, eps=eps, target=target)
    assert max(err.values()) <= TOL, err


def test_kl_only_decoder_gradients_are_zero(backend):
    m, x, eps = make(backend, mode="kl-only")
    res = m.loss_and_grads(x, eps=eps)
    for k, g in res.grads.items():
        if k.startswith("dec."):
            assert not np.any(backend.to_host(g)), k
    assert float(res.objective) == pytest.approx(float(res.kl))
    assert float(res.recon) > 0


def test_workspace_reuse_is_exact(backend):
    """Two calls at the same shape (the second reuses every buffer) give identical results."""
    m, x, eps = make(backend, likelihood="gaussian", sigma="per-pixel")
    r1 = m.loss_and_grads(x, eps=eps)
    g1 = {k: backend.to_host(v).copy() for k, v in r1.grads.items()}
    o1 = float(r1.objective)
    m.loss_and_grads(x[:3], eps=eps[:3])  # another shape in between
    r2 = m.loss_and_grads(x, eps=eps)
    assert float(r2.objective) == o1
    for k in g1:
        np.testing.assert_array_equal(backend.to_host(r2.grads[k]), g1[k])


def test_float32_close_to_float64(backend):
    """The float32 training path computes the same function as the float64 one."""
    m64, x, eps = make(backend, likelihood="bernoulli")
    m32 = VAE(input_dim=D, hidden=(6, 4), latent=L, activation="tanh", dtype="float32", backend=backend)
    m32.set_params(m64.host_params())
    r64 = m64.loss_and_grads(x, eps=eps)
    r32 = m32.loss_and_grads(x.astype("float32"), eps=eps.astype("float32"))
    assert float(r32.objective) == pytest.approx(float(r64.objective), rel=1e-5)
    for k in m64.params:
        a, b = backend.to_host(r32.grads[k]), backend.to_host(r64.grads[k])
        assert np.linalg.norm(a - b) <= 1e-4 * max(np.linalg.norm(b), 1e-6), k


def test_a_step_across_a_relu_kink_is_left_out_and_counted():
    """A hidden pre-activation planted 0.3 h from 0: the difference step of the weights that move
    it crosses the kink, and its quotient is no derivative (its error is the jump in slope).
    gradcheck_model counts those coordinates apart and checks the rest to 1e-7."""
    m, x, eps = make(NUMPY, activation="relu", seed=3)
    xh = NUMPY.to_host(x)
    a = xh @ m.params["enc.0.W"] + m.params["enc.0.b"]
    m.params["enc.0.b"][2] -= a[1, 2] - 0.3 * DEFAULT_H                 # row 1, unit 2: a = 0.3 h
    plain = gradcheck_model(m, x, eps=eps, kinks=False)
    assert plain["enc.0.W"] > 1e-3 and plain.kinks == {k: 0 for k in m.params}
    err = gradcheck_model(m, x, eps=eps)
    crossed = np.abs(xh[1]) * DEFAULT_H > 0.3 * DEFAULT_H       # the W[d, 2] whose step moves a by h·|x_1d|
    assert err.kinks["enc.0.W"] >= int(crossed.sum()) and err.kinks["enc.0.b"] == 1
    assert err.checked["enc.0.W"] == m.params["enc.0.W"].size - err.kinks["enc.0.W"]
    assert max(err.values()) <= TOL and err.ok(), err

