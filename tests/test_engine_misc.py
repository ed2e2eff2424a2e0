"""Engine checks beyond gradients: a hand-worked example, workspaces, backends, errors."""

import math
import subprocess
import sys

import numpy as np
import pytest

import scratchvae
from scratchvae import VAE, Adam, ops
from scratchvae.backend import get_backend
from scratchvae.errors import BackendError, InputError

from _alloc import peak_bytes, threshold


def test_hand_worked_example():
    """Layer 3: a linear VAE with D = 2, L = 1, every number worked out with scalar math.

    enc.head.W = [[0.5, −1.0], [0.0, 0.5]], b = [0.1, −0.2], x = [1, 0]
      -> μ = 0.5 + 0.1 = 0.6,  logvar = −1.0 − 0.2 = −1.2,  σ = e^{−0.6}
    ε = 0.5 -> z = 0.6 + 0.5 e^{−0.6} = 0.874405818...
    KL = ½ (e^{−1.2} + 0.6² − 1 + 1.2) = ½ (0.3011942119 + 0.56) = 0.4305971059...
    dec.out.W = [[2, −1]], b = [0, 0.5] -> y = [2z, 0.5 − z]
    recon = softplus(y₁) − y₁ + softplus(y₂) = softplus(−y₁) + softplus(y₂)
    """
    m = VAE(input_dim=2, hidden=(), latent=1, dtype="float64")
    m.set_params({"enc.head.W": np.array([[0.5, -1.0], [0.0, 0.5]]), "enc.head.b": np.array([0.1, -0.2]),
                  "dec.out.W": np.array([[2.0, -1.0]]), "dec.out.b": np.array([0.0, 0.5])})
    x, eps = np.array([[1.0, 0.0]]), np.array([[0.5]])
    res = m.loss_and_grads(x, eps=eps)

    sp = lambda t: math.log1p(math.exp(t))  # noqa: E731  (moderate t only)
    sg = lambda t: 1 / (1 + math.exp(-t))  # noqa: E731
    mu, lv = 0.6, -1.2
    s = math.exp(0.5 * lv)
    z = mu + s * 0.5
    assert z == pytest.approx(0.8744058180470131, rel=1e-15)
    kl = 0.5 * (math.exp(lv) + mu * mu - 1 - lv)
    assert kl == pytest.approx(0.430597105956101, rel=1e-15)
    y1, y2 = 2 * z, 0.5 - z
    recon = sp(-y1) + sp(y2)
    assert float(res.kl) == pytest.approx(kl, rel=1e-14)
    assert float(res.recon) == pytest.approx(recon, rel=1e-14)
    assert float(res.neg_elbo) == pytest.approx(recon + kl, rel=1e-14)
    # backward, by the chain rule written out
    d1, d2 = sg(y1) - 1.0, sg(y2) - 0.0          # dy = σ(y) − x
    dz = 2 * d1 - 1 * d2                          # dy · Wᵀ
    dmu = dz + mu                                 # + ∂KL/∂μ
    dlv = 0.5 * dz * 0.5 * s + 0.5 * (math.exp(lv) - 1)
    g = {k: v for k, v in res.grads.items()}
    np.testing.assert_allclose(g["dec.out.W"], [[z * d1, z * d2]], rtol=1e-13)
    np.testing.assert_allclose(g["dec.out.b"], [d1, d2], rtol=1e-13)
    np.testing.assert_allclose(g["enc.head.W"], [[dmu, dlv], [0.0, 0.0]], rtol=1e-13)
    np.testing.assert_allclose(g["enc.head.b"], [dmu, dlv], rtol=1e-13)


