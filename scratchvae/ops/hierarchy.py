"""The learned conditional prior of a hierarchical VAE: p(h | h_up) = N(μ_p(h_up), diag e^{lv_p(h_up)}).

A model with stochastic layers h_1 … h_S (h_1 next to the data) has the prior p(h_S) = N(0, I)
on its top layer and, below it, p(h_l | h_{l+1}) = N(μ_p, diag σ_p²) whose [μ_p | lv_p] (lv_p =
log σ_p²) a dense stack computes from h_{l+1} (its head, (N, 2L)). Shapes: h, μ_p, lv_p (N, L),
N rows (samples), L the layer's latent size. With the sample h = μ_q + σ_q ε of q(h | ·),

    −log p(h | h_up) = ½ Σ_j (r_j² + lv_p,j) + ½ L log 2π,     r = (h − μ_p) e^{−½ lv_p}
    log q(h | ·)     = −½ ‖ε‖² − ½ Σ_j lv_q,j − ½ L log 2π       (the change of variables h -> ε)

so the layer's term of −log w, a_l = log q(h_l | ·) − log p(h_l | h_{l+1}), is

    a = ½ Σ_j (r_j² + lv_p,j) − ½ ‖ε‖² − ½ Σ_j lv_q,j             (the ½ L log 2π cancel)

The blocks here hold its prior half, the one with learned parameters: the forward writes
½ Σ_j (r_j² + lv_p,j) per row, the backward its gradients, each row weighted (a β for the ELBO,
the normalised importance weight w̃_r for the bound). Derivation, per entry, with d = h − μ_p and
u = e^{−lv_p} (so r² = d² u):

    ∂(½ r²)/∂h = d u,   ∂(½ r²)/∂μ_p = −d u,   ∂(½ (r² + lv_p))/∂lv_p = ½ (1 − d² u)

(∂u/∂lv_p = −u). The posterior's half, −½ ‖ε‖² − ½ Σ lv_q, is its own log-determinant term
(:meth:`scratchvae.posteriors._Gaussian.sampled_backward`); ε is fixed. lv_p is clamped to ±30
as a posterior's logvar is (:data:`~.gaussian.LOGVAR_LIMIT`), with zero gradient where clamped.
"""

from __future__ import annotations

from ..backend import fused, xp_of
from .gaussian import LOGVAR_LIMIT


def _row_weights(weights, dtype):
    """Weights as the backward multiplies them: a number as it is, an array of one value (a
    schedule's β) as a number of ``dtype`` (as the kernels read it), else a column (N, 1)."""
    if isinstance(weights, (int, float)):
        return weights
    return dtype.type(weights.reshape(-1)[0]) if weights.size == 1 else weights.reshape(-1, 1)


@fused("cond_prior_forward")
def cond_prior_forward(head, h, out, scratch, work, bias=None, limit=LOGVAR_LIMIT):
    """out[r] = ½ Σ_j (r_j² + lv_p,j) of the prior head ``head`` (N, 2L) = [μ_p | lv_p] at the
    sample ``h`` (N, L): −log p(h | h_up) per row, its ½ L log 2π left out (see the module).

    ``bias`` (2L,): the prior stack's last bias, added to ``head`` in place first; lv_p is clamped
    in place to ±``limit``. ``scratch``, ``work``: (N, L) buffers; ``out``: (N,). Returns out.
    """
    xp = xp_of(head)
    if bias is not None:
        head += bias
    L = h.shape[1]
    mu, lv = head[:, :L], head[:, L:]
    xp.clip(lv, -limit, limit, out=lv)
    xp.negative(lv, out=work)
    xp.exp(work, out=work)                      # u = e^{−lv_p}
    d = xp.subtract(h, mu, out=scratch)
    d *= d
    d *= work                                   # r² = d² u
    d += lv
    xp.sum(d, axis=1, out=out)
    out *= 0.5
    return out


@fused("cond_prior_backward", on="head")
def cond_prior_backward(head, h, weights, dhead, dh, scratch, limit=LOGVAR_LIMIT):
    """Gradients of Σ_r w_r · ½ Σ_j (r_j² + lv_p,j) (the forward's rows, weighted): written into
    ``dhead`` (N, 2L) = [∂/∂μ_p | ∂/∂lv_p] and **added** into ``dh`` (N, L) (the sample h feeds
    the layer above and the decoder too). ``weights``: a number (β), or an array of one value
    (a schedule's β) or of one per row (w̃, (N,)). ``head`` as the forward left it (bias added,
    clamped). Per entry, d = h − μ_p, u = e^{−lv_p} (module docstring):

        dh += w d u,     dμ_p = −w d u,     dlv_p = w ½ (1 − d² u)   (0 where lv_p is clamped)
    """
    xp = xp_of(head)
    L = h.shape[1]
    mu, lv = head[:, :L], head[:, L:]
    dmu, dlv = dhead[:, :L], dhead[:, L:]
    w = _row_weights(weights, head.dtype)
    xp.negative(lv, out=dlv)
    xp.exp(dlv, out=dlv)                        # u
    d = xp.subtract(h, mu, out=scratch)
    xp.multiply(d, dlv, out=dmu)                # d u
    xp.multiply(d, dmu, out=dlv)                # d² u
    xp.subtract(1.0, dlv, out=dlv)
    dlv *= 0.5                                  # ½ (1 − d² u)
    dmu *= w
    dlv *= w
    dh += dmu                                   # + w d u
    xp.negative(dmu, out=dmu)                   # − w d u
    dlv *= xp.less(xp.abs(lv, out=scratch), limit, out=scratch)   # 1 inside the clamp, else 0
    return dhead
