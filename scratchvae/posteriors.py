"""The encoder's posteriors q(z | x), one object each, so no caller branches on a family.

The encoder's last layer (the *head*) outputs the posterior's parameters for each row; the
posterior turns them into a sample z and KL(q ‖ p) with p = N(0, I), and back:

==========================================  ===========================================
``from_settings(settings)``                  the posterior a ModelConfig asks for (class method)
``head_width(L)``                           columns of the head's output for latent size L
``init_head(W, b, L)``                      adjust the head's freshly drawn weights (in place)
``workspace(xp, dtype, n, L)``              the buffers one training step needs
``draw_noise(stream, shape, dtype)``        ε for samples of this q (None: a point takes none)
``fill_noise(q, eps, stream)``              the noise of the sample (given, or drawn)
``forward(head, q, bias)``                  (z, KL sum): the fused sample-and-KL block
``dz_buffer(q, dhead)``                     where the decoder writes ∂recon/∂z
``backward(dz, q, head, beta, dhead)``      ∂(recon + β·KL)/∂head into dhead
``split(head)``                             the parameters of q for each row (``encode``)
``param_names``                             their names (the arrays ``scratchvae encode`` writes)
``label``, ``title_note``, ``prior_note``   what it is called, and what figure titles add
``no_q_why``                                None, or why there is no q(z|x) to sample (a point)
``grid(params, probs)``                     where a figure's grid of codes runs, unit by unit
``sample(params, eps)``                     z from the parameters and standard normals ε
``std(params)``                             the standard deviation of each unit of q
``covariance(params)``                      Cov q (…, L, L) (the figures' ellipses)
``log_det_rows(params, dtype)``             log |det ∂z/∂ε| per row
``log_q_rows(eps, params, dtype)``          log q(z|x) per row for the z that ε made
``log_prior_rows(z, dtype)``                log p(z) per row, p = N(0, I)
``kl_terms(params)``                        KL of each latent unit, per row
``head_log_det_rows(head, L)``              log |det ∂z/∂ε| per row of a training head
``sampled_backward(dz, q, head, w, dhead)``  ∂/∂head of its log q (and log p(z)) as sampled
``iw_backward(dz, q, head, weights, dhead)``  the importance-weighted gradient into dhead
==========================================  ===========================================

**dz is spent.** The decoder's backward writes ∂/∂z into ``dz_buffer(q, dhead)``; ``backward``
and ``iw_backward`` read it and may overwrite it (the diagonal NumPy body multiplies it by ε in
place, so it needs no scratch; the Numba twin and the CUDA kernels only read it), and after
them only ``dhead`` holds a result: no caller reads ``dz`` again. (The point code's ``dz`` *is*
``dhead``.) This is the one statement of the contract; ``tests/test_engine_misc.py`` poisons
``dz`` after each backward, for both families and both objectives, and the gradients must not
change.

Two Gaussian families: :class:`DiagonalGaussian`, whose parameters are (μ, logvar), and
:class:`FullGaussian`, whose parameters are (μ, ``scale_tril`` S) with q = N(μ, SSᵀ). Their
formulas live in :mod:`scratchvae.ops.gaussian` and :mod:`scratchvae.ops.fullcov`. Both heads
start with [μ | log-scale], the log-scale columns [L:2L] being logvar = 2 log σ (diagonal) or
d = log S_ii (full), so log |det ∂z/∂ε| = γ · Σ of those columns with γ = ½ or 1
(``log_scale_weight``). ``stochastic`` says whether there is a q(z|x) to sample at all (a plain
autoencoder's code is a point).
"""

from __future__ import annotations

from dataclasses import dataclass
from statistics import NormalDist
from types import SimpleNamespace

import numpy as np

from .backend import xp_of
from .errors import InputError
from .ops import fullcov
from .ops.gaussian import (
    LOGVAR_LIMIT,
    kl_standard_normal_terms,
    log_standard_normal_rows,
    reparam_kl_backward,
    reparam_kl_forward,
    reparameterize,
)


