"""The CPU side of the fused-block seam: Numba twins of the NumPy bodies (the ``fast`` extra).

Each twin below takes exactly its block's arguments (as the CUDA launchers do) and computes
what the block's body computes in one pass over memory instead of one pass per NumPy call.
The derivations are in the blocks' docstrings, which each twin names; what a twin adds is
its arithmetic, kept in the body's order so that it agrees with the body:

* **bit for bit** where the body uses only correctly rounded operations: bias + ReLU /
  leaky ReLU, their backward, the KL backward, Adam, and the bias gradient (``sum_rows``:
  NumPy adds the rows of a C-contiguous array in order, column by column, and so does the
  twin). Constants are rounded to the array's dtype first, as NumPy rounds its Python-scalar
  operands; no ``fastmath``, so LLVM neither reorders nor contracts (no FMA) them.
* **within a few ulp** where the body calls NumPy's ``exp``, ``expm1`` or ``log1p`` (the
  Bernoulli block, the sample and KL, softplus), in float32: :mod:`._numba_math`'s vectorisable
  exp is within 1.02 ulp and its float32 log1p within 0.91 ulp, its expm1 is evaluated in
  float64 and correctly rounded; NumPy's own float32 exp, expm1 and log1p are up to 2.6 ulp
  off. The bounds are asserted in ``tests/test_numba_twins.py``. In float64 these blocks run
  their bodies (the C library's scalar exp and log1p made a float64 twin slower than NumPy's
  loops), so a float64 step gives the bodies' bits.
* **sums** (the Bernoulli loss, the KL) add the float32 terms in float64, row by row, then
  the rows in order, and round once: within NumPy's own pairwise float32 error of the body's
  sum.
* **another order of the same terms**: the first layer on data (``data_matmul``,
  ``data_weight_grad``; :mod:`._numba_dense`) sums only x's nonzero terms where that is faster,
  else runs the body; within float32 rounding of the dense product.

A twin runs the body instead (through ``fallback``) for anything outside the fast path:
an activation other than ReLU / leaky ReLU, arrays that are not C-contiguous or not float32 /
float64 (float32 only for the Bernoulli block, the sample and KL and softplus), a bias of
another shape, a constant that is a NumPy scalar rather than a Python number (NumPy would
compute in its precision). What a body leaves in its scratch buffers is
not promised by a twin: the Bernoulli and KL twins leave the terms in ``scratch`` as the
bodies do, but the Bernoulli twin leaves the logits as they were (the body, with
``overwrite_logits``, leaves max(y, 0) − x·y there), and the activation masks and the spent
``dz`` are not written.

Threads: none of their own. A twin runs on the calling thread; OpenBLAS keeps its threads
for the matrix products. Measured on a 2-core machine (benchmarks/README.md): Numba's default
OpenMP pool, whose threads spin after each parallel loop, took the cores from OpenBLAS's next
GEMM (whole steps 2–4× slower); a pool that sleeps between loops (``workqueue``) was no faster
than one thread within a step, since OpenBLAS's threads in turn spin for a while after each
GEMM, which every fused block follows.

Numba caches every compilation on disk (``cache=True``) and invalidates a cache by its
function's own file: after editing :mod:`._numba_math` delete ``__pycache__`` (or set
``NUMBA_CACHE_DIR``).
"""

from __future__ import annotations

import numba
import numpy as np
from numba import njit

from . import _numba_dense
from ._numba_hierarchy import cond_prior_backward as _cond_prior_backward
from ._numba_hierarchy import cond_prior_forward as _cond_prior_forward
from ._numba_math import INLINE, JIT, exp32, expm1_d, log1p01
from ._numba_math import sum64 as _sum64

ACTIVATIONS = {"relu": 0, "leaky_relu": 1}
"""The activations with a twin (piecewise linear: exact); the others run the NumPy body."""
_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


@njit(**JIT)
def _np_max(a, b):
    """numpy.maximum(a, b): a if a > b, b if not (so b on ties: max(−0, 0) = +0), NaN propagated."""
    return a if (a > b or a != a) else b


