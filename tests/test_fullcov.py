"""The full-covariance posterior q(z|x) = N(μ, SSᵀ): its blocks, its model, its statistics.

* Layer 1: the fused sample-and-KL block's gradient against central differences (float64,
  relative error ≤ 1e-7), and both of its halves against the unfused textbook oracles
  (``ops.reference``: Σ = SSᵀ formed, ``slogdet``, ∂KL/∂S = S − S⁻ᵀ).
* The diagonal special case: with zero off-diagonal entries and log S_ii = ½ logvar_i the block
  gives the diagonal block's KL and z bit for bit, the same dμ and exactly twice its dlogvar;
  the whole model likewise.
* Layer 2: the whole model's gradients with a fixed ε (both likelihoods, β ≠ 1, KL-only).
* Layer 4, statistics (fixed seeds from scratchvae's own streams, so every number is
  deterministic): the sample mean and covariance of z match μ and SSᵀ, each of the nine
  statistics within 5 standard errors (a correct sampler fails one with probability
  ≈ 9 · 5.7e-7 ≈ 5e-6 per seed, under the normal approximation of the statistics); the
  same statistic rejects the transposed factor SᵀS. The closed-form KL agrees with a
  Monte-Carlo estimate of E_q[log q − log p] (log q from the textbook density) within 5
  standard errors (≈ 5.7e-7 per row). KL(0, I) = 0 exactly.
* Evaluation: with a linear-Gaussian decoder whose true posterior is *not* diagonal, the full
  encoder set to it makes every importance weight p(x): each estimate equals log p(x).
"""

import math

import numpy as np
import pytest

from scratchvae import VAE, gradcheck, gradcheck_model
from scratchvae.backend.random import Stream
from scratchvae.evaluate import iwae_estimates
from scratchvae.ops import fullcov, reference, reparam_kl_backward, reparam_kl_forward
from scratchvae.ops.fullcov import fullcov_reparam_kl_backward, fullcov_reparam_kl_forward, tril_size

TOL = 1e-7
Z_MAX = 5.0


def pack(mu, d, S):
    """Head-shaped rows [μ | d | strict lower triangle of S] (N, 2L + M)."""
    rows, cols, _ = fullcov.tril_indices(mu.shape[-1])
    return np.concatenate([mu, d, S[:, rows, cols]], axis=1)


def head_of(mu, S):
    """The head row(s) [μ | log diag S | strict lower triangle] of (μ (N, L), S (N, L, L))."""
    return pack(mu, np.log(np.diagonal(S, axis1=-2, axis2=-1)), S)


def random_head(r, N, L, scale=0.5):
    return r.normal(size=(N, 2 * L + tril_size(L))) * scale


def forward(backend, head, eps, bias=None, offdiag=1.0):
    """(kl, z, S) of the fused forward on a copy of ``head`` (returned too, as the block left it)."""
    xp = backend.xp
    N, L = eps.shape
    z, scratch = xp.empty((N, L)), xp.empty((N, L))
    S = xp.zeros((N, L, L))
    h = head.copy()
    kl = fullcov_reparam_kl_forward(h, eps, z, S, scratch, bias=bias, offdiag=offdiag)
    return kl, z, S, h


def backward(backend, dz, eps, S, head, beta, offdiag=1.0):
    xp = backend.xp
    N, L = eps.shape
    dh = xp.empty(head.shape)
    fullcov_reparam_kl_backward(dz, eps, S, head, beta, dh, xp.empty((N, L, L)), xp.empty((N, tril_size(L))),
                                offdiag=offdiag)
    return dh


