"""The Gaussian pieces of a VAE: the reparameterized sample and the KL to the prior.

Conventions: ``logvar`` is log σ² everywhere; the standard deviation is
σ = exp(½·logvar). Shapes: μ, logvar, ε, z are (N, L); sums run over all N·L entries.
"""

from __future__ import annotations

import math

from ._seam import fused, xp_of

LOG_2PI = math.log(2.0 * math.pi)
LOGVAR_LIMIT = 30.0
"""The model clamps logvar to [−30, 30] before sampling (σ² from 9e−14 to 1e13), so no
exp overflows in float32 whatever the encoder outputs; the gradient is exact inside the
range and 0 for clamped entries. Ordinary training stays far inside (|logvar| ≲ 10)."""


def reparameterize(mu, logvar, eps, out=None, std_out=None):
    """z = μ + σ ⊙ ε with σ = exp(½·logvar) and ε ~ N(0, I) supplied by the caller.

    Returns (z, σ); σ is kept for the backward pass.
    """
    xp = xp_of(mu)
    std = xp.multiply(logvar, 0.5, out=std_out)
    xp.exp(std, out=std)
    z = xp.multiply(std, eps, out=out)
    z += mu
    return z, std


def reparameterize_backward(dz, eps, std):
    """Gradients through z = μ + exp(½·logvar) ⊙ ε, given dz = ∂ℓ/∂z. Returns (dμ, dlogvar).

    ∂z/∂μ = 1                            ->  dμ = dz
    ∂z/∂logvar = ε · dσ/dlogvar = ½ σ ε  ->  dlogvar = ½ · dz ⊙ ε ⊙ σ
    (σ = e^{½ lv}, so dσ/dlv = ½ σ.)  The noise ε is a constant: no gradient flows to it.
    """
    return dz.copy(), 0.5 * dz * eps * std


def kl_standard_normal(mu, logvar):
    """KL( N(μ, diag σ²) ‖ N(0, I) ), summed over rows and latent units (a 0-d array).

    Closed form for one row (k latent units, Σ = diag σ²):
        KL = ½ (tr Σ + μᵀμ − k − log det Σ) = ½ Σ_j (σ_j² + μ_j² − 1 − log σ_j²).
    Derivation: KL = E_q[log q − log p]; with q = N(μ, Σ), p = N(0, I):
    E_q[−½ (z−μ)ᵀ Σ⁻¹ (z−μ)] = −k/2, E_q[½ zᵀz] = ½(tr Σ + μᵀμ), and the normalisers
    contribute −½ log det Σ.
    Computed as ½ Σ (expm1(lv) − lv + μ²): each term is ≥ 0 in floating point, so the KL is
    never negative (e^{lv} − 1 − lv rounds to −lv < 0 for 0 < lv ≲ 1e-16).
    """
    xp = xp_of(mu)
    return 0.5 * xp.sum(xp.expm1(logvar) - logvar + mu * mu)


def kl_standard_normal_backward(mu, logvar):
    """Gradients of KL = ½ Σ (e^{lv} + μ² − 1 − lv):  ∂KL/∂μ = μ;  ∂KL/∂lv = ½(e^{lv} − 1)."""
    xp = xp_of(mu)
    return mu.copy(), 0.5 * (xp.exp(logvar) - 1.0)


