"""The full-covariance Gaussian posterior's blocks: q(z|x) = N(μ, S Sᵀ), S lower triangular.

Notation (N batch, L latent; per row): μ (L,); the Cholesky factor S (L, L), ``scale_tril``,
with S_ij = 0 for j > i and a positive diagonal S_ii = e^{d_i}, d = log diag S; the strict lower
triangle is S_ij = c·o_ij for i > j, o (M = L(L−1)/2 entries) in row-major order, the order of
``numpy.tril_indices(L, -1)``: row i's entries o_i0 … o_i,i−1 start at offset i(i−1)/2. The
encoder's head outputs [μ | d | o] per row, width 2L + M; c is the posterior's fixed
``offdiag_scale`` (by default 1/√L: :class:`scratchvae.posteriors.FullGaussian` says why).

    Σ = S Sᵀ                  (any positive-definite Σ has exactly one such S: its Cholesky factor)
    z = μ + S ε,  ε ~ N(0, I)  (then Cov z = S E[εεᵀ] Sᵀ = S Sᵀ)
    log det Σ = 2 Σ_i d_i      (S is triangular: det S = Π_i S_ii)

KL to the prior p = N(0, I), from KL = ½ (tr Σ + μᵀμ − L − log det Σ) (derived in
:func:`.gaussian.kl_standard_normal_terms`) with tr(S Sᵀ) = Σ_ij S_ij² = ‖S‖²_F:

    KL = ½ (‖S‖²_F + ‖μ‖² − L − 2 Σ_i d_i) = ½ Σ_i (e^{2d_i} − 1 − 2d_i + μ_i²) + ½ Σ_k (c o_k)²

With o = 0 and d = ½ logvar this is the diagonal posterior's KL term for term, and z its sample.

Training runs the fused pair :func:`fullcov_reparam_kl_forward` / :func:`fullcov_reparam_kl_backward`;
evaluation and the figures call :func:`scale_tril_from_head`, :func:`fullcov_sample`,
:func:`fullcov_log_det_rows` and :func:`fullcov_kl_terms`.
"""

from __future__ import annotations

import functools

import numpy as np

from ..backend import fused, xp_of
from .gaussian import LOGVAR_LIMIT

LOG_SCALE_LIMIT = 0.5 * LOGVAR_LIMIT
"""d = log S_ii is clamped to [−15, 15] before sampling: the diagonal posterior's logvar clamp
(S_ii² = e^{2d} is its σ²), with the same exact gradient inside and 0 for clamped entries."""


def tril_size(L):
    """M = L(L−1)/2, the number of strictly-lower entries of an L×L matrix."""
    return L * (L - 1) // 2


@functools.lru_cache(maxsize=None)
def tril_indices(L):
    """(rows, cols, flat) int64 host arrays of the strict lower triangle in row-major order;
    flat = rows·L + cols indexes a row of an (N, L·L) view of (N, L, L) matrices."""
    rows, cols = np.tril_indices(L, -1)
    return rows, cols, rows * L + cols