# -- layer 1: the fused block ---------------------------------------------------------------------
@pytest.mark.parametrize("offdiag", [1.0, 0.3])
@pytest.mark.parametrize("beta", [1.0, 0.3])
@pytest.mark.parametrize("with_dz", [True, False])
def test_fused_fullcov_block_gradient(beta, with_dz, offdiag, backend):
    """The block's gradient is that of  Σ w ⊙ z + β·KL  (or β·KL alone) over the whole head,
    with S_ij = c·o_ij below the diagonal (c = 1, and c = 0.3)."""
    r = np.random.default_rng(21)
    xp = backend.xp
    N, L = 4, 3
    head = backend.asarray(random_head(r, N, L))
    eps, w = (backend.asarray(r.normal(size=(N, L))) for _ in range(2))

    def f():
        kl, z, _, _ = forward(backend, head, eps, offdiag=offdiag)
        return (xp.sum(w * z) if with_dz else 0.0) + beta * kl

    _, _, S, h = forward(backend, head, eps, offdiag=offdiag)
    dh = backward(backend, w.copy() if with_dz else None, eps, S, h, beta, offdiag=offdiag)
    err = gradcheck(f, {"head": head}, {"head": dh})
    assert err["head"] <= TOL, err


@pytest.mark.parametrize("offdiag", [1.0, 0.3])
def test_fused_fullcov_block_against_the_textbook_forms(offdiag, backend):
    """KL: ½(tr Σ + μᵀμ − L − log det Σ) with Σ = SSᵀ formed; z = μ + Sε; the backward is
    the reference dS = tril(dz εᵀ) + β (S − S⁻ᵀ), dμ = dz + βμ, chained to d = log S_ii and
    to o = S_ij / c below the diagonal."""
    r = np.random.default_rng(22)
    N, L, beta = 5, 4, 0.7
    head = backend.asarray(random_head(r, N, L))
    bias = backend.asarray(r.normal(size=head.shape[1]) * 0.1)
    eps, dz = (backend.asarray(r.normal(size=(N, L))) for _ in range(2))
    kl, z, S, h = forward(backend, head, eps, bias=bias, offdiag=offdiag)
    mu, S_ref = fullcov.scale_tril_from_head(head + bias, offdiag=offdiag)
    np.testing.assert_array_equal(backend.to_host(S), backend.to_host(S_ref))
    np.testing.assert_allclose(float(kl), float(reference.fullcov_kl(mu, S_ref)), rtol=1e-13)
    host = {k: backend.to_host(v) for k, v in dict(mu=mu, S=S_ref, eps=eps, z=z, dz=dz).items()}
    np.testing.assert_allclose(host["z"], host["mu"] + np.einsum("nij,nj->ni", host["S"], host["eps"]), rtol=1e-14)

    dh = backend.to_host(backward(backend, dz.copy(), eps, S, h, beta, offdiag=offdiag))
    dmu_r, dS_r = reference.fullcov_reparameterize_backward(host["dz"], host["eps"])
    dmu_k, dS_k = reference.fullcov_kl_backward(host["mu"], host["S"])
    dS = dS_r + beta * dS_k
    dd = np.diagonal(dS, axis1=1, axis2=2) * np.diagonal(host["S"], axis1=1, axis2=2)   # ∂S_ii/∂d_i = S_ii
    np.testing.assert_allclose(dh, pack(dmu_r + beta * dmu_k, dd, offdiag * dS), rtol=1e-12, atol=1e-14)


def test_diagonal_special_case_of_the_block(backend):
    """o = 0, d = ½ logvar: the diagonal block's KL and z bit for bit, its dμ, and dd = 2·dlogvar."""
    r = np.random.default_rng(23)
    xp = backend.xp
    N, L, beta = 6, 3, 0.45
    ml = backend.asarray(r.normal(size=(N, 2 * L)))
    eps, dz = (backend.asarray(r.normal(size=(N, L))) for _ in range(2))
    head = xp.zeros((N, 2 * L + tril_size(L)))
    head[:, :L], head[:, L:2 * L] = ml[:, :L], 0.5 * ml[:, L:]
    z_d, std, s = (xp.empty((N, L)) for _ in range(3))
    kl_d = reparam_kl_forward(ml, eps, z_d, std, s)
    kl_f, z_f, S, h = forward(backend, head, eps)
    assert float(kl_f) == float(kl_d)
    np.testing.assert_array_equal(backend.to_host(z_f), backend.to_host(z_d))
    dml = xp.empty((N, 2 * L))
    reparam_kl_backward(dz.copy(), eps, std, ml, beta, dml)
    dh = backward(backend, dz.copy(), eps, S, h, beta)
    dml, dh = backend.to_host(dml), backend.to_host(dh)
    np.testing.assert_array_equal(dh[:, :L], dml[:, :L])
    np.testing.assert_array_equal(dh[:, L:2 * L], 2 * dml[:, L:])


