"""Reconstruction negative log-likelihoods, −log p(x | z), summed over pixels and rows.

Shapes: logits / means and targets x are (N, D). All values are in nats.

Bernoulli on logits y (x ∈ [0, 1]):
    −log p(x|y) = −[x log σ(y) + (1−x) log(1 − σ(y))] = softplus(y) − x·y
using log σ(y) = −softplus(−y), log(1−σ(y)) = −softplus(y) and softplus(y) − softplus(−y) = y.
No clipping is needed: softplus(y) = max(y, 0) + log1p(e^{−|y|}) is finite for every finite y.
    ∂/∂y = σ(y) − x.

Gaussian with standard deviation σ (per pixel: a scalar or a (D,) vector), mean m:
    −log p(x|m) = ½ log 2π + log σ + (x − m)² / (2σ²)
    ∂/∂m = (m − x)/σ²;   ∂/∂log σ = 1 − (x − m)²/σ²  (summed over the pixels sharing that σ)
These are densities: for continuous pixels they are not comparable with Bernoulli nats
(the README explains why).

A learned log σ has a soft floor (Rybkin et al. 2021, "Simple and effective VAE training
with calibrated decoders"):  log σ = f + softplus(s − f), f = LOG_SIGMA_FLOOR = −6, where s
is the raw parameter; so σ > e^{−6} ≈ 0.0025 always, and log σ ≈ s once s ≫ f.
    d log σ / ds = sigmoid(s − f).
"""

from __future__ import annotations

import math

from ..backend import fused, xp_of
from .activations import sigmoid, softplus
from .gaussian import LOG_2PI

LOG_SIGMA_FLOOR = -6.0


# -- Bernoulli ----------------------------------------------------------------------
def sample_bernoulli(p, u, out=None):
    """Pixels drawn from Bernoulli(p): 1 where u < p, else 0, given uniforms u ∈ (0, 1).

    The one Bernoulli draw of scratchvae (binarising data, drawing pixels from p(x|z));
    P(u < p) = p for u ~ U(0, 1). ``out`` (p's dtype, may be ``u``) receives 1.0 / 0.0.
    """
    xp = xp_of(p)
    if out is None:
        out = xp.empty(p.shape, dtype=p.dtype)
    return xp.less(u, p, out=out)


@fused("bernoulli_nll")
def bernoulli_nll_forward_backward(logits, x, dlogits, scratch, overwrite_logits=False, bias=None):
    """Fused block after the decoder's last GEMM: loss and its gradient together.

    Writes dlogits = σ(y) − x and returns Σ softplus(y) − x·y (0-d). ``scratch``: (N, D);
    with ``overwrite_logits`` the logits buffer is used as a second scratch (the model
    does this: the logits are not needed after this block; without it, one (N, D)
    temporary is allocated). ``bias``: an optional (D,) vector added to the logits first,
    y = logits + bias: the layer's bias folded into this block, so that a GPU reads and
    writes the (N, D) logits once instead of twice. Since ∂y_nd/∂bias_d = 1, the bias
    gradient is Σ_n dlogits_n, which the caller forms as before (``dense_backward``'s row
    sum); folding changes where the addition runs, not a derivative. The NumPy body leaves
    the elementwise terms in ``scratch`` (the accuracy tests read them there).

    Both come from one exponential, t = e^{−y}, with the exponent clipped to [−c, c]
    (c = 88 in float32, 708 in float64, so t, 1/t and 1 + t never overflow):
        σ(y) = 1 / (1 + t)
        softplus(y) − x·y = [max(y, 0) − x·y] + log1p(e^{−|y|}),   e^{−|y|} = min(t, 1/t)
    (t ≤ 1 exactly when y ≥ 0). Each piece keeps its relative accuracy:
      * e^{−|y|} ∈ (0, 1] is t or 1/t: the exponential's error plus at most one rounding;
        log1p(u) for u ∈ [0, 1] has condition number u / ((1 + u) log1p(u)) ≤ 1.
      * max(y, 0) − x·y is y − x·y for y ≥ 0 and −x·y for y < 0: one product, one
        subtraction. For x ∈ [0, 1] it is ≥ 0 after rounding too (fl(x·y) ≤ y when y ≥ 0);
        exact for x ∈ {0, 1}, and otherwise within u|x·y| of exact (u the unit roundoff)
        before that subtraction's own rounding — no more than the term moves when x itself
        changes by one rounding (∂/∂x = −y).
      * both parts are ≥ 0, so their sum does not cancel.
    So each term is within a few ulp of softplus(y) − x·y, in both tails: e^{y} for y ≪ 0,
    x = 0, and e^{−y} for y ≫ 0, x = 1 (docs/design-notes.md has the form this replaced).
    Beyond the cap, |y| > c, e^{−|y|} is taken as e^{−c}: each term is then off by at most
    about e^{−c} (absolute; below the smallest normal float32 for c = 88), and no loss or
    probability is clipped, nothing overflows, for any finite y. The sum is of the elementwise terms, so
    large logits do not cancel between two large sums.

    The gradient ∂/∂y (softplus(y) − x·y) = σ(y) − x = 1/(1 + t).
    """
    xp = xp_of(logits)
    if bias is not None:
        logits = xp.add(logits, bias, out=logits if overwrite_logits else None)
    cap = 88.0 if logits.dtype.itemsize == 4 else 708.0
    t = xp.negative(logits, out=dlogits)
    xp.clip(t, -cap, cap, out=t)
    xy = xp.multiply(logits, x, out=scratch)
    # max(y, 0), written as clip(y, 0, ∞): the same values, faster (docs/design-notes.md)
    a = xp.clip(logits, 0.0, math.inf, out=logits if overwrite_logits else None)
    a -= xy                                   # max(y, 0) − x·y  (≥ 0)
    xp.exp(t, out=t)                          # t = e^{−y}
    e = xp.reciprocal(t, out=scratch)
    xp.minimum(e, t, out=e)                   # e^{−|y|}
    xp.log1p(e, out=e)
    e += a                                    # softplus(y) − x·y
    t += 1.0
    sig = xp.reciprocal(t, out=t)             # σ(y)
    sig -= x                                  # dlogits = σ(y) − x
    return xp.sum(e)