MODEL_KINDS = {
    "relu": {}, "leaky_relu": {"activation": "leaky_relu"}, "tanh": {"activation": "tanh"},
    "sigmoid": {"activation": "sigmoid"}, "softplus": {"activation": "softplus"},
    "gaussian-fixed": {"likelihood": "gaussian"}, "gaussian-shared": {"likelihood": "gaussian", "sigma": "shared"},
    "gaussian-per-pixel": {"likelihood": "gaussian", "sigma": "per-pixel"},
    "ae": {"mode": "ae"}, "kl-only": {"mode": "kl-only"}, "full": {"posterior": "full"},
    "iwae-bernoulli": {"objective": "iwae", "iw_samples": 5},
    "iwae-gaussian": {"objective": "iwae", "iw_samples": 5, "likelihood": "gaussian", "sigma": "per-pixel"},
    "iwae-full": {"objective": "iwae", "iw_samples": 5, "posterior": "full"},
    "two-layer": {"latent": (20, 10), "hidden": ((400,), (100,))},
    "two-layer-iwae": {"latent": (20, 10), "hidden": ((400,), (100,)), "objective": "iwae", "iw_samples": 5},
    "two-layer-iwae-gaussian": {"latent": (20, 10), "hidden": ((400,), (100,)), "objective": "iwae",
                                "iw_samples": 5, "likelihood": "gaussian", "sigma": "per-pixel"},
}
"""Every kind of model a step trains, at the 784-400-20 size (two layers: 20 and 10 latents, the
second's trunks of 100)."""


@pytest.mark.parametrize("kind", list(MODEL_KINDS))
def test_step_allocates_nothing_large(kind, fused_path):
    """Every activation, likelihood, mode, posterior and objective, with the Numba twins and with
    the NumPy bodies: a warmed-up Adam step allocates less than one (B, L) array (tests/_alloc.py)."""
    m = VAE(**{"hidden": (400,), "latent": 20, "seed": 0, **MODEL_KINDS[kind]})
    assert_step_allocates_nothing_large(m, Adam(m.theta, lr=1e-3))


def _batch(n):
    return np.random.default_rng(0).uniform(size=(n, 784)).astype(np.float32)


def _steps(m, opt, x, count):
    for _ in range(count):
        res = m.loss_and_grads(x)
        opt.step(m.grad)
        float(res.objective)


def assert_step_allocates_nothing_large(m, opt, batch=128):
    """After three warm-up steps (workspaces, optimizer state and scratch), five steps at
    ``batch`` (loss_and_grads, opt.step, reading the loss) stay under the threshold of
    tests/_alloc.py at their peak."""
    x = _batch(batch)
    _steps(m, opt, x, 3)
    peak = peak_bytes(lambda: _steps(m, opt, x, 5))
    assert peak < threshold(m, batch), f"five steps allocated {peak} bytes at their peak"


@pytest.mark.parametrize("kind", ["relu", "full"])
def test_numpy_buffers_do_not_grow_with_the_batch(kind):
    """With NumPy's default ufunc buffers (8192 elements per operand) an ELBO step's peak is
    NumPy's iteration buffers for strided views, min(bufsize, elements) per operand: they fill up
    with the batch and then stop, so the peak at batch 4096 is the peak at batch 1024.
    (tests/_alloc.py holds these buffers small; an importance-weighted step also makes a few
    vectors of K·B entries, which the rule there allows.)"""
    peaks = []
    for batch in (1024, 4096):
        m = VAE(hidden=(400,), latent=20, seed=0, **MODEL_KINDS[kind])
        opt = Adam(m.theta, lr=1e-3)
        x = _batch(batch)
        _steps(m, opt, x, 2)
        peaks.append(peak_bytes(lambda: _steps(m, opt, x, 1), bufsize=np.getbufsize()))
    assert abs(peaks[1] - peaks[0]) < threshold(m, 128), peaks


def test_the_allocation_threshold_catches_a_batch_sized_temporary():
    """The measurement is not blind: one (B, L) temporary per step crosses the threshold."""
    m = VAE(hidden=(400,), latent=20, seed=0)
    opt = Adam(m.theta, lr=1e-3)
    step = m.loss_and_grads
    m.loss_and_grads = lambda x: (np.ones((x.shape[0], m.latent), m.dtype), step(x))[1]
    with pytest.raises(AssertionError, match="allocated"):
        assert_step_allocates_nothing_large(m, opt)


