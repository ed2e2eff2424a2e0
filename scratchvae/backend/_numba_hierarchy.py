"""Numba twins of a hierarchical model's conditional prior (``ops/hierarchy.py``:
``cond_prior_forward``, ``cond_prior_backward``); their launchers are in
:class:`._numba_kernels.Twins`, which says how twins agree with their bodies.
"""

from __future__ import annotations

from numba import njit

from ._numba_math import JIT, exp32, sum64


@njit(**JIT)
def _clip(v, lim):
    """numpy.clip(v, −lim, lim): NaN stays NaN (no comparison holds)."""
    return -lim if v < -lim else (lim if v > lim else v)


@njit(**JIT)
def cond_prior_forward(head, b, h, out, work, lim):
    """Twin of ``ops.hierarchy.cond_prior_forward`` (derivation there). head += b; lv_p clamped
    to ±lim in place; work = ((h − μ_p)² u) + lv_p with u = e^{−lv_p} (the body's order);
    out[r] = ½ Σ_j work[r, j], summed in float64 and rounded once."""
    L = h.shape[1]
    half = head.dtype.type(0.5)
    for r in range(h.shape[0]):
        hd, xr, wr = head[r], h[r], work[r]
        for j in range(2 * L if b.size else 0):
            hd[j] = hd[j] + b[j]
        for j in range(L):
            lv = _clip(hd[L + j], lim)
            hd[L + j] = lv
            d = xr[j] - hd[j]
            wr[j] = ((d * d) * exp32(-lv)) + lv
        out[r] = head.dtype.type(sum64(wr)) * half


@njit(**JIT)
def cond_prior_backward(head, h, w_rows, w0, dhead, dh, lim):
    """Twin of ``ops.hierarchy.cond_prior_backward`` (derivation there), in the body's order:
    w = w_rows[r] (else w0); du = d u; dlv_p = ((1 − d du) ½) w, × 0 where |lv_p| ≥ lim;
    du ← du w; dh += du; dμ_p = −du."""
    L = h.shape[1]
    one, half, zero = head.dtype.type(1), head.dtype.type(0.5), head.dtype.type(0)
    for r in range(h.shape[0]):
        hd, xr, gr, dr = head[r], h[r], dhead[r], dh[r]
        w = w_rows[r] if w_rows.size else w0
        for j in range(L):
            lv = hd[L + j]
            d = xr[j] - hd[j]
            du = d * exp32(-lv)
            dlv = ((one - d * du) * half) * w
            du = du * w
            dr[j] = dr[j] + du
            gr[j] = -du
            gr[L + j] = dlv * (one if abs(lv) < lim else zero)
