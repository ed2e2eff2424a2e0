"""The Gaussian pieces of a VAE: the reparameterized sample and the KL to the prior.

Conventions: ``logvar`` is log σ² everywhere; the standard deviation is
σ = exp(½·logvar). Shapes: μ, logvar, ε, z are (N, L); sums run over all N·L entries.

Training runs the fused pair :func:`reparam_kl_forward` / :func:`reparam_kl_backward`;
evaluation and the figures call :func:`reparameterize`, :func:`kl_standard_normal_terms` and
the row-wise log-densities below. The unfused backward pairs are test oracles in
:mod:`.reference`.
"""

from __future__ import annotations

import math

from ..backend import fused, xp_of

LOG_2PI = math.log(2.0 * math.pi)
LOGVAR_LIMIT = 30.0
"""The model clamps logvar to [−30, 30] before sampling (σ² from 9e−14 to 1e13), so no
exp overflows in float32 whatever the encoder outputs; the gradient is exact inside the
range and 0 for clamped entries. Ordinary training stays far inside (|logvar| ≲ 10)."""


def reparameterize(mu, logvar, eps, out=None, std_out=None):
    """z = μ + σ ⊙ ε with σ = exp(½·logvar) and ε ~ N(0, I) supplied by the caller.

    Returns (z, σ). Any shapes that broadcast (evaluation passes (n, 1, L) parameters and
    (n, K, L) noise).
    """
    xp = xp_of(mu)
    std = xp.multiply(logvar, 0.5, out=std_out)
    xp.exp(std, out=std)
    z = xp.multiply(std, eps, out=out)
    z += mu
    return z, std


def kl_standard_normal_terms(mu, logvar):
    """KL( N(μ, σ²) ‖ N(0, 1) ) of each latent unit, elementwise:  ½ (σ² + μ² − 1 − log σ²).

    Closed form for one row (k latent units, Σ = diag σ²):
        KL = ½ (tr Σ + μᵀμ − k − log det Σ) = Σ_j ½ (σ_j² + μ_j² − 1 − log σ_j²).
    Derivation: KL = E_q[log q − log p]; with q = N(μ, Σ), p = N(0, I):
    E_q[−½ (z−μ)ᵀ Σ⁻¹ (z−μ)] = −k/2, E_q[½ zᵀz] = ½(tr Σ + μᵀμ), and the normalisers
    contribute −½ log det Σ. Computed as ½ (expm1(lv) − lv + μ²): each term is ≥ 0 in
    floating point. e^{lv} − 1 − lv as written is negative for a large share of small lv (e^{lv}
    rounds to a neighbour of 1, an error larger than lv²/2), measured as far out as lv = 4.7e-4
    in float32 and 1.5e-8 in float64 (docs/derivations.md, section 3, has the figures).
    """
    xp = xp_of(mu)
    return 0.5 * (xp.expm1(logvar) - logvar + mu * mu)


@fused("reparam_kl_forward")
def reparam_kl_forward(mu_logvar, eps, z, std, scratch, bias=None, limit=LOGVAR_LIMIT):
    """Fused block after the encoder's head GEMM: sample z and compute the KL sum.

    mu_logvar: (N, 2L) head output, μ = [:, :L], logvar = [:, L:].  eps, z, std, scratch:
    (N, L) buffers. Returns KL as a 0-d array (no host sync) and writes

        z = μ + σ ⊙ ε,  σ = exp(½ logvar)         (σ is kept for the backward)
        KL = ½ Σ_{n,j} (σ² + μ² − 1 − logvar)     (see :func:`kl_standard_normal_terms`)

    ``bias``: an optional (2L,) vector added to mu_logvar in place first: the head's bias
    folded into this block (one kernel fewer on a GPU). Folding changes where the addition
    runs, not a derivative: the bias gradient is the row sum of the backward's dmu_logvar,
    formed by the caller as for any dense layer. logvar is clamped in place to ±``limit``
    (:data:`LOGVAR_LIMIT`; a no-op in ordinary training). The formulas of
    :func:`reparameterize` and :func:`kl_standard_normal_terms`, arranged so that no temporary
    array is made (``z`` holds σ² − 1 before it holds z).
    """
    xp = xp_of(mu_logvar)
    if bias is not None:
        mu_logvar += bias
    L = z.shape[1]
    mu, logvar = mu_logvar[:, :L], mu_logvar[:, L:]
    if logvar.max() > limit or logvar.min() < -limit:
        xp.clip(logvar, -limit, limit, out=logvar)
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


@fused("reparam_kl_backward", on="mu_logvar")
def reparam_kl_backward(dz, eps, std, mu_logvar, beta, dmu_logvar, limit=LOGVAR_LIMIT):
    """Fused backward of :func:`reparam_kl_forward` for the objective  recon + β·KL.

    dz: (N, L) = ∂recon/∂z, spent: this body overwrites it (the contract is stated in
    :mod:`scratchvae.posteriors`); None: no reconstruction term, as in KL-only.
    beta: a number, or a float64 backend array of one value (a schedule read on the device).
    Writes dmu_logvar (N, 2L) = [dμ | dlv]. Derivation, per entry (σ = e^{½ lv}):

        through the sample z = μ + σ ε:   ∂z/∂μ = 1,  ∂z/∂lv = ε dσ/dlv = ½ σ ε
        through β·KL, KL = ½ (e^{lv} + μ² − 1 − lv):   ∂KL/∂μ = μ,  ∂KL/∂lv = ½ (σ² − 1)
        the two paths add:
          dμ  = dz + β μ
          dlv = ½ dz ε σ + ½ β (σ² − 1)  =  ½ (σ (dz ⊙ ε + β σ) − β)

    Entries clamped by the forward (|logvar| ≥ ``limit``) get dlv = 0, the clamp's derivative.
    ε is a constant (drawn by the caller): no gradient flows to it.
    """
    xp = xp_of(mu_logvar)
    if not isinstance(beta, (int, float)):
        beta = mu_logvar.dtype.type(beta.reshape(-1)[0])   # as the kernel reads it: in the dtype
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
    if lv.max() >= limit or lv.min() <= -limit:
        dlv *= xp.abs(lv) < limit         # clamped entries: zero gradient
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
