"""Several stochastic layers (scratchvae.hierarchy, scratchvae.ops.hierarchy).

- Every gradient against float64 central differences: the conditional-prior blocks alone, and
  the model's ELBO and importance-weighted bound (K ∈ {1, 3}) with both likelihoods, two and
  three layers, β a number or a schedule's array.
- K = 1: the bound is the single-sample ELBO with every term sampled (the top layer's KL too),
  its value and its gradients, against the evaluation's own formula of log w.
- Training's log-weights equal evaluation's (``Chain.log_weights``), row by row.
- A linear-Gaussian two-layer model whose exact posteriors are diagonal, with q set to them:
  every log w is the closed-form log p(x) (to 1e-10); with general linear parameters the
  importance-sampled estimate rises with K and reaches log p(x) within its standard error at
  K = 5000.
- The settings that do not chain are refused by name.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from scratchvae import VAE, gradcheck, gradcheck_model
from scratchvae.errors import InputError
from scratchvae.ops.hierarchy import cond_prior_backward, cond_prior_forward

TOL = 1e-7
D, N = 7, 4
LAYERS = dict(latent=(3, 2), hidden=((6, 4), (5,)))


def make(backend, seed=0, **kw):
    """A float64 model of two (or, with ``latent``/``hidden``, more) layers with O(1) gradients."""
    m = VAE(**{"input_dim": D, "activation": "tanh", "dtype": "float64", "seed": seed, "backend": backend,
               **LAYERS, **kw})
    r = np.random.default_rng(seed)
    m.set_params({k: r.normal(size=s) * (1.5 / np.sqrt(s[0]) if len(s) == 2 else 0.3) for k, s in m.shapes.items()})
    return m, backend.asarray(r.uniform(size=(N, D)))


# -- the conditional prior's blocks ----------------------------------------------------------------
@pytest.mark.parametrize("weights", ["number", "rows"])
def test_cond_prior_blocks_gradients(weights):
    """∂ of Σ_r w_r ½ Σ_j (r_j² + lv_p,j) by the backward block equals central differences, with
    one lv_p past the clamp (its gradient 0, as the forward does not move there)."""
    r = np.random.default_rng(1)
    n, L = 5, 3
    head, h, bias = r.normal(size=(n, 2 * L)), r.normal(size=(n, L)), r.normal(size=2 * L) * 0.3
    head[2, L + 1] = 40.0                                  # clamped: lv_p = 30 wherever it moves
    w = 0.7 if weights == "number" else r.uniform(0.1, 1.0, size=n)

    def f():
        hd = head.copy()
        out = cond_prior_forward(hd, h, np.empty(n), np.empty((n, L)), np.empty((n, L)), bias=bias)
        return float(np.sum(out * w))

    hd = head.copy()
    cond_prior_forward(hd, h, np.empty(n), np.empty((n, L)), np.empty((n, L)), bias=bias)
    dhead, dh = np.empty((n, 2 * L)), np.full((n, L), 0.25)
    cond_prior_backward(hd, h, w, dhead, dh, np.empty((n, L)))
    assert dhead[2, L + 1] == 0.0
    err = gradcheck(f, {"head": head, "h": h, "bias": bias},
                    {"head": dhead, "h": dh - 0.25, "bias": dhead.sum(axis=0)})
    assert max(err.values()) <= TOL, err


def test_cond_prior_forward_is_the_negative_log_density():
    """The forward's rows plus ½ L log 2π are −log N(h; μ_p, diag e^{lv_p})."""
    r = np.random.default_rng(2)
    n, L = 6, 4
    head, h = r.normal(size=(n, 2 * L)), r.normal(size=(n, L))
    mu, lv = head[:, :L].copy(), head[:, L:].copy()
    out = cond_prior_forward(head.copy(), h, np.empty(n), np.empty((n, L)), np.empty((n, L)))
    want = 0.5 * np.sum(np.log(2 * np.pi) + lv + (h - mu) ** 2 / np.exp(lv), axis=1)
    np.testing.assert_allclose(out + 0.5 * L * math.log(2 * math.pi), want, rtol=1e-14)