def test_clamped_log_scales_get_no_gradient_and_stay_finite(backend):
    xp = backend.xp
    N, L = 2, 3
    head = np.zeros((N, 2 * L + tril_size(L)), np.float32)
    head[0, L:2 * L] = [40.0, -100.0, 0.3]
    head = backend.asarray(head)
    eps = backend.asarray(np.ones((N, L), np.float32))
    z, s = xp.empty((N, L), np.float32), xp.empty((N, L), np.float32)
    S = xp.zeros((N, L, L), np.float32)
    kl = fullcov_reparam_kl_forward(head, eps, z, S, s)
    assert np.isfinite(float(kl)) and np.all(np.isfinite(backend.to_host(z)))
    assert backend.to_host(head)[0, L:L + 2].tolist() == [fullcov.LOG_SCALE_LIMIT, -fullcov.LOG_SCALE_LIMIT]
    dh = xp.empty(head.shape, np.float32)
    fullcov_reparam_kl_backward(xp.ones((N, L), np.float32), eps, S, head, 1.0, dh,
                                xp.empty((N, L, L), np.float32), xp.empty((N, tril_size(L)), np.float32))
    d = backend.to_host(dh)
    assert np.all(np.isfinite(d)) and d[0, L] == 0 and d[0, L + 1] == 0 and d[0, L + 2] != 0


def test_the_prior_has_kl_exactly_zero(backend):
    N, L = 4, 5
    kl, z, S, _ = forward(backend, backend.asarray(np.zeros((N, 2 * L + tril_size(L)))),
                          backend.asarray(np.ones((N, L))))
    assert float(kl) == 0.0
    np.testing.assert_array_equal(backend.to_host(S), np.broadcast_to(np.eye(L), (N, L, L)))


# -- the model ----------------------------------------------------------------------------------
N, D, L = 5, 7, 3


def make(backend, seed=0, hidden=(6, 4), **kw):
    """A float64 full-covariance model with O(1) gradients (as test_gradcheck_model's)."""
    m = VAE(input_dim=D, hidden=hidden, latent=L, activation="tanh", dtype="float64", seed=seed,
            backend=backend, posterior="full", **kw)
    r = np.random.default_rng(seed)
    m.set_params({k: r.normal(size=s) * (1.5 / np.sqrt(s[0]) if len(s) == 2 else 0.3) for k, s in m.shapes.items()})
    return m, backend.asarray(r.uniform(size=(N, D))), backend.asarray(r.normal(size=(N, L)))


@pytest.mark.parametrize("case", [dict(), dict(beta=0.25), dict(likelihood="gaussian", sigma="per-pixel"),
                                  dict(mode="kl-only", likelihood="gaussian", sigma="shared"), dict(hidden=())],
                         ids=["bernoulli", "beta", "gaussian-per-pixel", "kl-only", "linear"])
def test_model_gradients(case, backend):
    m, x, eps = make(backend, **case)
    assert m.shapes["enc.head.b"] == (2 * L + tril_size(L),)
    err = gradcheck_model(m, x, eps=eps)
    assert set(err) == set(m.params) and max(err.values()) <= TOL, err