# -- activations (ops/activations.py: bias_act_forward, activation_backward) ---------------------
@njit(**JIT)
def _bias_act(pre, b, out, act, s, inplace):
    """Twin of ``ops.activations.bias_act_forward`` (derivations: ops/activations.py).
    out = f(pre + b): relu max(z, 0), leaky_relu max(z, s·z), as numpy.maximum. ``inplace``:
    out is pre, and the loop names one array (two that overlap would keep LLVM's vectorised
    loop from running: its run-time overlap check fails)."""
    zero = pre.dtype.type(0)
    for r in range(pre.shape[0]):
        pr, orow = pre[r], out[r]                     # row views: LLVM vectorises the inner loops
        for j in range(pre.shape[1] if not inplace else 0):
            z = pr[j] + b[j]
            orow[j] = _np_max(z, zero) if act == 0 else _np_max(z, z * s)
        for j in range(pre.shape[1] if inplace else 0):
            z = pr[j] + b[j]
            pr[j] = _np_max(z, zero) if act == 0 else _np_max(z, z * s)


@njit(**JIT)
def _act_backward(da, a, out, act, c1, c0, inplace):
    """Twin of ``ops.activations.activation_backward`` (derivations: ops/activations.py).
    dz = da ⊙ f'(z) from a = f(z): f' = 1[a > 0] (relu), (1[a > 0]·(1 − s)) + s (leaky);
    ``inplace``: out is a (the model's call), one array in the loop as in _bias_act."""
    n = a.size
    da, a, out = da.reshape(n), a.reshape(n), out.reshape(n)
    one, zero = a.dtype.type(1), a.dtype.type(0)
    for i in range(n if not inplace else 0):
        m = one if a[i] > zero else zero
        out[i] = (m if act == 0 else m * c1 + c0) * da[i]
    for i in range(n if inplace else 0):
        m = one if a[i] > zero else zero
        a[i] = (m if act == 0 else m * c1 + c0) * da[i]


# -- reparameterize + KL (ops/gaussian.py: reparam_kl_forward, reparam_kl_backward) --------------
@njit(**JIT)
def _logvar_range(ml, b, L):
    """(any NaN, max, min) of ml[:, L:] (+ b[L:] when b is not empty): what the body's
    ``logvar.max()`` and ``logvar.min()`` tell (NaN when any is NaN, and then no comparison holds)."""
    nan, hi, lo = False, -np.inf, np.inf
    for r in range(ml.shape[0]):
        for j in range(L):
            v = ml[r, L + j] + b[L + j] if b.size else ml[r, L + j]
            nan = nan or v != v
            hi, lo = max(hi, v), min(lo, v)
    return nan, hi, lo


@njit(**JIT)
def _reparam_kl_forward(ml, b, eps, z, std, terms, lim, clamp):
    """Twin of ``ops.gaussian.reparam_kl_forward`` (derivation there and in
    ``kl_standard_normal_terms``). ml += b; logvar clamped to ±lim where ``clamp``;
    σ = e^{½ lv}; z = σ ε + μ; terms = μ² + expm1(lv) − lv (the body's order); returns
    Σ terms in float64, row by row."""
    L = z.shape[1]
    half = ml.dtype.type(0.5)
    total = 0.0
    for r in range(z.shape[0]):
        mr, er, zr, sr, tr = ml[r], eps[r], z[r], std[r], terms[r]
        for j in range(L):
            mu, lv = mr[j], mr[L + j]
            if b.size:
                mu, lv = mu + b[j], lv + b[L + j]
            if clamp:
                lv = min(max(lv, -lim), lim)
            mr[j], mr[L + j] = mu, lv
            s = np.float32(expm1_d(lv * half) + 1.0)      # e^{½ lv}, evaluated in float64
            sr[j] = s
            tr[j] = (mu * mu + np.float32(expm1_d(lv))) - lv
            zr[j] = s * er[j] + mu
        total += _sum64(tr)
    return total


@njit(**JIT)
def _reparam_kl_backward(dz, eps, std, ml, beta, dml, lim, mask):
    """Twin of ``ops.gaussian.reparam_kl_backward`` (derivation there).
    dμ = β μ (+ dz); dlv = ((β σ (+ dz ε)) σ − β) ½, × 0 where |lv| ≥ lim when ``mask``."""
    L = std.shape[1]
    half, zero = ml.dtype.type(0.5), ml.dtype.type(0)
    for r in range(std.shape[0]):
        mr, er, sr, dr = ml[r], eps[r], std[r], dml[r]
        for j in range(L):
            mu, lv, s = mr[j], mr[L + j], sr[j]
            dmu, dlv = mu * beta, s * beta
            if dz.size:
                d = dz[r, j]
                dmu, dlv = dmu + d, dlv + d * er[j]
            dlv = ((dlv * s) - beta) * half
            if mask and not abs(lv) < lim:
                dlv = dlv * zero
            dr[j], dr[L + j] = dmu, dlv



