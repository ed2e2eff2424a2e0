"""Layer 6: the model's loss and every gradient against PyTorch and JAX autograd, in float64.

The same float64 parameters and the same ε go through a loss written here from the textbook
formulas, in each framework's own array operations, and the framework differentiates it:
S assembled with einsum from one-hot matrices as S_ij = c·o_ij below the diagonal and e^{d_i} on
it (c the model's ``offdiag_scale``), z = μ + Sε or μ + e^{½ lv} ε, the KL as
½ Σ (e^{2d} − 1 − 2d + μ²) + ½ Σ (c·o)², the Bernoulli NLL through logaddexp, the Gaussian one
with its soft-floored log σ, the bound with the framework's logsumexp. scratchvae's
hand-derived gradients must match every parameter to a relative error ≤ 1e-10 (float64
rounding leaves about 1e-15).

CI installs the ``reference`` extra (a pinned ``jax[cpu]``) and sets
``SCRATCHVAE_REQUIRE_REFERENCE=1``, so the JAX half runs there and a missing JAX fails rather
than skips: a reference that drifts from the model fails CI. PyTorch runs where installed.
"""

import math
import os

import numpy as np
import pytest

from scratchvae import VAE
from scratchvae.ops.likelihoods import LOG_SIGMA_FLOOR

N, D, L, HIDDEN = 5, 9, 3, (6, 4)
TOL = 1e-10
CASES = {
    "diagonal-elbo": {},
    "diagonal-elbo-beta": {"beta": 0.4},
    "full-elbo": {"posterior": "full"},
    "full-elbo-c1": {"posterior": "full", "offdiag_scale": 1.0},
    "full-iwae-3": {"posterior": "full", "objective": "iwae", "iw_samples": 3},
    "diagonal-iwae-4": {"objective": "iwae", "iw_samples": 4},
    "full-iwae-1": {"posterior": "full", "objective": "iwae", "iw_samples": 1},
    "gaussian-fixed": {"likelihood": "gaussian", "sigma": 0.7},
    "gaussian-per-pixel": {"likelihood": "gaussian", "sigma": "per-pixel"},
    "gaussian-shared-iwae-3": {"likelihood": "gaussian", "sigma": "shared", "objective": "iwae", "iw_samples": 3},
    "kl-only": {"mode": "kl-only", "beta": 2.0},
    "ae": {"mode": "ae"},
    "two-layer-elbo": {"latent": (L, 2), "hidden": (HIDDEN, (5,))},
    "two-layer-elbo-beta": {"latent": (L, 2), "hidden": (HIDDEN, (5, 3)), "beta": 0.4},
    "two-layer-gaussian-per-pixel": {"latent": (L, 2), "hidden": (HIDDEN, (5,)), "likelihood": "gaussian",
                                     "sigma": "per-pixel"},
    "two-layer-iwae-1": {"latent": (L, 2), "hidden": (HIDDEN, (5,)), "objective": "iwae", "iw_samples": 1},
    "two-layer-iwae-3": {"latent": (L, 2), "hidden": (HIDDEN, (5, 3)), "objective": "iwae", "iw_samples": 3},
    "three-layer-iwae-2": {"latent": (L, 2, 2), "hidden": (HIDDEN, (5,), (4,)), "objective": "iwae",
                           "iw_samples": 2, "likelihood": "gaussian", "sigma": "shared"},
}


def _required(name):
    if os.environ.get("SCRATCHVAE_REQUIRE_REFERENCE") == "1" and name == "jax":
        return __import__(name)          # CI: an ImportError fails the test instead of skipping it
    return pytest.importorskip(name)


def torch_ops():
    torch = _required("torch")
    return {"tensor": lambda a: torch.tensor(a, dtype=torch.float64, requires_grad=True),
            "const": lambda a: torch.tensor(a, dtype=torch.float64), "tanh": torch.tanh, "exp": torch.exp,
            "logaddexp": torch.logaddexp, "einsum": torch.einsum, "lse0": lambda a: torch.logsumexp(a, dim=0),
            "sum": lambda a, axis=None: a.sum() if axis is None else a.sum(dim=axis)}


def jax_ops():
    jax = _required("jax")
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    from jax.scipy.special import logsumexp

    return {"tensor": lambda a: jnp.asarray(a, dtype=jnp.float64), "const": lambda a: jnp.asarray(a, dtype=jnp.float64),
            "tanh": jnp.tanh, "exp": jnp.exp, "logaddexp": jnp.logaddexp, "einsum": jnp.einsum,
            "lse0": lambda a: logsumexp(a, axis=0), "sum": lambda a, axis=None: jnp.sum(a, axis=axis)}