def test_model_reduces_to_the_diagonal_model(backend):
    """A full model whose head gives o = 0 and d = ½ logvar of a diagonal model's head: the same
    loss parts, the same gradients but for the head's log-scale columns, which are twice."""
    diag = VAE(input_dim=D, hidden=(6,), latent=L, activation="tanh", dtype="float64", seed=2,
               backend=backend, beta=0.6)
    full = VAE(input_dim=D, hidden=(6,), latent=L, activation="tanh", dtype="float64", seed=2,
               backend=backend, beta=0.6, posterior="full")
    p = diag.host_params()
    q = dict(p)
    for k in ("enc.head.W", "enc.head.b"):
        q[k] = np.zeros(p[k].shape[:-1] + (2 * L + tril_size(L),))
        q[k][..., :L], q[k][..., L:2 * L] = p[k][..., :L], 0.5 * p[k][..., L:]
    full.set_params(q)
    r = np.random.default_rng(3)
    x, eps = backend.asarray(r.uniform(size=(N, D))), backend.asarray(r.normal(size=(N, L)))
    rd = diag.loss_and_grads(x, eps=eps)
    gd = {k: backend.to_host(v).copy() for k, v in rd.grads.items()}
    rf = full.loss_and_grads(x, eps=eps)
    assert float(rf.recon) == float(rd.recon) and float(rf.kl) == float(rd.kl)
    gf = {k: backend.to_host(v) for k, v in rf.grads.items()}
    for k in gd:
        if k.startswith("enc.head"):
            np.testing.assert_array_equal(gf[k][..., :L], gd[k][..., :L])
            np.testing.assert_array_equal(gf[k][..., L:2 * L], 2 * gd[k][..., L:])
        else:
            np.testing.assert_array_equal(gf[k], gd[k])


def test_encode_carries_scale_tril_and_the_posterior_api(backend):
    m, x, eps = make(backend, seed=4)
    mu, S = m.encode(x)
    S_h = backend.to_host(S)
    assert S_h.shape == (N, L, L) and np.all(np.triu(S_h, 1) == 0) and np.all(np.diagonal(S_h, axis1=1, axis2=2) > 0)
    q = m.posterior
    z = backend.to_host(m.reparameterize(mu, S, eps))
    mu_h, eps_h = backend.to_host(mu), backend.to_host(eps)
    np.testing.assert_allclose(z, mu_h + np.einsum("nij,nj->ni", S_h, eps_h), rtol=1e-14)
    cov = S_h @ np.swapaxes(S_h, 1, 2)
    np.testing.assert_allclose(backend.to_host(q.std((mu, S))), np.sqrt(np.diagonal(cov, axis1=1, axis2=2)), rtol=1e-14)
    # log q by the change of variables equals the textbook multivariate normal density at z
    r_ = z - mu_h
    quad = np.einsum("ni,nij,nj->n", r_, np.linalg.inv(cov), r_)
    want = -0.5 * (quad + np.linalg.slogdet(cov)[1] + L * math.log(2 * math.pi))
    np.testing.assert_allclose(backend.to_host(q.log_q_rows(eps, (mu, S))), want, rtol=1e-12)
    kl_units = backend.to_host(q.kl_terms((mu, S)))
    np.testing.assert_allclose(kl_units.sum(), float(reference.fullcov_kl(mu, S)), rtol=1e-12)
    res = m.loss_and_grads(x, eps=eps, need_grads=False)
    np.testing.assert_allclose(float(res.kl), kl_units.sum(), rtol=1e-12)


# -- layer 4: statistics ----------------------------------------------------------------------------
MU = np.array([0.7, -1.2, 0.3])
S3 = np.array([[0.8, 0.0, 0.0], [0.9, 1.3, 0.0], [-0.6, 0.4, 0.5]])


def moment_z_scores(z, mu, cov):
    """|sample − true| / standard error of the 3 means and the 6 distinct covariances."""
    n = len(z)
    m = z.mean(axis=0)
    c = np.cov(z, rowvar=False)
    zs = list(np.abs(m - mu) / np.sqrt(np.diag(cov) / n))
    for i in range(3):
        for j in range(i + 1):
            se = math.sqrt((cov[i, i] * cov[j, j] + cov[i, j] ** 2) / n)
            zs.append(abs(c[i, j] - cov[i, j]) / se)
    return np.array(zs)