@dataclass
class Grid:
    """Where a figure's grid of codes runs (the manifold figure), unit by unit, and how the
    units rank: host float64 arrays, each with the words that describe it."""

    values: object        # (L, m): the m values of each unit along the grid
    values_what: str
    centre: object        # (L,): where the units off the grid are held
    centre_what: str
    score: object         # (L,): how much each unit is used (a figure shows the top two)
    score_what: str
    unit: str             # the score's unit, with its leading space ('' for none)


class _Gaussian:
    """What both Gaussian families share: the noise, log q by the change of variables, the
    prior, and the pieces of the importance-weighted objective."""

    @classmethod
    def from_settings(cls, settings):
        """The posterior a :class:`~scratchvae.config.ModelConfig` asks for (its own settings)."""
        return cls()

    stochastic = True
    prior_note, no_q_why = "", None

    def grid(self, params, probs):
        """The prior's quantiles Φ⁻¹(p) for every unit, the others held at the prior's mean 0,
        units ranked by their mean KL (params: host arrays of :meth:`split`)."""
        L = params[0].shape[1]
        phi = np.array([NormalDist().inv_cdf(float(p)) for p in probs])
        return Grid(values=np.tile(phi, (L, 1)), values_what="Φ⁻¹ of evenly spaced probabilities",
                    centre=np.zeros(L), centre_what="0", score=self.kl_terms(params).mean(axis=0),
                    score_what="mean KL", unit=" nats")

    def init_head(self, W, b, L):
        """The head keeps the default draw (see :meth:`FullGaussian.init_head`)."""

    def draw_noise(self, stream, shape, dtype):
        """ε ~ N(0, I) of ``shape`` (the samples' leading shape and L) from ``stream``."""
        return stream.normal(shape, dtype)

    def fill_noise(self, q, eps, stream):
        if eps is None:
            stream.normal(q.eps.shape, q.eps.dtype.name, out=q.eps)
        else:
            q.eps[...] = eps

    def dz_buffer(self, q, dhead):
        return q.dz

    def log_q_rows(self, eps, params, dtype=None):
        """log q(z|x) for z = z(ε): log N(ε; 0, I) − log |det ∂z/∂ε| (the change of variables
        z -> ε; no ε is recomputed from z). eps (..., L); the parameters broadcast to it."""
        return log_standard_normal_rows(eps, dtype=dtype) - self.log_det_rows(params, dtype)

    def log_prior_rows(self, z, dtype=None):
        """log p(z) per row, p = N(0, I)."""
        return log_standard_normal_rows(z, dtype=dtype)

    def head_log_det_rows(self, head, L, out=None):
        """log |det ∂z/∂ε| per row of a head as the forward left it (bias added, clamped):
        γ Σ_i s_i over its log-scale columns s = head[:, L:2L] (γ = ``log_scale_weight``), into
        ``out`` (rows,) where given."""
        log_det = xp_of(head).sum(head[:, L:2 * L], axis=1, out=out)
        log_det *= self.log_scale_weight
        return log_det

    def sampled_backward(self, dz, q, head, weights, dhead, standard_prior=False):
        """∂/∂head of Σ_r w_r (log q(z_r|·) [− log p(z_r)]) + (what ``dz`` carries) into dhead: the
        sample's own log-density terms taken as sampled, not in closed form (the importance-weighted
        bound's, and a hierarchical model's layers below the top).

        ``dz`` (rows, L) arrives as ∂/∂z of the rest (the decoder's or the layer above's backward)
        and is spent (see the module); ``weights``: w̃ per row (rows,), or a β (a number or an array
        of one value). Per row, log q(z|·) = −½‖ε‖² − γ Σ_i s_i (+ const) by the change of
        variables, s the log-scale columns, and with ``standard_prior`` −log p(z) = ½‖z‖² (+ const):
        ∂/∂z = z (ε is fixed) goes through the sample with the rest of dz (the fused backward with
        β = 0), and ∂/∂s_i = −γ directly. Clamped log-scales get 0, as in training.
        """
        xp = xp_of(head)
        L = q.z.shape[1]
        w = weights if isinstance(weights, (int, float)) else weights.reshape(-1, 1)
        if standard_prior:
            dz += xp.multiply(q.z, w, out=q.scratch)
        self.backward(dz, q, head, 0.0, dhead)
        ds = dhead[:, L:2 * L]
        if isinstance(w, (int, float)):
            ds -= self.log_scale_weight * w
        else:
            ds -= xp.multiply(w, self.log_scale_weight, out=q.scratch[:w.shape[0], :1])
        inside = xp.abs(head[:, L:2 * L], out=q.scratch)
        ds *= xp.less(inside, self.log_scale_limit, out=inside)      # 1 inside the clamp, else 0

    def iw_backward(self, dz, q, head, weights, dhead):
        """∂/∂head of Σ_r w̃_r (−log p(z_r) + log q(z_r|x)) + (what ``dz`` carries), the
        importance-weighted bound's (``weights`` w̃ (rows,)): :meth:`sampled_backward` with the
        standard normal prior, ∂/∂z = w̃ z."""
        self.sampled_backward(dz, q, head, weights, dhead, standard_prior=True)


