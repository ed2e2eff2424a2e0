"""Linear models whose optima are known in closed form, trained with the real engine.

* PCA. A linear autoencoder with a fixed-σ Gaussian likelihood minimises ½‖x − x̂‖² + const;
  its optimum spans the top-L principal subspace (Baldi & Hornik 1989). Trained full-batch
  with Adam, the decoder's row space must match the top-L right singular vectors of the
  centred data (principal angles ≈ 0), and its error the Eckart–Young minimum.
* Probabilistic PCA. A linear VAE with a learned shared σ is the pPCA model with an
  amortised diagonal-Gaussian posterior; at its optimum the ELBO equals the pPCA maximum
  log-likelihood (Tipping & Bishop 1999; Lucas et al. 2019, "Don't blame the ELBO!").
  Trained with the model's own reparameterized gradients (ε drawn by the model every step),
  its ELBO per sample, in closed form, must come within 0.01 nats of
  log L/N = −½ [D log 2π + Σ_{i≤L} log λ_i + (D−L) log σ²_ML + D],  σ²_ML = mean_{i>L} λ_i,
  and never exceed it.
"""

import math
import time

import numpy as np
import pytest

from scratchvae import VAE, Adam

LOG_2PI = math.log(2.0 * math.pi)


def _train(model, x, steps, lr_hold, lr_end):
    """Full-batch Adam on the model's gradients: lr_hold for the first half of the steps,
    then an exponential decay to lr_end (the small steps average out the noise of ε)."""
    opt = Adam(model.theta, lr=lr_hold)
    half = steps // 2
    for t in range(steps):
        frac = max(0, t - half) / (steps - 1 - half)
        opt.lr = lr_hold * (lr_end / lr_hold) ** frac
        model.loss_and_grads(x)
        opt.step(model.grad)
    return model


def _max_sin_principal_angle(rows, basis):
    """sin of the largest principal angle between span(rows of ``rows``) and span(basis
    columns, orthonormal): the spectral norm of (I − B Bᵀ) Q, Q an orthonormal basis of
    the rows (accurate for small angles, unlike arccos of the cosines)."""
    q, _ = np.linalg.qr(rows.T)
    return float(np.linalg.norm(q - basis @ (basis.T @ q), 2))


# -- PCA ----------------------------------------------------------------------------------
def test_linear_autoencoder_learns_the_principal_subspace(backend):
    N, D, L = 500, 8, 2
    rng = np.random.default_rng(0)
    rot, _ = np.linalg.qr(rng.standard_normal((D, D)))
    scales = np.array([3.0, 2.0, 0.5, 0.4, 0.3, 0.2, 0.15, 0.1])  # gap λ₂/λ₃ ≈ 15
    x = (rng.standard_normal((N, D)) * scales) @ rot.T
    x -= x.mean(axis=0)
    _, sv, vt = np.linalg.svd(x, full_matrices=False)
    top = vt[:L].T                                              # (D, L), orthonormal

    model = VAE(input_dim=D, hidden=(), latent=L, mode="ae", likelihood="gaussian",
                sigma=1.0, dtype="float64", seed=3, backend=backend)
    xb = backend.asarray(x)
    rows0 = model.host_params()["dec.out.W"]
    assert _max_sin_principal_angle(rows0, top) > 0.5           # far from it at the start

    _train(model, xb, steps=2000, lr_hold=2e-2, lr_end=1e-4)

    sin_max = _max_sin_principal_angle(model.host_params()["dec.out.W"], top)
    print(f"\nPCA: max sin principal angle {sin_max:.3g}")
    assert sin_max < 1e-3

    # σ = 1 fixed: recon = ½‖x − x̂‖² + N·D·½ log 2π, whose minimum (Eckart–Young) is the
    # energy in the trailing singular values.
    recon = float(backend.to_host(model.loss_and_grads(xb, need_grads=False).recon))
    sq_err = recon - N * D * 0.5 * LOG_2PI
    best = 0.5 * float((sv[L:] ** 2).sum())
    assert sq_err >= best * (1 - 1e-12)
    assert sq_err <= best * (1 + 1e-5)