def test_sample_mean_and_covariance_are_mu_and_s_st(backend):
    n = 200_000
    eps = Stream(20260301, 1, xp=backend.xp).normal((n, 3), "float64")
    head = backend.asarray(np.repeat(head_of(MU[None], S3[None]), n, axis=0))
    _, z, _, _ = forward(backend, head, eps)                      # the training block
    z = backend.to_host(z)
    z_eval = backend.to_host(fullcov.fullcov_sample(backend.asarray(MU), backend.asarray(S3), eps))
    np.testing.assert_allclose(z_eval, z, rtol=1e-13, atol=1e-14)   # evaluation's sample: the same
    scores = moment_z_scores(z, MU, S3 @ S3.T)
    assert scores.max() < Z_MAX, scores
    # the statistic tells SSᵀ from SᵀS (a sampler that applied the transposed factor)
    assert moment_z_scores(z, MU, S3.T @ S3).max() > Z_MAX


@pytest.mark.parametrize("row", range(3))
def test_closed_form_kl_matches_monte_carlo(backend, row):
    r = np.random.default_rng(40 + row)
    mu = r.normal(size=3)
    S = np.tril(r.normal(size=(3, 3)) * 0.6)
    S[np.diag_indices(3)] = np.exp(r.normal(size=3) * 0.5)
    cov = S @ S.T
    n = 100_000
    head = backend.asarray(head_of(mu[None], S[None]))
    kl, _, _, _ = forward(backend, head, backend.asarray(np.zeros((1, 3))))
    eps = Stream(77 + row, 1).normal((n, 3), "float64")
    z = mu + eps @ S.T
    d = z - mu
    log_q = -0.5 * (np.einsum("ni,ij,nj->n", d, np.linalg.inv(cov), d) + np.linalg.slogdet(cov)[1])
    log_p = -0.5 * np.sum(z * z, axis=1)               # the ½ L log 2π of both cancel
    diff = log_q - log_p
    mc, se = diff.mean(), diff.std(ddof=1) / math.sqrt(n)
    assert abs(mc - float(kl)) < Z_MAX * se, (mc, float(kl), se)


# -- evaluation: exact when q is the true, correlated posterior ---------------------------------------
def test_iwae_is_exact_when_the_full_q_is_the_true_posterior(backend):
    """x = zW + b + σn with W's rows not orthogonal: the posterior N(m(x), Σ) has a full Σ =
    (I + WWᵀ/σ²)⁻¹, m(x) = (x − b)Wᵀ Σ/σ². A linear full-covariance encoder set to it makes each
    weight p(x|z)p(z)/q(z|x) = p(x), so every estimate and the training objective are log p(x)."""
    Lz, Dx, sigma = 2, 5, 0.7
    r = np.random.default_rng(50)
    W = r.normal(size=(Lz, Dx)) * np.array([[1.2], [0.8]])
    W[1] += 0.9 * W[0]                                      # correlated rows: Σ is not diagonal
    b = 0.3 * r.normal(size=Dx)
    cov_post = np.linalg.inv(np.eye(Lz) + W @ W.T / sigma ** 2)
    assert abs(cov_post[0, 1]) > 0.05
    A = W.T @ cov_post / sigma ** 2                          # (D, L): m = (x − b) A
    S = np.linalg.cholesky(cov_post)
    x = b + r.normal(size=(40, Lz)) @ W + sigma * r.normal(size=(40, Dx))
    cov_x = W.T @ W + sigma ** 2 * np.eye(Dx)
    exact = -0.5 * (np.einsum("ni,ij,nj->n", x - b, np.linalg.inv(cov_x), x - b)
                    + np.linalg.slogdet(2 * math.pi * cov_x)[1])
    for objective in ("elbo", "iwae"):
        m = VAE(input_dim=Dx, hidden=(), latent=Lz, likelihood="gaussian", sigma=sigma, dtype="float64",
                backend=backend, posterior="full", objective=objective, seed=5)
        head_W = np.zeros((Dx, 5))
        head_W[:, :Lz] = A
        head_b = np.concatenate([-b @ A, np.log(np.diag(S)), [S[1, 0] / m.posterior.offdiag_scale]])
        m.set_params({"enc.head.W": head_W, "enc.head.b": head_b, "dec.out.W": W, "dec.out.b": b})
        xb = backend.asarray(x)
        if objective == "elbo":
            est = iwae_estimates(m, xb, ks=(1, 10), batch=64)
            for K in (1, 10):
                np.testing.assert_allclose(est[K], exact, rtol=1e-12)
        else:
            res = m.loss_and_grads(xb, need_grads=False)
            assert float(res.bound) == pytest.approx(-exact.sum(), rel=1e-12)