@fused("fullcov_reparam_kl_forward")
def fullcov_reparam_kl_forward(head, eps, z, scale, scratch, bias=None, limit=LOG_SCALE_LIMIT,
                               offdiag=1.0):
    """Fused block after the encoder's head GEMM: S from the head, z = μ + S ε and the KL sum.

    head: (N, 2L + M) = [μ | d | o]; eps, z, scratch: (N, L); scale: (N, L, L), written whole
    (S: c·o below the diagonal, e^{d} on it, 0 above), kept for the backward; c = ``offdiag``,
    a Python float. ``bias`` (2L + M,): the head's bias, added to ``head`` in place first; d is
    clamped in place to ±``limit``.
    Returns KL (0-d, no host sync) = ½ Σ_n [Σ_i (e^{2d_i} − 1 − 2d_i + μ_i²) + Σ_k S_k²] (see
    the module). Each diagonal term is formed as the diagonal block forms it,
    (μ² + expm1(2d)) − 2d: ≥ 0 in floating point, and with o = 0, d = ½ logvar the same bits.
    """
    xp = xp_of(head)
    if bias is not None:
        head += bias
    N, L = z.shape
    mu, d, o = head[:, :L], head[:, L:2 * L], head[:, 2 * L:]
    if d.max() > limit or d.min() < -limit:
        xp.clip(d, -limit, limit, out=d)
    flat = scale.reshape(N, L * L)
    scale[...] = 0
    flat[:, tril_indices(L)[2]] = o           # S below the diagonal: c·o (c = 1: o itself)
    if offdiag != 1.0:
        flat *= offdiag
    off = xp.vdot(flat, flat)                 # Σ S_k² below the diagonal (the diagonal is still 0)
    diag = flat[:, ::L + 1]
    xp.exp(d, out=diag)                       # S_ii = e^{d}
    t = xp.multiply(mu, mu, out=scratch)      # μ²
    xp.multiply(d, 2.0, out=z)                # 2d = log S_ii² (z is free until the end)
    xp.expm1(z, out=z)
    t += z                                    # μ² + e^{2d} − 1
    xp.multiply(d, 2.0, out=z)
    t -= z                                    # − 2d
    kl = 0.5 * (xp.sum(t) + off)
    xp.matmul(scale, eps[:, :, None], out=z[:, :, None])   # S ε
    z += mu
    return kl


@fused("fullcov_reparam_kl_backward", on="head")
def fullcov_reparam_kl_backward(dz, eps, scale, head, beta, dhead, outer, gathered,
                                limit=LOG_SCALE_LIMIT, offdiag=1.0):
    """Fused backward of :func:`fullcov_reparam_kl_forward` for the objective  recon + β·KL.

    dz: (N, L) = ∂recon/∂z, spent (the contract is stated in :mod:`scratchvae.posteriors`;
    this body happens only to read it); None: no reconstruction term, as in KL-only.
    beta: a number or a float64 backend array of one value. Writes dhead (N, 2L + M) =
    [dμ | dd | do]. ``outer`` (N, L, L) and ``gathered`` (N, M): scratch of this NumPy body.
    Derivation, per row (z_i = μ_i + Σ_{j≤i} S_ij ε_j, S_ii = e^{d_i}):

        through the sample:  ∂z_i/∂μ_i = 1,  ∂z_i/∂S_ij = ε_j   ->  dS = tril(dz εᵀ), dμ = dz
        through β·KL:        ∂KL/∂μ_i = μ_i,  ∂KL/∂S_ij = S_ij (i > j),  ∂KL/∂d_i = e^{2d_i} − 1
        the chain to o, d:   ∂S_ij/∂o_ij = c,  ∂S_ii/∂d_i = S_ii
          dμ   = dz + β μ
          do_k = (dz_r ε_c + β S_rc) c                   (k the entry (r, c), r > c)
          dd_i = (dz_i ε_i + β S_ii) S_ii − β            (= S_ii dS_ii + β (S_ii² − 1))

    With o = 0 and d = ½ logvar, dμ is the diagonal block's and dd exactly twice its dlogvar
    (d = ½ logvar, so ∂/∂d = 2 ∂/∂logvar). Clamped entries (|d| ≥ ``limit``) get dd = 0.
    """
    xp = xp_of(head)
    if not isinstance(beta, (int, float)):
        beta = head.dtype.type(beta.reshape(-1)[0])   # as the kernel reads it: in the dtype
    N, L = eps.shape
    mu, d, o = head[:, :L], head[:, L:2 * L], head[:, 2 * L:]
    dmu, dd, do = dhead[:, :L], dhead[:, L:2 * L], dhead[:, 2 * L:]
    s = scale.reshape(N, L * L)[:, ::L + 1]           # S_ii
    xp.multiply(mu, beta, out=dmu)
    xp.multiply(o, offdiag, out=do)                   # S_rc = c o_k, as the forward rounded it
    do *= beta
    xp.multiply(s, beta, out=dd)                      # β S_ii
    if dz is not None:
        dmu += dz
        xp.multiply(dz[:, :, None], eps[:, None, :], out=outer)   # dz_i ε_j
        flat = outer.reshape(N, L * L)
        dd += flat[:, ::L + 1]
        do += xp.take(flat, tril_indices(L)[2], axis=1, out=gathered, mode="clip")
    if offdiag != 1.0:
        do *= offdiag
    dd *= s
    dd -= beta
    if d.max() >= limit or d.min() <= -limit:
        dd *= xp.abs(d) < limit                       # clamped entries: zero gradient
    return dhead