def reference_sample(F, head, eps, m):
    """(z (K, N, L), closed-form KL, log |det ∂z/∂ε| (N,)) of the model's posterior."""
    mu, s = head[:, :L], head[:, L:2 * L]
    if m.mode == "ae":
        return mu[None], 0.0, None
    if m.posterior.name == "full":
        c = m.posterior.offdiag_scale
        rows, cols = np.tril_indices(L, -1)
        E = np.zeros((len(rows), L, L))
        E[np.arange(len(rows)), rows, cols] = c          # S_ij = c·o_ij below the diagonal
        o = head[:, 2 * L:]
        S = F["einsum"]("nk,kij->nij", o, F["const"](E)) + F["einsum"]("ni,iij->nij", F["exp"](s), F["const"](
            np.eye(L)[:, :, None] * np.eye(L)[:, None, :]))
        kl = 0.5 * F["sum"](F["exp"](2 * s) - 1 - 2 * s + mu * mu) + 0.5 * F["sum"]((c * o) * (c * o))
        return mu + F["einsum"]("nij,knj->kni", S, eps), kl, F["sum"](s, axis=1)
    kl = 0.5 * F["sum"](F["exp"](s) - 1 - s + mu * mu)
    return mu + F["exp"](0.5 * s) * eps, kl, 0.5 * F["sum"](s, axis=1)


def reference_nll(F, P, y, x, m):
    """−log p(x|y) per (sample, image) (K, N): Bernoulli on logits, or Gaussian."""
    if m.likelihood.name == "bernoulli":
        return F["sum"](F["logaddexp"](0.0 * y, y) - x * y, axis=2)
    if m.likelihood.learned:
        u = P["dec.logsigma"] - LOG_SIGMA_FLOOR
        log_sigma = LOG_SIGMA_FLOOR + F["logaddexp"](0.0 * u, u)        # the soft floor
    else:
        log_sigma = F["const"](math.log(m.likelihood.value))
    terms = 0.5 * math.log(2 * math.pi) + log_sigma + 0.5 * (y - x) ** 2 * F["exp"](-2.0 * log_sigma)
    return F["sum"](terms, axis=2)


def reference_loss(F, P, x, eps, m):
    """The model's objective (batch sum) from the textbook formulas; eps (K, N, L)."""
    h = x
    for i in range(len(HIDDEN)):
        h = F["tanh"](h @ P[f"enc.{i}.W"] + P[f"enc.{i}.b"])
    z, kl, log_det = reference_sample(F, h @ P["enc.head.W"] + P["enc.head.b"], eps, m)
    g = z
    for i in range(len(HIDDEN)):
        g = F["tanh"](g @ P[f"dec.{i}.W"] + P[f"dec.{i}.b"])
    nll = reference_nll(F, P, g @ P["dec.out.W"] + P["dec.out.b"], x, m)
    if m.mode == "ae":
        return F["sum"](nll)
    if m.mode == "kl-only":
        return m.beta * kl
    if m.objective.name == "elbo":
        return F["sum"](nll) + m.beta * kl
    logw = -nll - 0.5 * F["sum"](z * z, axis=2) + 0.5 * F["sum"](eps * eps, axis=2) + log_det
    return -F["sum"](F["lse0"](logw) - math.log(eps.shape[0]))


def _stack(F, P, prefix, h, depth, last="head"):
    """The tanh trunk ``prefix`` of ``depth`` hidden layers and its last layer, on h (…, I)."""
    for i in range(depth):
        h = F["tanh"](h @ P[f"{prefix}.{i}.W"] + P[f"{prefix}.{i}.b"])
    return h @ P[f"{prefix}.{last}.W"] + P[f"{prefix}.{last}.b"]