# -- the Bernoulli block (ops/likelihoods.py: bernoulli_nll_forward_backward) -----------------------
@njit(**JIT)
def _bernoulli(y, b, x, dy, terms, cap):
    """Twin of ``ops.likelihoods.bernoulli_nll_forward_backward`` (the loss form, its accuracy in
    both tails and the gradient's derivation there). y = logits (+ b), u = e^{−min(|y|, cap)};
    terms = [max(y, 0) − x y] + log1p(u);
    dy = σ(y) − x with σ = 1/(1 + u) for y ≥ 0 and u/(1 + u) = 1/(1 + 1/u) for y < 0 (the
    body's 1/(1 + t), t = e^{−y} clipped alike, with one exponential and one division).
    Returns Σ terms in float64, row by row."""
    one, zero = y.dtype.type(1), y.dtype.type(0)
    total = 0.0
    for r in range(y.shape[0]):
        yr, xr, dr, tr = y[r], x[r], dy[r], terms[r]
        for j in range(y.shape[1]):
            yi, xi = (yr[j] + b[j], xr[j]) if b.size else (yr[j], xr[j])
            ay = abs(yi)
            u = exp32(-(cap if ay > cap else ay))
            a = (yi if (yi >= zero or yi != yi) else zero) - yi * xi
            tr[j] = log1p01(u) + a
            q = one / (one + u)
            dr[j] = (q if yi >= zero else u * q) - xi
        total += _sum64(tr)
    return total


# -- softplus (ops/activations.py: softplus) ---------------------------------------------------------
@njit(**INLINE)
def _softplus1(v):
    """softplus(v) = max(v, 0) + log1p(e^{−|v|}) of one float32, the body's formula with this
    module's exp and log1p (e^{−|v|} ∈ [0, 1], log1p01's domain)."""
    return _np_max(v, np.float32(0)) + log1p01(exp32(-abs(v)))


@njit(**JIT)
def _softplus(z, out, inplace):
    """Twin of ``ops.activations.softplus`` (float32, flat). ``inplace``: out is z, and the loop
    names one array (as ``_bias_act``)."""
    if inplace:
        for i in range(z.size):
            z[i] = _softplus1(z[i])
    else:
        for i in range(z.size):
            out[i] = _softplus1(z[i])


@njit(**JIT)
def _bernoulli_rows(y, x, out, row):
    """Twin of ``ops.likelihoods.bernoulli_nll_rows`` (float32): out[i, k] = Σ_d softplus(y) − x·y
    for y (n, K, D) and x (n, 1 or K, D), each term as the body forms it (softplus as the twin
    above, then − x·y in float32), summed in float64. ``row``: a (D,) buffer for the terms."""
    for i in range(y.shape[0]):
        for k in range(y.shape[1]):
            yr, xr = y[i, k], x[i, k if x.shape[1] > 1 else 0]
            for d in range(y.shape[2]):
                row[d] = _softplus1(yr[d]) - xr[d] * yr[d]
            out[i, k] = _sum64(row)


# -- Adam (optim.py: adam_update, adam_update_from) -----------------------------------------------
@njit(**JIT)
def _adam(p, g, m, v, step, sbc2, b1, omb1, b2, omb2, eps):
    """Twin of ``optim.adam_update`` (PyTorch's rule: ``optim.Adam``).
    m = m b1 + g (1−b1);  v = v b2 + (g g)(1−b2);  p −= (m / (√v / sbc2 + eps)) step."""
    for i in range(p.size):
        gi = g[i]
        mi = m[i] * b1 + gi * omb1
        vi = v[i] * b2 + (gi * gi) * omb2
        m[i], v[i] = mi, vi
        p[i] = p[i] - (mi / (np.sqrt(vi) / sbc2 + eps)) * step