def reparam_kl_forward(mu_logvar, eps, z, std, scratch, bias=None):
    """Fused block after the encoder's head GEMM: sample z and compute the KL sum.

    mu_logvar: (N, 2L) head output, μ = [:, :L], logvar = [:, L:].  eps, z, std, scratch:
    (N, L) buffers. ``bias``: an optional (2L,) vector added to mu_logvar in place first (the
    head's bias folded into this block: one kernel fewer on a GPU; its gradient is the row sum
    of ``reparam_kl_backward``'s dmu_logvar, formed by the caller as for any dense layer).
    Clamps logvar in place to ±:data:`LOGVAR_LIMIT` (a no-op in ordinary training). Writes z = μ + σ ⊙ ε and σ = exp(½ logvar) (kept for the backward);
    returns KL = ½ Σ (σ² + μ² − 1 − logvar) as a 0-d array (no host sync).
    The same formulas as :func:`reparameterize` and :func:`kl_standard_normal`, arranged
    so that no temporary array is made (``z`` holds σ² before it holds z).
    """
    k = fused("reparam_kl_forward", mu_logvar)
    if k is not None:
        return k(mu_logvar, eps, z, std, scratch, bias)
    xp = xp_of(mu_logvar)
    if bias is not None:
        mu_logvar += bias
    L = z.shape[1]
    mu, logvar = mu_logvar[:, :L], mu_logvar[:, L:]
    if logvar.max() > LOGVAR_LIMIT or logvar.min() < -LOGVAR_LIMIT:
        xp.clip(logvar, -LOGVAR_LIMIT, LOGVAR_LIMIT, out=logvar)
    xp.multiply(logvar, 0.5, out=std)
    xp.exp(std, out=std)                  # σ
    t = xp.multiply(mu, mu, out=scratch)  # μ²
    xp.expm1(logvar, out=z)               # σ² − 1, exact near σ = 1 (z is free until the end)
    t += z
    t -= logvar                           # each term e^{lv} − 1 − lv ≥ 0 stays ≥ 0
    kl = 0.5 * xp.sum(t)
    xp.multiply(std, eps, out=z)
    z += mu
    return kl


def reparam_kl_backward(dz, eps, std, mu_logvar, beta, dmu_logvar):
    """Fused backward of :func:`reparam_kl_forward` for the objective  recon + β·KL.

    dz: (N, L) = ∂recon/∂z, **overwritten** (None: no reconstruction term, as in KL-only).
    Writes dmu_logvar (N, 2L):
      [:, :L]  dμ  = dz + β μ
      [:, L:]  dlv = ½ dz ⊙ ε ⊙ σ + ½ β (σ² − 1)  =  ½ (σ (dz ⊙ ε + β σ) − β)
    i.e. :func:`reparameterize_backward` plus β × :func:`kl_standard_normal_backward`
    (the two paths into μ and logvar add; σ² = e^{lv}); entries clamped by the forward
    (|logvar| = LOGVAR_LIMIT) get dlv = 0, the derivative of the clamp.
    """
    k = fused("reparam_kl_backward", mu_logvar)
    if k is not None:
        return k(dz, eps, std, mu_logvar, beta, dmu_logvar)
    xp = xp_of(mu_logvar)
    L = std.shape[1]
    mu = mu_logvar[:, :L]
    dmu, dlv = dmu_logvar[:, :L], dmu_logvar[:, L:]
    xp.multiply(mu, beta, out=dmu)
    xp.multiply(std, beta, out=dlv)       # β σ
    if dz is not None:
        dmu += dz
        dz *= eps                         # dz ⊙ ε (dz is spent)
        dlv += dz
    dlv *= std
    dlv -= beta
    dlv *= 0.5
    lv = mu_logvar[:, L:]
    if lv.max() >= LOGVAR_LIMIT or lv.min() <= -LOGVAR_LIMIT:
        dlv *= xp.abs(lv) < LOGVAR_LIMIT       # clamped entries: zero gradient
    return dmu_logvar


# -- row-wise log-densities (evaluation) ---------------------------------------------------
# One value per row: sums over the last axis (the L latent units) only; any leading shape.
def log_standard_normal_rows(z, dtype=None):
    """log N(z; 0, I) per row:  −½ Σ_j (z_j² + log 2π)  -> z.shape[:-1].

    ``dtype``: accumulator and result dtype (default z's; float64 to sum in double).
    """
    xp = xp_of(z)
    L = z.shape[-1]
    return -0.5 * xp.sum(z * z, axis=-1, dtype=dtype) - 0.5 * L * LOG_2PI


def log_normal_rows(z, mu, logvar, dtype=None):
    """log N(z; μ, diag e^{logvar}) per row:  −½ Σ_j (log 2π + lv_j + (z_j − μ_j)² e^{−lv_j}).

    With z = μ + e^{½ lv} ⊙ ε this equals ``log_standard_normal_rows(ε) − ½ Σ_j lv_j``
    (the change of variables z -> ε has Jacobian Π_j e^{½ lv_j}); when ε is at hand that
    form is the more accurate one, as it does not recompute ε = (z − μ)/σ.
    """
    xp = xp_of(z)
    L = z.shape[-1]
    r = z - mu
    t = r * r * xp.exp(-logvar) + logvar
    return -0.5 * xp.sum(t, axis=-1, dtype=dtype) - 0.5 * L * LOG_2PI