def reference_chain_loss(F, P, x, eps, m):
    """The objective of a model of several stochastic layers from the textbook formulas; eps one
    (K, N, L_l) array per layer. Each density is written in h, not in ε: log N(h; μ, diag e^{lv})
    = −½ Σ (log 2π + lv + (h − μ)² e^{−lv}); the ELBO takes the top layer's KL to N(0, I) in
    closed form, the bound every term as sampled."""
    def log_normal(h, mu, lv):
        return -0.5 * F["sum"](math.log(2 * math.pi) + lv + (h - mu) ** 2 * F["exp"](-lv), axis=-1)

    settings = m.settings
    head = _stack(F, P, "enc", x, len(settings.hidden[0]))
    qs, hs = [], []
    for layer, (L_l, e) in enumerate(zip(settings.latents, eps)):
        if layer:
            head = _stack(F, P, f"enc{layer + 1}", hs[-1], len(settings.hidden[layer]))
        mu, lv = head[..., :L_l], head[..., L_l:]
        hs.append(mu + F["exp"](0.5 * lv) * e)
        qs.append((mu, lv))
    log_q = sum(log_normal(h, mu, lv) for h, (mu, lv) in zip(hs, qs))
    log_p = log_normal(hs[-1], 0.0 * hs[-1], 0.0 * hs[-1])
    for layer in range(1, len(hs)):
        prior = _stack(F, P, f"prior{layer}", hs[layer], len(settings.hidden[layer]))
        L_l = settings.latents[layer - 1]
        log_p = log_p + log_normal(hs[layer - 1], prior[..., :L_l], prior[..., L_l:])
    nll = reference_nll(F, P, _stack(F, P, "dec", hs[0], len(settings.hidden[0]), "out"), x, m)
    if m.objective.name == "elbo":
        mu, lv = qs[-1]
        top = log_q - log_normal(hs[-1], *qs[-1]) - (log_p - log_normal(hs[-1], 0.0 * mu, 0.0 * mu))
        return F["sum"](nll) + m.beta * (F["sum"](top) + 0.5 * F["sum"](F["exp"](lv) - 1 - lv + mu * mu))
    logw = -nll + log_p - log_q
    return -F["sum"](F["lse0"](logw) - math.log(eps[0].shape[0]))


def reference(F, P, x, eps, m):
    return (reference_loss if m.chain is None else reference_chain_loss)(F, P, x, eps, m)


def ours(case):
    m = VAE(**{"input_dim": D, "hidden": HIDDEN, "latent": L, "activation": "tanh", "dtype": "float64", "seed": 7,
               **CASES[case]})
    r = np.random.default_rng(8)
    m.set_params({k: r.normal(size=s) * (1.5 / np.sqrt(s[0]) if len(s) == 2 else 0.3) for k, s in m.shapes.items()})
    x = r.uniform(size=(N, D))
    if m.chain is None:
        eps = r.normal(size=m.eps_shape(N))
        res = m.loss_and_grads(x, eps=eps)
        eps = eps.reshape(-1, N, L)
    else:
        eps = tuple(r.normal(size=s) for s in m.eps_shape(N))
        res = m.loss_and_grads(x, eps=eps)
        eps = tuple(e.reshape(-1, N, e.shape[-1]) for e in eps)
    return m, m.host_params(), x, eps, float(res.objective), {k: v.copy() for k, v in res.grads.items()}


def _const(F, eps):
    return tuple(F["const"](e) for e in eps) if isinstance(eps, tuple) else F["const"](eps)


def rel(a, b):
    return float(np.max(np.abs(np.asarray(a) - b)) / max(np.max(np.abs(b)), 1e-300))


def check(value, grads, loss, reference_grads):
    assert rel(loss, value) <= TOL, (loss, value)
    errors = {k: rel(grads[k], reference_grads[k]) for k in grads}
    assert max(errors.values()) <= TOL, errors


@pytest.mark.parametrize("case", list(CASES))
def test_matches_torch(case):
    F = torch_ops()
    m, P, x, eps, value, grads = ours(case)
    T = {k: F["tensor"](v) for k, v in P.items()}
    loss = reference(F, T, F["const"](x), _const(F, eps), m)
    loss.backward()
    unreached = np.zeros                 # torch leaves None where the loss does not reach (KL-only's decoder)
    check(value, grads, float(loss.detach()), {k: unreached(P[k].shape) if T[k].grad is None else T[k].grad.numpy()
                                               for k in P})


@pytest.mark.parametrize("case", list(CASES))
def test_matches_jax(case):
    F = jax_ops()
    import jax

    m, P, x, eps, value, grads = ours(case)
    T = {k: F["tensor"](v) for k, v in P.items()}
    loss, g = jax.value_and_grad(lambda T: reference(F, T, F["const"](x), _const(F, eps), m))(T)
    check(value, grads, float(loss), {k: np.asarray(g[k]) for k in P})