# -- Gaussian -----------------------------------------------------------------------
def soft_floor_log_sigma(s, floor=LOG_SIGMA_FLOOR, out=None, scratch=None):
    """log σ = f + softplus(s − f): the learned log σ with a soft floor f.  Returns log σ (into
    ``out``, with softplus's ``scratch``, where given: buffers of s's shape)."""
    log_sigma = xp_of(s).subtract(s, floor, out=out)
    softplus(log_sigma, out=log_sigma, scratch=scratch)
    log_sigma += floor
    return log_sigma


def soft_floor_log_sigma_backward(dlog_sigma, s, floor=LOG_SIGMA_FLOOR, out=None):
    """ds = dlog σ · sigmoid(s − f)   (d softplus(u)/du = σ(u)); into ``out`` where given."""
    ds = xp_of(s).subtract(s, floor, out=out)
    sigmoid(ds, out=ds)
    ds *= dlog_sigma
    return ds


def gaussian_nll_forward_backward(mean, x, log_sigma, dmean, scratch, per_pixel=False, row_weights=None,
                                  vector=None):
    """Fused block for the Gaussian likelihood: loss, ∂/∂mean and ∂/∂log σ together.

    mean, x, dmean, scratch: (N, D). log_sigma: a Python float (fixed σ), or a backend
    array of shape (1,) (shared) or (D,) (``per_pixel``). Writes dmean = (m − x)/σ².
    Returns (loss 0-d, dlog_sigma or None):
      loss = N·D·½ log 2π + Σ log σ + ½ Σ r²/σ²,  r = m − x
      dlog σ = Σ_(pixels sharing σ) (1 − r²/σ²)
    Derivation, per pixel, with ℓ = ½ log 2π + log σ + ½ r² e^{−2 log σ}:
      ∂ℓ/∂m = r e^{−2 log σ} = (m − x)/σ²
      ∂ℓ/∂log σ = 1 + ½ r² · (−2) e^{−2 log σ} = 1 − r²/σ²
    and a σ shared by several pixels (or rows) collects the sum of theirs.
    ``row_weights`` (N,): the same for Σ_n w_n ℓ_n, the rows weighted (the importance-weighted
    objective's w̃): each row's terms scaled by w_n, N replaced by W = Σ_n w_n. ``vector``: a
    buffer of log_sigma's shape for 1/σ² and then dlog σ (a learned σ's; else a temporary).
    """
    xp = xp_of(mean)
    N, D = mean.shape
    n = N if row_weights is None else xp.sum(row_weights)      # rows, or their total weight
    xp.subtract(mean, x, out=dmean)                      # r
    fixed = isinstance(log_sigma, (int, float))
    if fixed:
        inv_var = math.exp(-2.0 * log_sigma)
        sum_log_sigma = n * D * log_sigma
    else:
        inv_var = xp.multiply(log_sigma, -2.0, out=vector)
        xp.exp(inv_var, out=inv_var)
        sum_log_sigma = n * (xp.sum(log_sigma) if per_pixel else D * log_sigma[0])
    q = xp.multiply(dmean, dmean, out=scratch)
    q *= inv_var                                         # r²/σ²
    dmean *= inv_var                                     # r/σ²
    if row_weights is not None:
        q *= row_weights[:, None]
        dmean *= row_weights[:, None]
    if per_pixel:
        col = xp.sum(q, axis=0, out=inv_var)             # (D,), into 1/σ² (spent)
        quad = xp.sum(col)
        dls = None if fixed else xp.subtract(n, col, out=col)
    else:
        quad = xp.sum(q)
        dls = None if fixed else xp.reshape(n * D - quad, (1,))
    loss = 0.5 * quad + (n * D * 0.5 * LOG_2PI) + sum_log_sigma
    return loss, dls