# -- the off-diagonal scale c and the head's start ---------------------------------------------------
def test_offdiag_scale_defaults_to_one_over_root_latent_and_is_recorded():
    m = VAE(input_dim=D, hidden=(6,), latent=4, posterior="full")
    assert m.posterior.offdiag_scale == 0.5 and m.config()["offdiag_scale"] == 0.5
    again = VAE(**m.config())
    assert again.posterior.offdiag_scale == 0.5 and again.config() == m.config()
    plain = VAE(input_dim=D, hidden=(6,), latent=4, posterior="full", offdiag_scale=1)
    assert plain.posterior.offdiag_scale == 1.0 and plain.config()["offdiag_scale"] == 1.0
    assert "offdiag_scale" not in VAE(input_dim=D, hidden=(6,), latent=4).config()


@pytest.mark.parametrize("kw, words", [
    (dict(posterior="full", offdiag_scale=0.0), ["offdiag_scale", "> 0", "0.0"]),
    (dict(posterior="full", offdiag_scale=-1), ["offdiag_scale", "-1"]),
    (dict(posterior="full", offdiag_scale=float("nan")), ["offdiag_scale", "finite", "nan"]),
    (dict(posterior="full", offdiag_scale="0.1"), ["offdiag_scale", "'0.1'"]),
    (dict(posterior="full", offdiag_scale=True), ["offdiag_scale", "True"]),
    (dict(offdiag_scale=0.5), ["offdiag_scale applies to posterior full only, got posterior diagonal", "0.5"]),
    (dict(mode="ae", offdiag_scale=0.5), ["offdiag_scale applies to posterior full only"]),
])
def test_offdiag_scale_bad_input(kw, words):
    from scratchvae.errors import InputError
    with pytest.raises(InputError) as e:
        VAE(input_dim=D, hidden=(6,), latent=4, **kw)
    assert all(w in str(e.value) for w in words), str(e.value)


def test_the_scale_is_the_same_model_reparameterised(backend):
    """Head outputs o and scale c give the model of outputs c·o and scale 1: the same losses, and
    ∂/∂o = c · ∂/∂(c·o) for the off-diagonal columns (the head's W and b), the rest unchanged."""
    m, x, eps = make(backend, seed=6)
    c = m.posterior.offdiag_scale
    assert c == 1 / math.sqrt(L)
    one = VAE(**{**m.config(), "offdiag_scale": 1.0}, backend=backend)
    p = m.host_params()
    q = {k: v.copy() for k, v in p.items()}
    for k in ("enc.head.W", "enc.head.b"):
        q[k][..., 2 * L:] *= c
    one.set_params(q)
    rm, r1 = m.loss_and_grads(x, eps=eps), one.loss_and_grads(x, eps=eps)
    np.testing.assert_allclose([float(rm.recon), float(rm.kl)], [float(r1.recon), float(r1.kl)], rtol=1e-13)
    gm = {k: backend.to_host(v).copy() for k, v in rm.grads.items()}
    g1 = {k: backend.to_host(v) for k, v in r1.grads.items()}
    for k in gm:
        want = g1[k].copy()
        if k.startswith("enc.head"):
            want[..., 2 * L:] *= c
        np.testing.assert_allclose(gm[k], want, rtol=1e-11, atol=1e-13, err_msg=k)


def test_the_off_diagonal_head_starts_at_zero():
    """S starts diagonal: the head's columns of o are zero after initialisation, the others drawn."""
    m = VAE(input_dim=D, hidden=(6,), latent=4, posterior="full", seed=3)
    W, b = m.params["enc.head.W"], m.params["enc.head.b"]
    assert np.all(W[:, 8:] == 0) and np.all(b[8:] == 0)
    assert np.all(W[:, :8] != 0) and np.all(b[:8] != 0)
    _, S = m.encode(np.random.default_rng(0).uniform(size=(3, D)).astype(np.float32))
    assert np.all(np.tril(S, -1) == 0)