# -- the model's gradients --------------------------------------------------------------------------
CASES = [dict(), dict(beta=0.5), dict(likelihood="gaussian", sigma="per-pixel"),
         dict(objective="iwae", iw_samples=1), dict(objective="iwae", iw_samples=3),
         dict(objective="iwae", iw_samples=3, likelihood="gaussian", sigma="shared"),
         dict(objective="iwae", iw_samples=1, likelihood="gaussian", sigma=0.5),
         dict(latent=(3, 2, 2), hidden=((6,), (4,), (3, 3))),
         dict(latent=(3, 2, 2), hidden=((6,), (4,), ()), objective="iwae", iw_samples=3)]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()) or "elbo")
def test_model_gradients(case, backend):
    m, x = make(backend, **case)
    err = gradcheck_model(m, x)              # its own fixed ε, one array per layer
    assert set(err) == set(m.params) and any(k.startswith("prior1.") for k in err)
    assert max(err.values()) <= TOL, err


def test_gradients_with_a_schedules_beta(backend):
    """β as a training schedule passes it (a float64 array of one value) weighs every layer's term."""
    m, x = make(backend, seed=3)
    eps = m.noise(N, m.rng["noise"])
    beta = backend.asarray(np.array([0.3]))
    g = {k: backend.to_host(v).copy() for k, v in m.loss_and_grads(x, eps=eps, beta=beta).grads.items()}
    err = gradcheck(lambda: m.loss_and_grads(x, eps=eps, beta=beta, need_grads=False).objective, m.params, g)
    assert max(err.values()) <= TOL, err
    r = m.loss_and_grads(x, eps=eps, beta=0.3, need_grads=False)
    assert float(r.objective) == pytest.approx(float(r.recon) + 0.3 * float(r.kl), rel=1e-14)


# -- K = 1, and training's log w against evaluation's ------------------------------------------------
def _rows_by_image(eps):
    """Training's ε, (K, N, L) per layer, as evaluation takes it: (N, K, L) per layer."""
    return tuple(e.transpose(1, 0, 2) for e in eps)


def test_k1_is_the_sampled_elbo(backend):
    """With K = 1 the bound is −log w of the one sample, every term sampled (the top layer's KL
    too): its value and its gradients are those of evaluation's log w for the same ε."""
    m, x = make(backend, seed=5, objective="iwae", iw_samples=1)
    eps = m.noise(N, m.rng["noise"])

    def neg_log_w():
        return -float(m.xp.sum(m.chain.log_weights(m, x, _rows_by_image(eps))))

    res = m.loss_and_grads(x, eps=eps)
    assert float(res.bound) == pytest.approx(neg_log_w(), rel=1e-13)
    g = {k: backend.to_host(v).copy() for k, v in res.grads.items()}
    err = gradcheck(neg_log_w, m.params, g)
    assert max(err.values()) <= TOL, err