def sample_gaussian(mean, log_sigma, eps):
    """Pixels drawn from N(mean, σ²): mean + σ ⊙ ε, given standard normals ε.

    ``log_sigma``: a float (fixed σ), or an array (1,) / (D,) broadcast over the rows.
    """
    xp = xp_of(mean)
    sigma = xp.exp(xp.asarray(log_sigma, dtype=mean.dtype))
    return mean + sigma * eps


# -- row-wise log-likelihoods (evaluation) ----------------------------------------------
# One value per row: the sums run over the last axis (the D pixels) only, so the inputs may
# be (N, D) or stacked (n, K, D) with x broadcast as (n, 1, D). No gradients: these serve
# importance sampling, where each (image, sample) pair needs its own log p(x|z).
@fused("bernoulli_nll_rows")
def bernoulli_nll_rows(logits, x, dtype=None, out=None, buffers=None):
    """−log p(x|y) per row: Σ_d softplus(y_d) − x_d·y_d  -> logits.shape[:-1].

    ``dtype``: the accumulator and result dtype (default the logits'; pass float64 to sum
    the D terms in double precision). ``out``: the result's buffer (else a new array);
    ``buffers``: two arrays of the logits' shape to hold the terms (else temporaries), so a
    training step allocates nothing. A fused block: the Numba twin makes one pass (float32
    (N, D) or (n, K, D) logits with x (n, 1, D)), CuPy runs this body's operations.
    """
    xp = xp_of(logits)
    terms, xy = (None, None) if buffers is None else buffers
    terms = softplus(logits, out=terms, scratch=xy)
    terms -= xp.multiply(x, logits, out=xy)
    return xp.sum(terms, axis=-1, dtype=dtype, out=out)


def gaussian_nll_rows(mean, x, log_sigma, dtype=None, out=None, buffers=None):
    """−log p(x|m) per row: Σ_d ½ log 2π + log σ_d + (x_d − m_d)²/(2σ_d²)  -> mean.shape[:-1].

    ``log_sigma``: a float (fixed σ), or an array (1,) (shared) or (D,) (per pixel), as
    returned by ``VAE.log_sigma()``. ``dtype``: accumulator and result dtype (default mean's).
    The constant part  D·½ log 2π + Σ_d log σ_d  is the same for every row. ``out`` and
    ``buffers`` as :func:`bernoulli_nll_rows` (the first buffer holds the squared residuals, a
    row of the second 1/σ² of a learned σ).
    """
    xp = xp_of(mean)
    D = mean.shape[-1]
    if isinstance(log_sigma, (int, float)):
        const = D * (0.5 * LOG_2PI + log_sigma)
        inv_var = math.exp(-2.0 * log_sigma)
    else:
        ls = xp.broadcast_to(log_sigma, (D,))
        const = D * 0.5 * LOG_2PI + xp.sum(ls, dtype=dtype)
        spare = None if buffers is None else buffers[1].reshape(-1, D)[0]     # free until the terms
        inv_var = xp.multiply(ls, -2.0, out=spare)
        xp.exp(inv_var, out=inv_var)
    r = xp.subtract(x, mean, out=None if buffers is None else buffers[0])
    r *= r
    r *= inv_var                                       # (x − m)²/σ²
    rows = xp.sum(r, axis=-1, dtype=dtype, out=out)
    rows *= 0.5
    rows += const
    return rows