def test_a_full_run_saved_before_the_scale_reads_as_scale_one(tmp_path):
    """A run whose config.json and checkpoints carry no offdiag_scale (as every full-covariance run
    saved before it existed) loads with c = 1, the meaning its parameters were trained with, and
    gives that model's losses; the same run with the key loads as recorded."""
    import json

    from scratchvae.checkpoint import list_checkpoints, load_checkpoint, save_checkpoint
    from scratchvae.config import TrainConfig
    from scratchvae.runs import CHECKPOINTS, load_run
    from scratchvae.train import fit
    x = np.random.default_rng(1).uniform(size=(40, D)).astype(np.float32)
    m = VAE(input_dim=D, hidden=(6,), latent=3, posterior="full", offdiag_scale=1.0, seed=2)
    fit(m, x, config=TrainConfig(epochs=1, batch_size=10), run_dir=tmp_path / "run")
    assert load_run(tmp_path / "run").model.posterior.offdiag_scale == 1.0
    cfg_path = tmp_path / "run" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    del cfg["model"]["offdiag_scale"]
    cfg_path.write_text(json.dumps(cfg))
    paths = list_checkpoints(tmp_path / "run" / CHECKPOINTS)
    assert paths
    for path in paths:
        arrays, meta = load_checkpoint(path)
        del meta["config"]["model"]["offdiag_scale"]
        save_checkpoint(path, arrays, meta)
    run = load_run(tmp_path / "run")
    assert run.model.posterior.offdiag_scale == 1.0
    xb = x[:10]
    eps = np.random.default_rng(3).normal(size=(10, 3)).astype(np.float32)
    got, want = run.model.loss_and_grads(xb, eps=eps), m.loss_and_grads(xb, eps=eps)
    assert float(got.loss) == float(want.loss)


def test_the_cli_sets_records_and_refuses_offdiag_scale(tmp_path, capsys):
    import json

    from scratchvae.cli import main
    from scratchvae.runs import load_run
    run = tmp_path / "RUN"
    flags = ["--hidden", "8", "--latent", "3", "--quiet", "--epochs", "1", "--posterior", "full"]
    assert main(["train", *flags, "--offdiag-scale", "0.25", "--out", str(run)]) == 0
    assert json.loads((run / "config.json").read_text())["model"]["offdiag_scale"] == 0.25
    assert load_run(run).model.posterior.offdiag_scale == 0.25
    capsys.readouterr()
    assert main(["train", "--offdiag-scale", "0.5", "--out", str(tmp_path / "diag")]) == 2
    assert "--offdiag-scale applies to --posterior full only, got --posterior diagonal" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["train", *flags, "--offdiag-scale", "0", "--out", str(tmp_path / "zero")])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "--offdiag-scale" in err and "expected a finite number > 0, got '0'" in err
    assert not (tmp_path / "diag").exists() and not (tmp_path / "zero").exists()


def test_a_full_model_file_saved_before_the_scale_loads_as_scale_one(tmp_path):
    """VAE.load of a one-file model whose metadata has no offdiag_scale builds c = 1."""
    from scratchvae.checkpoint import load_checkpoint, save_checkpoint
    m = VAE(input_dim=D, hidden=(6,), latent=3, posterior="full", offdiag_scale=1.0, seed=4)
    r = np.random.default_rng(4)
    m.set_params({k: r.normal(size=s).astype(np.float32) * 0.3 for k, s in m.shapes.items()})
    path = m.save(tmp_path / "m.npz")
    arrays, meta = load_checkpoint(path)
    del meta["model"]["offdiag_scale"]
    save_checkpoint(path, arrays, meta)
    back = VAE.load(path)
    assert back.posterior.offdiag_scale == 1.0
    x = r.uniform(size=(4, D)).astype(np.float32)
    eps = r.normal(size=(4, 3)).astype(np.float32)
    assert float(back.loss_and_grads(x, eps=eps).loss) == float(m.loss_and_grads(x, eps=eps).loss)