# -- the bias gradient (ops/dense.py: sum_rows) -----------------------------------------------------
@njit(**JIT)
def _sum_rows(a, out):
    """Twin of ``ops.dense.sum_rows``: out = Σ_n a[n, :], each column summed from 0 over the rows
    in order in a's dtype, as NumPy's axis-0 sum of a C-contiguous array (the same bits)."""
    zero = a.dtype.type(0)
    for j in range(out.size):
        out[j] = zero
    for r in range(a.shape[0]):
        ar = a[r]
        for j in range(out.size):
            out[j] = out[j] + ar[j]


# -- the launchers: the blocks' signatures; the fast path or the body ------------------------------
def _fast(*arrays):
    """True if every array is a C-contiguous float32 / float64 NumPy array of one dtype."""
    a0 = arrays[0]
    return all(isinstance(a, np.ndarray) and a.flags.c_contiguous and a.dtype == a0.dtype
               for a in arrays) and a0.dtype in _FLOATS


def _vector(v, size, dtype):
    """A folded-in bias as the kernels take it: ``v`` if it is a contiguous (size,) ``dtype``
    array, an empty one for None, else None (not the fast path)."""
    if v is None:
        return np.empty(0, dtype)
    ok = isinstance(v, np.ndarray) and v.shape == (size,) and v.dtype == dtype and v.flags.c_contiguous
    return v if ok else None