# -- evaluation and figures: S as an array ---------------------------------------------------
def scale_tril_from_head(head, limit=LOG_SCALE_LIMIT, offdiag=1.0):
    """(μ, S) of head outputs (N, 2L + M) (bias included): μ a copy (N, L), S (N, L, L) with
    c·o below the diagonal (c = ``offdiag``) and e^{clip(d, ±limit)} on it, as training forms it."""
    xp = xp_of(head)
    N, P = head.shape
    L = _latent_of(P)
    S = xp.zeros((N, L, L), dtype=head.dtype)
    rows, cols, _ = tril_indices(L)
    S[:, xp.asarray(rows), xp.asarray(cols)] = head[:, 2 * L:]
    if offdiag != 1.0:
        S *= offdiag
    i = xp.arange(L)
    S[:, i, i] = xp.exp(xp.clip(head[:, L:2 * L], -limit, limit))
    return head[:, :L].copy(), S


def _latent_of(width):
    """L from the head's width 2L + L(L−1)/2 = L(L+3)/2."""
    L = int(round((-3 + (9 + 8 * width) ** 0.5) / 2))
    if L * (L + 3) // 2 != width:
        raise ValueError(f"a full-covariance head has width L(L+3)/2, got {width}")
    return L


def fullcov_sample(mu, scale_tril, eps):
    """z = μ + S ε for any leading shapes that broadcast (evaluation: μ (n, 1, L),
    S (n, 1, L, L), ε (n, K, L))."""
    xp = xp_of(mu)
    return mu + xp.matmul(scale_tril, eps[..., None])[..., 0]


def fullcov_log_det_rows(scale_tril, dtype=None):
    """log |det S| = Σ_i log S_ii per matrix (…, L, L) -> (…): half of log det Σ, the
    Jacobian of z -> ε, so  log q(z|x) = log N(ε; 0, I) − log |det S|."""
    xp = xp_of(scale_tril)
    diag = xp.diagonal(scale_tril, axis1=-2, axis2=-1)
    return xp.sum(xp.log(diag), axis=-1, dtype=dtype)


def fullcov_std(scale_tril):
    """The standard deviation of each unit of q: √Σ_ii = ‖row i of S‖  -> (…, L)."""
    xp = xp_of(scale_tril)
    return xp.sqrt(xp.sum(scale_tril * scale_tril, axis=-1))


def fullcov_kl_terms(mu, scale_tril):
    """Row i's share of the KL, elementwise over the units: ½ (Σ_{j<i} S_ij² + e^{2d_i} − 1 − 2d_i + μ_i²)
    (…, L), d_i = log S_ii; the terms add up to the KL of the module (the diagonal form when S
    is diagonal)."""
    xp = xp_of(mu)
    L = mu.shape[-1]
    lv = 2.0 * xp.log(xp.diagonal(scale_tril, axis1=-2, axis2=-1))
    low = scale_tril * xp.tri(L, L, -1, dtype=scale_tril.dtype)   # the strict lower triangle
    return 0.5 * (xp.expm1(lv) - lv + mu * mu + xp.sum(low * low, axis=-1))
