"""The importance-weighted bound (Burda, Grosse & Salakhutdinov 2016) and its weights.

For one image x, K ≥ 1 samples z_k = z(ε_k) of q(z|x) with fixed noise ε_k, and

    log w_k = log p(x|z_k) + log p(z_k) − log q(z_k|x),

the bound is the log of the mean weight, computed stably (:func:`logsumexp`) with m = max_k log w_k:

    L_K(x) = log (1/K) Σ_k w_k = m + log Σ_k e^{log w_k − m} − log K.

By Jensen E[L_K] ≤ log E[(1/K) Σ_k w_k] = log p(x); L_1 is the single-sample ELBO, and
E[L_K] rises with K. Its gradient: ∂L_K/∂ log w_k = e^{log w_k} / Σ_j e^{log w_j} = w̃_k, the
normalised weights (Σ_k w̃_k = 1), so through the samples

    ∇L_K = Σ_k w̃_k ∇ log w_k,

each sample's single-sample ELBO gradient weighted by w̃_k (w̃ is a function of θ too, but
Σ_k ∂L_K/∂ log w_k · ∇ log w_k is the whole chain rule: the weights need no gradient of their own).
"""

from __future__ import annotations

import math

from ..backend import xp_of


def logsumexp(a, axis=0, weights=None):
    """LSE of ``a`` along ``axis`` = m + log Σ e^{a − m}, m the max along it (so one term is
    e^0 = 1 and nothing overflows), and with ``weights`` (an array of a's shape) the softmax
    e^{a − LSE} = e^{a − m} / Σ e^{a − m} written there: the LSE's gradient ∂LSE/∂a.
    The one log-sum-exp of the bound below, of evaluation's estimates and of the linear probe."""
    xp = xp_of(a)
    m = xp.max(a, axis=axis, keepdims=True)
    e = xp.subtract(a, m, out=weights)
    xp.exp(e, out=e)                            # e^{a − m} ∈ (0, 1], one of them 1
    total = xp.sum(e, axis=axis, keepdims=True)
    if weights is not None:
        weights /= total
    lse = xp.log(total)
    lse += m
    return xp.squeeze(lse, axis=axis)


def iw_bound_and_weights(logw, weights):
    """Σ_n L_K(x_n) (0-d) of log-weights ``logw`` (K, N), and w̃ = softmax over k into ``weights``
    (K, N): the gradient of Σ_n L_K with respect to each log w_kn. See the module."""
    return xp_of(logw).sum(logsumexp(logw, axis=0, weights=weights)) - logw.shape[1] * math.log(logw.shape[0])


def log_weight_rows(eps, z, log_det, nll, dtype=None, out=None, scratch=None):
    """log w = log p(x|z) + log p(z) − log q(z|x) per row, z = z(ε) a reparameterized sample:

        log p(z) − log q(z|x) = −½‖z‖² + ½‖ε‖² + log |det ∂z/∂ε|

    (log q by the change of variables z -> ε, log q(z|x) = log N(ε; 0, I) − log |det ∂z/∂ε|;
    the ½ L log 2π of p(z) and of N(ε; 0, I) cancel, and no ε is recomputed from z). ``eps``,
    ``z``: (…, L); ``log_det``: the posterior's log |det ∂z/∂ε|, (…) or broadcastable to it;
    ``nll``: −log p(x|z), (…). ``dtype``: the sums' accumulator (default z's; evaluation passes
    float64). ``out`` (…) and ``scratch`` (…, L): buffers, so a training step allocates nothing.
    The one formula of the importance weights: training's bound and evaluation's log p(x)."""
    xp = xp_of(z)
    w = xp.sum(xp.multiply(eps, eps, out=scratch), axis=-1, dtype=dtype, out=out)
    w -= xp.sum(xp.multiply(z, z, out=scratch), axis=-1, dtype=dtype)
    w *= 0.5
    w += log_det
    w -= nll
    return w