class DiagonalGaussian(_Gaussian):
    """q(z|x) = N(μ(x), diag e^{logvar(x)}); the head outputs [μ | logvar], (N, 2L)."""

    name = "diagonal"
    label, title_note = "diagonal Gaussian q(z|x)", ""
    param_names = ("mu", "logvar")
    log_scale_weight = 0.5          # log σ = ½ logvar
    log_scale_limit = LOGVAR_LIMIT

    def head_width(self, L):
        return 2 * L


    def workspace(self, xp, dtype, n, L):
        e = lambda: xp.empty((n, L), dtype=dtype)  # noqa: E731
        return SimpleNamespace(eps=e(), z=e(), std=e(), scratch=e(), dz=e())

    def forward(self, head, q, bias):
        kl = reparam_kl_forward(head, q.eps, q.z, q.std, q.scratch, bias=bias)
        return q.z, kl

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

    def covariance(self, params):
        """diag(e^{logvar}) (…, L, L)."""
        xp = xp_of(params[1])
        return xp.exp(params[1])[..., None] * xp.eye(params[1].shape[-1], dtype=params[1].dtype)

    def log_det_rows(self, params, dtype=None):
        """log |det ∂z/∂ε| = Σ_j log σ_j = ½ Σ_j logvar_j per row."""
        return 0.5 * xp_of(params[1]).sum(params[1], axis=-1, dtype=dtype)

    def kl_terms(self, params):
        """KL(q ‖ p) of each latent unit, elementwise over (μ, logvar)."""
        return kl_standard_normal_terms(*params)