SPENT_CASES = {"diagonal-elbo": {}, "full-elbo": {"posterior": "full"},
               "diagonal-iwae": {"objective": "iwae", "iw_samples": 3},
               "full-iwae": {"posterior": "full", "objective": "iwae", "iw_samples": 3}}


@pytest.mark.parametrize("case", list(SPENT_CASES))
def test_dz_is_spent_and_nothing_reads_it_after_the_posteriors_backward(case, fused_path):
    """The contract of scratchvae.posteriors: after backward (and iw_backward) only dhead holds
    a result. Poisoning dz with NaN right after each call changes no loss and no gradient, for
    both families and both objectives, with the twins and with the NumPy bodies."""
    def run(poison):
        m = VAE(input_dim=12, hidden=(7,), latent=4, dtype="float64", seed=5, **SPENT_CASES[case])
        poisoned = []
        for name in ("backward", "iw_backward"):
            def spent(dz, *args, _call=getattr(m.posterior, name)):
                _call(dz, *args)
                if poison:
                    dz[...] = np.nan
                    poisoned.append(dz)
            setattr(m.posterior, name, spent)
        x = np.random.default_rng(2).uniform(size=(6, 12))
        res = m.loss_and_grads(x)
        assert len(poisoned) == poison * (1 if m.objective.samples == 1 and m.objective.name == "elbo" else 2)
        return float(res.objective), {k: v.copy() for k, v in res.grads.items()}

    (loss, grads), (loss_p, grads_p) = run(False), run(True)
    assert loss_p == loss
    for k in grads:
        np.testing.assert_array_equal(grads_p[k], grads[k], err_msg=k)


def test_parameters_and_gradients_are_views_of_flat_buffers():
    m = VAE(input_dim=6, hidden=(4,), latent=2)
    for k in m.params:
        assert np.shares_memory(m.params[k], m.theta) and np.shares_memory(m.grads[k], m.grad)
        assert m.params[k].flags.c_contiguous
    assert m.shapes["enc.head.W"] == (4, 4)           # the fused (H, 2L) head
    assert VAE(input_dim=6, hidden=(4,), latent=2, mode="ae").shapes["enc.head.W"] == (4, 2)


def test_pytorch_linear_initialisation_bounds():
    m = VAE(input_dim=784, hidden=(400,), latent=20, seed=3)
    for k, v in m.params.items():
        fan_in = m.shapes[k[:-1] + "W"][0]
        bound = 1 / math.sqrt(fan_in)
        assert np.max(np.abs(v)) <= bound
        if v.size > 1000:  # uniform: the max is near the bound and the spread is bound/√3
            assert np.max(np.abs(v)) > 0.99 * bound
            assert np.std(v) == pytest.approx(bound / math.sqrt(3), rel=0.02)
    again = VAE(input_dim=784, hidden=(400,), latent=20, seed=3)
    np.testing.assert_array_equal(again.theta, m.theta)
    assert not np.array_equal(VAE(input_dim=784, hidden=(400,), latent=20, seed=4).theta, m.theta)


def test_verbs_shapes():
    m = VAE(input_dim=10, hidden=(8, 6), latent=3, seed=1)
    x = np.random.default_rng(0).uniform(size=(4, 10)).astype(np.float32)
    mu, lv = m.encode(x)
    assert mu.shape == lv.shape == (4, 3) and mu.dtype == np.float32
    z = m.reparameterize(mu, lv)
    assert z.shape == (4, 3) and z.dtype == np.float32
    assert m.decode(z).shape == (4, 10)
    s = m.sample(5)
    assert s.shape == (5, 10) and np.all((s > 0) & (s < 1))
    d = m.sample(5, draw=True)
    assert set(np.unique(d)) <= {0.0, 1.0}
    r = m.reconstruct(x)
    assert r.shape == (4, 10)
    res = m.loss_and_grads(x)
    ps = res.per_sample()
    assert ps["objective"] == pytest.approx(float(res.objective) / 4)
    # encode agrees with the training path's head output
    eps = np.zeros((4, 3), np.float32)
    res0 = m.loss_and_grads(x, eps=eps)
    mu2, _ = m.encode(x)
    np.testing.assert_allclose(m.workspace(4).q.z, mu2, rtol=1e-6)
    assert res0.grads is m.grads