def test_elbo_takes_the_top_kl_in_closed_form(backend):
    """The ELBO's objective is −log w with the top layer's sampled log q − log p replaced by its
    KL in closed form: the difference is exactly that replacement (computed here from the top head)."""
    m, x = make(backend, seed=6)
    iw, _ = make(backend, seed=6, objective="iwae", iw_samples=1)
    eps = m.noise(N, m.rng["noise"])
    elbo = float(m.loss_and_grads(x, eps=eps, need_grads=False).objective)
    bound = float(iw.loss_and_grads(x, eps=tuple(e[None] for e in eps), need_grads=False).bound)
    q1 = m.encode(x)
    h1 = m.posterior.sample(q1, eps[0])
    top = m.chain.layers[-1]
    params = top.posterior.split(top.trunk.forward(h1) + top.trunk.last.b)
    h2 = top.posterior.sample(params, eps[1])
    sampled = float(m.xp.sum(top.posterior.log_q_rows(eps[1], params) - top.posterior.log_prior_rows(h2)))
    closed = float(m.xp.sum(top.posterior.kl_terms(params)))
    assert bound - elbo == pytest.approx(sampled - closed, rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_training_log_weights_are_evaluations(likelihood, backend):
    m, x = make(backend, seed=7, objective="iwae", iw_samples=3, latent=(3, 2, 2), hidden=((6,), (4,), (3,)),
                likelihood=likelihood)
    eps = m.noise(N, m.rng["noise"])
    m.loss_and_grads(x, eps=eps, need_grads=False)
    train = backend.to_host(m.workspace(N).obj.logw).reshape(3, N).T
    evaluation = backend.to_host(m.chain.log_weights(m, x, _rows_by_image(eps)))
    np.testing.assert_allclose(train, evaluation, rtol=1e-13, atol=1e-13)


# -- linear-Gaussian models: exact log p(x) ------------------------------------------------------------
SIGMA = 0.7


def _linear_model(backend, exact, seed):
    """A linear two-layer model, Gaussian p(x|h_1) of σ = SIGMA, constant variances:

        h_2 ~ N(0, I_2),  h_1 | h_2 ~ N(h_2 A + a, diag d_1),  x | h_1 ~ N(h_1 V + c, σ² I_5)

    (rows as vectors), with A = [diag α | 0] and V's rows orthogonal, so that Cov h_1 = AᵀA +
    diag d_1 is diagonal and so are both exact posteriors: p(h_1 | x), of precision
    (Cov h_1)⁻¹ + V Vᵀ/σ², and p(h_2 | h_1, x) = p(h_2 | h_1), of precision I + A diag(1/d_1) Aᵀ;
    q(h_1|x) and q(h_2|h_1) are set to them. Without ``exact``, A and V are then replaced by
    general maps (every entry moved by 0.3·N(0, 1)), whose exact posteriors are not diagonal,
    and q stays the one of the maps before, its variances widened by e^{0.3} (a proposal a little
    wider than the posterior). Returns the model and (A, a, d_1, V, c)."""
    r = np.random.default_rng(seed)
    m = VAE(input_dim=5, hidden=((), ()), latent=(3, 2), likelihood="gaussian", sigma=SIGMA, dtype="float64",
            backend=backend)
    a, d1, c = r.normal(size=3) * 0.5, r.uniform(0.3, 1.0, size=3), r.normal(size=5) * 0.5
    A = np.hstack([np.diag(r.uniform(0.5, 1.5, size=2)), np.zeros((2, 1))])
    V = r.uniform(0.5, 1.5, size=(3, 1)) * np.linalg.qr(r.normal(size=(5, 5)))[0][:3]
    params = _exact_posteriors(A, a, d1, V, c)
    if not exact:
        A, V = A + 0.3 * r.normal(size=A.shape), V + 0.3 * r.normal(size=V.shape)
        params["enc.head.b"][3:] += 0.3
        params["enc2.head.b"][2:] += 0.3
    params["prior1.head.W"] = np.hstack([A, np.zeros((2, 3))])
    params["prior1.head.b"] = np.concatenate([a, np.log(d1)])
    params["dec.out.W"], params["dec.out.b"] = V, c
    m.set_params(params)
    return m, (A, a, d1, V, c)


def _exact_posteriors(A, a, d1, V, c):
    C1 = A.T @ A + np.diag(d1)                                   # Cov h_1, diagonal here
    S1 = np.linalg.inv(np.linalg.inv(C1) + V @ V.T / SIGMA ** 2)  # Cov h_1 | x, diagonal
    S2 = np.linalg.inv(np.eye(2) + A @ np.diag(1 / d1) @ A.T)    # Cov h_2 | h_1, diagonal
    for S in (C1, S1, S2):
        assert np.allclose(S, np.diag(np.diag(S)), atol=1e-14)
    M1 = V.T @ S1 / SIGMA ** 2                                   # E[h_1 | x] = x M1 + m1
    m1 = (a @ np.linalg.inv(C1) - c @ V.T / SIGMA ** 2) @ S1
    M2 = np.diag(1 / d1) @ A.T @ S2                              # E[h_2 | h_1] = h_1 M2 + m2
    m2 = -a @ M2
    return {"enc.head.W": np.hstack([M1, np.zeros((5, 3))]), "enc.head.b": np.concatenate([m1, np.log(np.diag(S1))]),
            "enc2.head.W": np.hstack([M2, np.zeros((3, 2))]), "enc2.head.b": np.concatenate([m2, np.log(np.diag(S2))])}


def _exact_log_px(x, A, a, d1, V, c):
    """log N(x; a V + c, Vᵀ (AᵀA + diag d_1) V + σ² I) per row."""
    cov = V.T @ (A.T @ A + np.diag(d1)) @ V + SIGMA ** 2 * np.eye(V.shape[1])
    diff = x - (a @ V + c)
    _, logdet = np.linalg.slogdet(cov)
    return -0.5 * (np.einsum("ni,ij,nj->n", diff, np.linalg.inv(cov), diff) + logdet + V.shape[1] * math.log(2 * math.pi))


def _draw(m, n, k, seed):
    r = np.random.default_rng(seed)
    return tuple(m.backend.asarray(r.normal(size=(n, k, L))) for L in m.chain.latents)


def test_exact_posteriors_make_every_weight_log_px(backend):
    m, maps = _linear_model(backend, exact=True, seed=11)
    x = np.random.default_rng(12).normal(size=(6, 5)) * 1.5
    want = _exact_log_px(x, *maps)
    logw = backend.to_host(m.chain.log_weights(m, backend.asarray(x), _draw(m, 6, 50, 13)))
    np.testing.assert_allclose(logw, np.broadcast_to(want[:, None], logw.shape), rtol=0, atol=1e-10)
    # the training path's weights too (objective 'iwae', K samples per image)
    iw = VAE(m.settings, objective="iwae", iw_samples=4, backend=backend)
    iw.theta[...] = m.theta
    r = iw.loss_and_grads(backend.asarray(x), eps=tuple(e.transpose(1, 0, 2)[:4] for e in _draw(m, 6, 4, 14)),
                          need_grads=False)
    np.testing.assert_allclose(backend.to_host(iw.workspace(6).obj.logw).reshape(4, 6), np.tile(want, (4, 1)),
                               rtol=0, atol=1e-10)
    assert float(r.bound) == pytest.approx(-want.sum(), abs=1e-9)


def test_importance_sampling_reaches_exact_log_px(backend):
    """General linear maps (q not the posterior): mean L_K over images rises with K, and at
    K = 5000 it is within two standard errors of the exact log p(x) (the delta method's SE of
    log of the mean weight, std(w)/(√K mean(w)) per image), while L_1 is far below it."""
    m, maps = _linear_model(backend, exact=False, seed=21)
    n, K = 12, 5000
    x = np.random.default_rng(22).normal(size=(n, 5)) * 1.5
    exact = _exact_log_px(x, *maps).mean()
    logw = backend.to_host(m.chain.log_weights(m, backend.asarray(x), _draw(m, n, K, 23)))
    means = []
    for k in (1, 10, 100, 1000, 5000):
        g = logw[:, :K // k * k].reshape(n, K // k, k)
        top = g.max(axis=2, keepdims=True)
        means.append(float(np.mean(np.log(np.mean(np.exp(g - top), axis=2)) + top[..., 0])))
    assert all(b > a for a, b in zip(means, means[1:])), means
    w = np.exp(logw - logw.max(axis=1, keepdims=True))
    se = math.sqrt(np.sum((w.std(axis=1, ddof=1) / (math.sqrt(K) * w.mean(axis=1))) ** 2)) / n
    assert abs(means[-1] - exact) <= 2 * se, (means, exact, se)
    assert exact - means[0] > 100 * se, (means, exact, se)


# -- settings ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("setting, names", [(dict(mode="ae"), ("latent", "mode")),
                                            (dict(mode="kl-only"), ("latent", "mode")),
                                            (dict(posterior="full"), ("latent", "posterior")),
                                            (dict(hidden=(6, 4)), ("hidden", "latent"))])
def test_what_does_not_chain_is_refused(setting, names):
    with pytest.raises(InputError) as err:
        VAE(**{"input_dim": D, **LAYERS, **setting})
    assert all(name in str(err.value) for name in names), str(err.value)


def test_eps_of_the_wrong_shape_is_refused(backend):
    m, x = make(backend)
    with pytest.raises(InputError, match=r"tuple of 2 arrays"):
        m.loss_and_grads(x, eps=m.noise(N, m.rng["noise"])[0])
    eps = m.noise(N, m.rng["noise"])
    with pytest.raises(InputError, match=r"eps\[1\] \(layer 2's\) must be a float64 array of shape \(4, 2\)"):
        m.loss_and_grads(x, eps=(eps[0], eps[1][:2]))