class Twins:
    """The Numba twins of one process. ``get(name)`` returns the launcher of the block declared
    under ``name`` (or of a draw), which takes exactly the block's arguments; ``fallback(name)``
    is that block's NumPy body, run for what the twin does not cover."""

    def __init__(self, fallback, told=lambda: None):
        from . import _numba_philox

        self.fallback = fallback
        self.version = numba.__version__
        self._philox = _numba_philox
        self._table = {name: getattr(self, name) for name in (
            "bias_act", "act_backward", "reparam_kl_forward", "reparam_kl_backward", "bernoulli_nll",
            "adam", "adam_from", "sum_rows", "softplus", "bernoulli_nll_rows", "philox_uniform",
            "philox_normal", "cond_prior_forward", "cond_prior_backward", "data_matmul", "data_weight_grad")}
        self._told = told

    def get(self, name):
        return self._table.get(name)

    def names(self):
        return tuple(self._table)

    # -- activations -------------------------------------------------------------------------------
    def bias_act(self, pre, b, name, out, scratch, slope):
        act = ACTIVATIONS.get(name)
        ok = act is not None and _fast(pre) and pre.ndim == 2 and type(slope) in (int, float) and (
            out is None or (_fast(pre, out) and out.shape == pre.shape))
        if not ok or b is None or _vector(b, pre.shape[1], pre.dtype) is None:
            return self.fallback("bias_act")(pre, b, name, out, scratch, slope)
        out = np.empty_like(pre) if out is None else out
        _bias_act(pre, b, out, act, pre.dtype.type(slope), out is pre)
        return out

    def act_backward(self, name, da, a, out, mask, slope):
        act = ACTIVATIONS.get(name)
        ok = act is not None and out is not da and _fast(da, a) and da.shape == a.shape and (
            type(slope) in (int, float)) and (out is None or (_fast(a, out) and out.shape == a.shape))
        if not ok:
            return self.fallback("act_backward")(name, da, a, out, mask, slope)
        out = np.empty_like(a) if out is None else out
        t = a.dtype.type
        _act_backward(da, a, out, act, t(1 - slope), t(slope), out is a)
        return out

    # -- reparameterize + KL ------------------------------------------------------------------------
    def reparam_kl_forward(self, mu_logvar, eps, z, std, scratch, bias, limit):
        ml = mu_logvar
        ok = _fast(ml, eps, z, std, scratch) and ml.dtype == np.float32 and z.ndim == 2 and z.size and (
            type(limit) in (int, float) and ml.shape == (z.shape[0], 2 * z.shape[1])) and (
            eps.shape == std.shape == scratch.shape == z.shape)
        b = _vector(bias, ml.shape[1], ml.dtype) if ok else None
        if b is None:
            return self.fallback("reparam_kl_forward")(mu_logvar, eps, z, std, scratch, bias, limit)
        t, L = ml.dtype.type, z.shape[1]
        nan, hi, lo = _logvar_range(ml, b, L)
        clamp = not nan and (hi > t(limit) or lo < -t(limit))
        total = _reparam_kl_forward(ml, b, eps, z, std, scratch, t(limit), clamp)
        return 0.5 * t(total)

    def reparam_kl_backward(self, dz, eps, std, mu_logvar, beta, dmu_logvar, limit):
        ml, dml = mu_logvar, dmu_logvar
        ok = _fast(ml, eps, std, dml) and std.ndim == 2 and std.size and type(limit) in (int, float) and (
            ml.shape == dml.shape == (std.shape[0], 2 * std.shape[1]) and eps.shape == std.shape) and (
            dz is None or (_fast(ml, dz) and dz.shape == std.shape))
        on_device = isinstance(beta, np.ndarray) and beta.dtype == np.float64 and beta.size == 1
        if not ok or not (on_device or type(beta) in (int, float)):
            return self.fallback("reparam_kl_backward")(dz, eps, std, mu_logvar, beta, dmu_logvar, limit)
        t, L = ml.dtype.type, std.shape[1]
        b_t = t(beta.reshape(-1)[0]) if on_device else t(beta)     # as the body reads it: in the dtype
        nan, hi, lo = _logvar_range(ml, np.empty(0, ml.dtype), L)
        mask = not nan and (hi >= t(limit) or lo <= -t(limit))
        dz = np.empty((0, 0), ml.dtype) if dz is None else dz
        _reparam_kl_backward(dz, eps, std, ml, b_t, dml, t(limit), mask)
        return dml

    # -- a hierarchical model's conditional prior ----------------------------------------------------
    def cond_prior_forward(self, head, h, out, scratch, work, bias, limit):
        ok = _fast(head, h, out, work) and head.dtype == np.float32 and h.ndim == 2 and h.size and (
            type(limit) in (int, float) and head.shape == (h.shape[0], 2 * h.shape[1])) and (
            out.shape == (h.shape[0],) and work.shape == h.shape)
        b = _vector(bias, head.shape[1], head.dtype) if ok else None
        if b is None:
            return self.fallback("cond_prior_forward")(head, h, out, scratch, work, bias, limit)
        _cond_prior_forward(head, b, h, out, work, head.dtype.type(limit))
        return out

    def cond_prior_backward(self, head, h, weights, dhead, dh, scratch, limit):
        ok = _fast(head, h, dhead, dh) and head.dtype == np.float32 and h.ndim == 2 and h.size and (
            type(limit) in (int, float) and head.shape == dhead.shape == (h.shape[0], 2 * h.shape[1])) and (
            dh.shape == h.shape)
        t = head.dtype.type
        if isinstance(weights, np.ndarray) and weights.size == 1:
            rows, w0 = np.empty(0, head.dtype), t(weights.reshape(-1)[0])   # as the body reads it
        elif type(weights) in (int, float):
            rows, w0 = np.empty(0, head.dtype), t(weights)
        elif _fast(head, weights) and weights.shape == (h.shape[0],):
            rows, w0 = weights, t(0)
        else:
            ok = False
        if not ok:
            return self.fallback("cond_prior_backward")(head, h, weights, dhead, dh, scratch, limit)
        _cond_prior_backward(head, h, rows, w0, dhead, dh, t(limit))
        return dhead

    # -- the Bernoulli block -------------------------------------------------------------------------
    def bernoulli_nll(self, logits, x, dlogits, scratch, overwrite_logits, bias):
        ok = _fast(logits, x, dlogits, scratch) and logits.dtype == np.float32 and logits.ndim == 2 and (
            x.shape == dlogits.shape == scratch.shape == logits.shape)
        b = _vector(bias, logits.shape[1], logits.dtype) if ok else None
        if b is None:
            return self.fallback("bernoulli_nll")(logits, x, dlogits, scratch, overwrite_logits, bias)
        return np.float32(_bernoulli(logits, b, x, dlogits, scratch, np.float32(88.0)))   # the body's cap

    # -- Adam -------------------------------------------------------------------------------------------
    def adam(self, p, g, m, v, step_size, sqrt_bc2, b1, b2, eps, scratch):
        ok = _fast(p, g, m, v) and p.shape == g.shape == m.shape == v.shape and all(
            type(c) in (int, float) for c in (step_size, sqrt_bc2, b1, b2, eps))
        if not ok:
            return self.fallback("adam")(p, g, m, v, step_size, sqrt_bc2, b1, b2, eps, scratch)
        t = p.dtype.type
        _adam(p.reshape(-1), g.reshape(-1), m.reshape(-1), v.reshape(-1), t(step_size), t(sqrt_bc2), t(b1),
              t(1 - b1), t(b2), t(1 - b2), t(eps))

    def adam_from(self, p, g, m, v, coef, b1, b2, eps, scratch):
        return self.adam(p, g, m, v, float(coef[0]), float(coef[1]), b1, b2, eps, scratch)

    # -- a first layer that reads data (the kernels and the choice: _numba_dense) -----------------------
    def data_matmul(self, x, W, out, nonzeros):
        ok = _fast(x, W, out) and _numba_dense.blas_threads(self._told()) == 1
        if not (ok and _numba_dense.listed_product(x, W, out, nonzeros)):
            return self.fallback("data_matmul")(x, W, out, nonzeros)
        return out

    def data_weight_grad(self, x, dy, out, nonzeros):
        if not (_fast(x, dy, out) and _numba_dense.listed_weight_grad(x, dy, out, nonzeros)):
            return self.fallback("data_weight_grad")(x, dy, out, nonzeros)
        return out

    # -- the bias gradient ------------------------------------------------------------------------------
    def sum_rows(self, a, out):
        # one column: NumPy sums it as a contiguous vector, pairwise; the body keeps those bits
        ok = _fast(a) and a.ndim == 2 and a.shape[1] > 1 and (
            out is None or (_fast(a, out) and out.shape == a.shape[1:]))
        if not ok:
            return self.fallback("sum_rows")(a, out)
        out = np.empty(a.shape[1], a.dtype) if out is None else out
        _sum_rows(a, out)
        return out

    def softplus(self, z, out, scratch):
        ok = _fast(z) and z.dtype == np.float32 and (out is None or (_fast(z, out) and out.shape == z.shape))
        if not ok:
            return self.fallback("softplus")(z, out, scratch)
        out = np.empty_like(z) if out is None else out
        _softplus(z.reshape(-1), out.reshape(-1), out is z)
        return out

    def bernoulli_nll_rows(self, logits, x, dtype, out, buffers):
        """(N, D) or (n, K, D) float32 logits, x of the same shape or (n, 1, D); each row summed
        in float64 and stored in ``dtype`` (``out``: a C-contiguous array of the rows' shape).
        ``buffers`` are not needed: the terms of one row live in a (D,) array."""
        y = logits[None] if logits.ndim == 2 else logits
        xx = x[None] if isinstance(x, np.ndarray) and x.ndim == 2 else x
        kind = np.dtype(y.dtype if dtype is None else dtype)
        ok = (y.ndim == 3 and _fast(y, xx) and y.dtype == np.float32 and xx.shape[0] == y.shape[0]
              and xx.shape[1] in (1, y.shape[1]) and xx.shape[2] == y.shape[2] and y.shape[2] > 0
              and kind in _FLOATS and (out is None or (isinstance(out, np.ndarray) and out.dtype == kind
                                                       and out.shape == logits.shape[:-1] and out.flags.c_contiguous)))
        if not ok:
            return self.fallback("bernoulli_nll_rows")(logits, x, dtype, out, buffers)
        out = np.empty(logits.shape[:-1], kind) if out is None else out
        _bernoulli_rows(y, xx, out.reshape(y.shape[:2]), np.empty(y.shape[2], np.float32))   # one row's terms
        return out

    # -- the draws (random.Stream on NumPy) -------------------------------------------------------------
    def philox_uniform(self, k0, k1, d, out, first):
        """Fill ``out`` (flat, C-contiguous float32 / float64) with uniforms first, … of draw ``d``."""
        u = np.uint64
        if out.dtype == np.float32:
            self._philox.uniform32(u(k0), u(k1), u(d & 0xFFFFFFFF), u(d >> 32), out, np.int64(first))
        else:
            self._philox.pairs(u(k0), u(k1), u(d & 0xFFFFFFFF), u(d >> 32), out, False, np.int64(first))

    def philox_normal(self, k0, k1, d, out, first):
        """Fill ``out`` (flat, C-contiguous float32 / float64) with normals first, … of draw ``d``."""
        u = np.uint64
        self._philox.pairs(u(k0), u(k1), u(d & 0xFFFFFFFF), u(d >> 32), out, True, np.int64(first))
