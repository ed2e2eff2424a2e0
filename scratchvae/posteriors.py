"""The encoder's posteriors q(z | x), one object each, so no caller branches on a family.

The encoder's last layer (the *head*) outputs the posterior's parameters for each row; the
posterior turns them into a sample z and KL(q ‖ p) with p = N(0, I), and back:

==========================================  ===========================================
``head_width(L)``                           columns of the head's output for latent size L
``workspace(xp, dtype, n, L)``              the buffers one training step needs
``fill_noise(q, eps, stream)``              the noise of the sample (given, or drawn)
``forward(head, q, bias)``                  (z, KL sum): the fused sample-and-KL block
``dz_buffer(q, dhead)``                     where the decoder writes ∂recon/∂z
``backward(dz, q, head, beta, dhead)``      ∂(recon + β·KL)/∂head into dhead
``split(head)``                             the parameters (μ, logvar) of q for each row
``sample(params, eps)``                     z from the parameters and standard normals ε
``std(params)``                             the standard deviation of each unit of q
``log_q_rows(eps, params, dtype)``          log q(z|x) per row for the z that ε made
``log_prior_rows(z, dtype)``                log p(z) per row, p = N(0, I)
``kl_terms(params)``                        KL of each latent unit, per row
==========================================  ===========================================

Its formulas live in :mod:`scratchvae.ops.gaussian`. ``stochastic`` says whether there is a
q(z|x) to sample at all (a plain autoencoder's code is a point).
"""

from __future__ import annotations

from types import SimpleNamespace

from .backend import xp_of
from .ops.gaussian import (
    LOGVAR_LIMIT,
    kl_standard_normal_terms,
    log_standard_normal_rows,
    reparam_kl_backward,
    reparam_kl_forward,
    reparameterize,
)


class DiagonalGaussian:
    """q(z|x) = N(μ(x), diag e^{logvar(x)}); the head outputs [μ | logvar], (N, 2L)."""

    name = "diagonal"
    stochastic = True

    def head_width(self, L):
        return 2 * L

    def workspace(self, xp, dtype, n, L):
        e = lambda: xp.empty((n, L), dtype=dtype)  # noqa: E731
        return SimpleNamespace(eps=e(), z=e(), std=e(), scratch=e(), dz=e())

    def fill_noise(self, q, eps, stream):
        if eps is None:
            stream.normal(q.eps.shape, q.eps.dtype.name, out=q.eps)
        else:
            q.eps[...] = eps

    def forward(self, head, q, bias):
        kl = reparam_kl_forward(head, q.eps, q.z, q.std, q.scratch, bias=bias)
        return q.z, kl

    def dz_buffer(self, q, dhead):
        return q.dz

    def backward(self, dz, q, head, beta, dhead):
        reparam_kl_backward(dz, q.eps, q.std, head, beta, dhead)

    def split(self, head):
        """(μ, logvar) of a head output (bias included), logvar clamped as in training."""
        L = head.shape[1] // 2
        xp = xp_of(head)
        return head[:, :L].copy(), xp.clip(head[:, L:], -LOGVAR_LIMIT, LOGVAR_LIMIT)

    def sample(self, params, eps):
        mu, logvar = params
        return reparameterize(mu, logvar, eps)[0]

    def std(self, params):
        """The standard deviation of each unit of q, σ = exp(½ logvar)."""
        return xp_of(params[1]).exp(0.5 * params[1])

    def log_q_rows(self, eps, params, dtype=None):
        """log N(z; μ, σ²) for z = μ + σ ε, as log N(ε; 0, I) − ½ Σ_j logvar_j (the change of
        variables z -> ε; no (z − μ)/σ is recomputed). eps (..., L); logvar broadcast to it."""
        _, logvar = params
        xp = xp_of(eps)
        half_sum = 0.5 * xp.sum(logvar, axis=-1, dtype=dtype)
        return log_standard_normal_rows(eps, dtype=dtype) - half_sum

    def log_prior_rows(self, z, dtype=None):
        """log p(z) per row, p = N(0, I)."""
        return log_standard_normal_rows(z, dtype=dtype)

    def kl_terms(self, params):
        """KL(q ‖ p) of each latent unit, elementwise over (μ, logvar)."""
        return kl_standard_normal_terms(*params)


class PointMass:
    """A plain autoencoder's code: z = μ(x), no sampling and no KL; the head outputs μ, (N, L)."""

    name = "point"
    stochastic = False

    def head_width(self, L):
        return L

    def workspace(self, xp, dtype, n, L):
        return SimpleNamespace(zero=xp.zeros((), dtype=dtype))

    def fill_noise(self, q, eps, stream):
        pass

    def forward(self, head, q, bias):
        head += bias
        return head, q.zero

    def dz_buffer(self, q, dhead):
        return dhead                 # z is the head's output: ∂/∂z is ∂/∂head

    def backward(self, dz, q, head, beta, dhead):
        pass

    def split(self, head):
        return head, None

    def sample(self, params, eps):
        return params[0]

