"""The importance-weighted bound (Burda, Grosse & Salakhutdinov 2016) and its weights.

For one image x, K ≥ 1 samples z_k = z(ε_k) of q(z|x) with fixed noise ε_k, and

    log w_k = log p(x|z_k) + log p(z_k) − log q(z_k|x),

the bound is the log of the mean weight, computed stably with m = max_k log w_k:

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


def iw_bound_and_weights(logw, weights):
    """Σ_n L_K(x_n) (0-d) of log-weights ``logw`` (K, N), and w̃ = softmax over k into ``weights``
    (K, N): the gradient of Σ_n L_K with respect to each log w_kn. See the module."""
    xp = xp_of(logw)
    K, N = logw.shape
    m = xp.max(logw, axis=0)                    # (N,)
    xp.subtract(logw, m, out=weights)
    xp.exp(weights, out=weights)                # e^{log w − m} ∈ (0, 1], one of them 1
    total = xp.sum(weights, axis=0)             # ∈ [1, K]
    weights /= total
    return xp.sum(xp.log(total) + m) - N * math.log(K)
