"""Reference implementations: the unfused forms of the blocks training runs, kept as test oracles.

Training never calls these. Each is the textbook form of a formula whose fused, in-place
version lives beside its derivation (the ``See`` line of each), and the tests check the two
against each other, so a reader can compare the plain formula with the arranged one:

==============================  ===================================================
reference                       the function training runs
==============================  ===================================================
:func:`dense_forward`           :func:`.dense.matmul` + the bias folded into the next block
:func:`reparameterize_backward` :func:`.gaussian.reparam_kl_backward`
:func:`kl_standard_normal`      :func:`.gaussian.reparam_kl_forward`
:func:`kl_standard_normal_backward`  :func:`.gaussian.reparam_kl_backward`
:func:`bernoulli_nll`           :func:`.likelihoods.bernoulli_nll_forward_backward`
:func:`bernoulli_nll_backward`  :func:`.likelihoods.bernoulli_nll_forward_backward`
:func:`gaussian_nll`            :func:`.likelihoods.gaussian_nll_forward_backward`
:func:`fullcov_kl`              :func:`.fullcov.fullcov_reparam_kl_forward`
:func:`fullcov_kl_backward`     :func:`.fullcov.fullcov_reparam_kl_backward`
:func:`fullcov_reparameterize_backward`  :func:`.fullcov.fullcov_reparam_kl_backward`
==============================  ===================================================
"""

from __future__ import annotations

from ..backend import xp_of
from .activations import sigmoid, softplus
from .gaussian import LOG_2PI, kl_standard_normal_terms


def dense_forward(x, W, b):
    """y = x W + b  (y_nj = Σ_i x_ni W_ij + b_j). See :mod:`.dense`."""
    return xp_of(x).matmul(x, W) + b


def reparameterize_backward(dz, eps, std):
    """(dμ, dlogvar) through z = μ + exp(½·logvar) ⊙ ε:  dμ = dz,  dlogvar = ½ · dz ⊙ ε ⊙ σ.

    See :func:`.gaussian.reparam_kl_backward` (σ = e^{½ lv}, so dσ/dlv = ½ σ).
    """
    return dz.copy(), 0.5 * dz * eps * std


def kl_standard_normal(mu, logvar):
    """KL( N(μ, diag σ²) ‖ N(0, I) ) summed over rows and units (0-d).
    See :func:`.gaussian.kl_standard_normal_terms`."""
    return xp_of(mu).sum(kl_standard_normal_terms(mu, logvar))


def kl_standard_normal_backward(mu, logvar):
    """Gradients of KL = ½ Σ (e^{lv} + μ² − 1 − lv):  ∂KL/∂μ = μ;  ∂KL/∂lv = ½(e^{lv} − 1)."""
    xp = xp_of(mu)
    return mu.copy(), 0.5 * (xp.exp(logvar) - 1.0)


def bernoulli_nll(logits, x):
    """Σ_{n,d} softplus(y) − x·y  (0-d). See :mod:`.likelihoods`."""
    return xp_of(logits).sum(softplus(logits) - x * logits)


def bernoulli_nll_backward(logits, x):
    """∂/∂y Σ (softplus(y) − x y) = σ(y) − x   (N, D)."""
    return sigmoid(logits) - x


def gaussian_nll(mean, x, log_sigma):
    """Σ ½ log 2π + log σ + (x − m)²/(2σ²)  (0-d); log σ a float, (1,) or (D,)."""
    xp = xp_of(mean)
    r = x - mean
    return xp.sum(0.5 * LOG_2PI + log_sigma + 0.5 * r * r * xp.exp(-2.0 * xp.asarray(log_sigma)))


def fullcov_kl(mu, scale_tril):
    """KL( N(μ, SSᵀ) ‖ N(0, I) ) summed over rows (0-d), as the textbook writes it:
    ½ Σ_n (tr Σ + μᵀμ − L − log det Σ) with Σ = S Sᵀ formed and log det Σ from ``slogdet``.
    See :mod:`.fullcov` (which never forms Σ)."""
    xp = xp_of(mu)
    L = mu.shape[-1]
    cov = xp.matmul(scale_tril, xp.swapaxes(scale_tril, -1, -2))
    _, logdet = xp.linalg.slogdet(cov)
    return 0.5 * xp.sum(xp.trace(cov, axis1=-2, axis2=-1) + xp.sum(mu * mu, axis=-1) - L - logdet)


def fullcov_kl_backward(mu, scale_tril):
    """Gradients of :func:`fullcov_kl`: ∂KL/∂μ = μ;  ∂KL/∂S = S − S⁻ᵀ on the lower triangle.

    From ∂ tr(SSᵀ)/∂S = 2S and ∂ log det(SSᵀ)/∂S = 2 S⁻ᵀ (Jacobi's formula); only S's lower
    triangle is a parameter, and S⁻ᵀ is upper triangular, so there S − S⁻ᵀ = S − diag(1/S_ii).
    """
    xp = xp_of(mu)
    inv_t = xp.swapaxes(xp.linalg.inv(scale_tril), -1, -2)
    return mu.copy(), (scale_tril - inv_t) * xp.tri(mu.shape[-1], dtype=mu.dtype)


def fullcov_reparameterize_backward(dz, eps):
    """(dμ, dS) through z = μ + S ε per row:  dμ = dz,  dS = tril(dz εᵀ)  (∂z_i/∂S_ij = ε_j)."""
    lower = xp_of(dz).tri(dz.shape[-1], dtype=dz.dtype)
    return dz.copy(), dz[..., :, None] * eps[..., None, :] * lower