def test_bad_input_errors():
    m = VAE(input_dim=10, hidden=(4,), latent=2)
    with pytest.raises(InputError, match=r"x must have shape \(N, 10\), got \(3, 2, 5\)"):
        m.loss_and_grads(np.zeros((3, 2, 5), np.float32))
    with pytest.raises(InputError, match="dtype float32"):
        m.loss_and_grads(np.zeros((3, 10), np.float64))
    with pytest.raises(InputError, match=r"eps must be a float32 array of shape \(3, 2\)"):
        m.loss_and_grads(np.zeros((3, 10), np.float32), eps=np.zeros((3, 3), np.float32))
    with pytest.raises(BackendError, match="must be a numpy array"):
        m.loss_and_grads([[0.0] * 10])
    for kw, msg in [(dict(latent=0), "latent must be a positive integer"),
                    (dict(activation="gelu"), "activation must be one of"),
                    (dict(likelihood="poisson"), "likelihood must be one of"),
                    (dict(mode="vq"), "mode must be one of"),
                    (dict(sigma=-1.0), "sigma must be positive"),
                    (dict(sigma="fixed:abc"), "sigma must be 'fixed:V'"),
                    (dict(dtype="float16"), "dtype must be one of"),
                    (dict(beta=float("nan")), "beta must be a finite number")]:
        with pytest.raises(InputError, match=msg):
            VAE(input_dim=10, hidden=(4,), **kw)
    with pytest.raises(InputError, match="backend must be one of"):
        get_backend("jax")
    with pytest.raises(InputError, match="lr must be"):
        Adam(m.theta, lr=-1)


def test_backend_auto_and_check():
    b = get_backend("auto")
    assert b.name in ("numpy", "cupy")
    assert "numpy" in scratchvae.available_backends()
    nb = get_backend("numpy")

    class NotAnArray:
        pass

    with pytest.raises(BackendError, match="must be a numpy array .* got .*NotAnArray"):
        nb.check("x", NotAnArray())


def test_import_does_not_import_cupy():
    code = "import sys, scratchvae; print('cupy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_sgd_step_allocates_nothing_large():
    """SGD with momentum updates the flat buffer through its own scratch, like Adam."""
    from scratchvae import SGD

    m = VAE(hidden=(400,), latent=20, seed=0)
    assert_step_allocates_nothing_large(m, SGD(m.theta, lr=1e-3, momentum=0.9))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_fused_blocks_fold_in_the_bias_exactly(dtype):
    """bias=b in the Bernoulli and reparam+KL blocks is the block on (y + b): the same bits."""
    r = np.random.default_rng(0)
    y, x = r.normal(size=(5, 12)).astype(dtype), r.uniform(size=(5, 12)).astype(dtype)
    b = r.normal(size=12).astype(dtype)
    d1, d2 = np.empty_like(y), np.empty_like(y)
    want = ops.bernoulli_nll_forward_backward(y + b, x, d1, np.empty_like(y))
    y_kept = y.copy()
    got = ops.bernoulli_nll_forward_backward(y_kept, x, d2, np.empty_like(y), bias=b)
    assert got == want and np.array_equal(d1, d2)
    np.testing.assert_array_equal(y_kept, y)              # not overwrite_logits: y untouched
    ml, eps = r.normal(size=(5, 8)).astype(dtype), r.normal(size=(5, 4)).astype(dtype)
    hb = r.normal(size=8).astype(dtype)
    bufs1, bufs2 = ([np.empty((5, 4), dtype) for _ in range(3)] for _ in range(2))
    ml1, ml2 = ml + hb, ml.copy()
    kl1 = ops.reparam_kl_forward(ml1, eps, *bufs1)
    kl2 = ops.reparam_kl_forward(ml2, eps, *bufs2, bias=hb)
    assert kl1 == kl2 and np.array_equal(ml1, ml2)        # ml + bias, in place
    for a1, a2 in zip(bufs1[:2], bufs2[:2]):
        np.testing.assert_array_equal(a1, a2)