class FullGaussian(_Gaussian):
    """q(z|x) = N(μ(x), S(x) S(x)ᵀ), S lower triangular with a positive diagonal; the head
    outputs [μ | d | o], (N, 2L + L(L−1)/2): d = log diag S and S_ij = c·o_ij below the
    diagonal, c = ``offdiag_scale``.

    c = 1/√L by default: the off-diagonal weights' gradients (dz_i ε_j) are mostly noise that
    Adam turns into a random walk of about the learning rate per step, and 1/√L lets a row of
    up to L − 1 such entries move about as fast as one diagonal entry. ``offdiag_scale=1`` is
    the plain S_ij = o_ij, what runs saved before the scale existed hold
    (:meth:`scratchvae.config.ModelConfig.from_json`). The measurements: docs/design-notes.md.
    """

    name = "full"
    label, title_note = "full-covariance Gaussian q(z|x)", ", full-covariance q"
    param_names = ("mu", "scale_tril")
    log_scale_weight = 1.0          # log |det S| = Σ_i log S_ii
    log_scale_limit = fullcov.LOG_SCALE_LIMIT

    def __init__(self, offdiag_scale):
        self.offdiag_scale = offdiag_scale

    @classmethod
    def from_settings(cls, settings):
        return cls(settings.offdiag_scale)

    def head_width(self, L):
        return 2 * L + fullcov.tril_size(L)


    def init_head(self, W, b, L):
        """Start the strict lower triangle's columns at zero, so S starts diagonal: the model
        starts as the diagonal posterior does, spending no KL on ½ Σ S_k² of untrained entries,
        and ∂/∂W_o = hᵀ ∂/∂o is not zero at W_o = 0, so they grow where the gradient asks for
        them (docs/design-notes.md has the measurements).
        """
        W[:, 2 * L:] = 0
        b[2 * L:] = 0

    def workspace(self, xp, dtype, n, L):
        e = lambda *shape: xp.empty(shape, dtype=dtype)  # noqa: E731
        return SimpleNamespace(eps=e(n, L), z=e(n, L), scratch=e(n, L), dz=e(n, L),
                               scale=xp.zeros((n, L, L), dtype=dtype), outer=e(n, L, L),
                               gathered=e(n, fullcov.tril_size(L)))

    def forward(self, head, q, bias):
        kl = fullcov.fullcov_reparam_kl_forward(head, q.eps, q.z, q.scale, q.scratch, bias=bias,
                                                offdiag=self.offdiag_scale)
        return q.z, kl

    def backward(self, dz, q, head, beta, dhead):
        fullcov.fullcov_reparam_kl_backward(dz, q.eps, q.scale, head, beta, dhead, q.outer, q.gathered,
                                            offdiag=self.offdiag_scale)

    def split(self, head):
        """(μ, scale_tril S (N, L, L)) of a head output (bias included), clamped as in training."""
        return fullcov.scale_tril_from_head(head, offdiag=self.offdiag_scale)

    def sample(self, params, eps):
        return fullcov.fullcov_sample(params[0], params[1], eps)

    def std(self, params):
        """The standard deviation of each unit of q, √(SSᵀ)_ii."""
        return fullcov.fullcov_std(params[1])

    def covariance(self, params):
        """S Sᵀ (…, L, L)."""
        S = params[1]
        return S @ xp_of(S).swapaxes(S, -1, -2)

    def log_det_rows(self, params, dtype=None):
        """log |det ∂z/∂ε| = log det S = Σ_i log S_ii per row."""
        return fullcov.fullcov_log_det_rows(params[1], dtype)

    def kl_terms(self, params):
        """Each unit's share of KL(q ‖ p), row i of S (see :func:`~scratchvae.ops.fullcov.fullcov_kl_terms`)."""
        return fullcov.fullcov_kl_terms(*params)


POSTERIORS = {"diagonal": DiagonalGaussian, "full": FullGaussian}
"""The Gaussian families a VAE's ``posterior=`` names."""


class PointMass:
    """A plain autoencoder's code: z = μ(x), no sampling and no KL; the head outputs μ, (N, L)."""

    name = "point"
    label, title_note, prior_note = "point code z = μ(x)", "", " (an AE has no prior)"
    no_q_why = "a plain autoencoder ('ae') has no q(z|x) to draw codes from"
    param_names = ("mu",)
    stochastic = False

    def grid(self, params, probs):
        """With no prior: each unit's empirical quantiles of μ over the images, the others held
        at their mean μ, units ranked by the variance of μ (params: host arrays)."""
        mu = params[0]
        values = np.stack([np.quantile(mu[:, j], probs) for j in range(mu.shape[1])])
        return Grid(values=values, values_what="empirical quantiles of μ", centre=mu.mean(axis=0),
                    centre_what="mean μ", score=mu.var(axis=0), score_what="variance of μ", unit="")

    @classmethod
    def from_settings(cls, settings):
        return cls()

    def head_width(self, L):
        return L


    def init_head(self, W, b, L):
        """The head keeps the default draw."""

    def workspace(self, xp, dtype, n, L):
        return SimpleNamespace(zero=xp.zeros((), dtype=dtype))

    def draw_noise(self, stream, shape, dtype):
        """None: a point code z = μ(x) takes no noise (nothing is drawn from ``stream``)."""
        return None

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

    def log_det_rows(self, params, dtype=None):
        """A point has no density: importance sampling (log p(x)) needs a q(z|x) to sample."""
        raise InputError("IWAE needs a VAE: a plain autoencoder ('ae') has no q(z|x) to sample from "
                         "(use a 'vae' or 'kl-only' model)")

    def sample(self, params, eps):
        return params[0]


def make_posterior(settings):
    """The posterior of a model's :class:`~scratchvae.config.ModelConfig`: the AE's point code for
    mode 'ae', else the Gaussian family ``settings.posterior`` names (the full one with the
    configuration's ``offdiag_scale``)."""
    return (PointMass if settings.mode == "ae" else POSTERIORS[settings.posterior]).from_settings(settings)