# -- probabilistic PCA ---------------------------------------------------------------------
def _ppca_data(N=2000, D=12, L=3, sigma=0.5, seed=0):
    """x = W z + m + σ ε with W of singular values (3, 2.5, 2) in a random orientation."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((D, L)))
    r, _ = np.linalg.qr(rng.standard_normal((L, L)))
    W = q @ np.diag([3.0, 2.5, 2.0]) @ r
    m = rng.uniform(-1.0, 1.0, D)
    return rng.standard_normal((N, L)) @ W.T + m + sigma * rng.standard_normal((N, D))


def _ppca_max_loglik_per_sample(x, L):
    """Tipping & Bishop (1999): the maximum of the pPCA log-likelihood, per sample."""
    N, D = x.shape
    xc = x - x.mean(axis=0)
    lam = np.sort(np.linalg.eigvalsh(xc.T @ xc / N))[::-1]
    s2 = lam[L:].mean()
    ll = -0.5 * (D * LOG_2PI + np.log(lam[:L]).sum() + (D - L) * math.log(s2) + D)
    return float(ll), float(s2)


def _linear_vae_elbo_per_sample(model, x):
    """The exact ELBO of a linear VAE (hidden=()) with a shared σ, averaged over the rows.

    q(z|x) = N(μ, diag s²) with μ = x A + a, log s² = x B + b; p(x|z) = N(z V + c, σ² I):
      E_q[−log p(x|z)] = D/2 log 2π + D log σ + (‖x − μV − c‖² + Σ_j s_j² ‖V_j‖²) / (2σ²)
      KL = ½ Σ_j (s_j² + μ_j² − 1 − log s_j²)
    """
    P = model.host_params()
    L, D = model.latent, model.input_dim
    head_w, head_b = P["enc.head.W"], P["enc.head.b"]
    V, c = P["dec.out.W"], P["dec.out.b"]
    mu = x @ head_w[:, :L] + head_b[:L]
    lv = x @ head_w[:, L:] + head_b[L:]
    s2 = np.exp(lv)
    log_sigma = float(model.backend.to_host(model.log_sigma())[0])
    r = x - mu @ V - c
    recon = (0.5 * D * LOG_2PI + D * log_sigma
             + 0.5 * math.exp(-2 * log_sigma) * ((r * r).sum(axis=1) + s2 @ (V * V).sum(axis=1)))
    kl = 0.5 * (s2 + mu * mu - 1.0 - lv).sum(axis=1)
    return float(-(recon + kl).mean())


def test_linear_vae_elbo_reaches_the_ppca_maximum_likelihood(backend):
    N, D, L = 2000, 12, 3
    x = _ppca_data(N, D, L)
    loglik, s2_ml = _ppca_max_loglik_per_sample(x, L)

    model = VAE(input_dim=D, hidden=(), latent=L, likelihood="gaussian", sigma="shared",
                dtype="float64", seed=1, backend=backend)
    xb = backend.asarray(x)
    gap0 = loglik - _linear_vae_elbo_per_sample(model, x)
    steps = 6000
    t0 = time.perf_counter()
    _train(model, xb, steps=steps, lr_hold=5e-2, lr_end=3e-4)
    seconds = time.perf_counter() - t0

    elbo = _linear_vae_elbo_per_sample(model, x)
    gap = loglik - elbo

    # The closed form is the model's own ELBO: the mean of its reported −neg_elbo over
    # independent draws of ε agrees within 5 standard errors.
    draws = np.array([-float(backend.to_host(model.loss_and_grads(xb, need_grads=False).neg_elbo))
                      for _ in range(1000)]) / N
    mc, se = draws.mean(), draws.std(ddof=1) / math.sqrt(draws.size)
    print(f"\npPCA: log L/N {loglik:.6f}, ELBO/N {elbo:.6f} (MC {mc:.6f} ± {se:.1g}), "
          f"gap {gap:.2e} nats/sample (start {gap0:.3g}), {steps} steps, {seconds:.1f} s")
    assert abs(mc - elbo) <= 5 * se + 1e-12

    assert gap0 > 1.0                       # training did the work
    assert elbo <= loglik + 1e-9            # a lower bound, at the best parameters too
    assert gap < 0.01                       # ... and tight at the optimum
    sigma2 = math.exp(2 * float(backend.to_host(model.log_sigma())[0]))
    assert sigma2 == pytest.approx(s2_ml, rel=1e-2)
