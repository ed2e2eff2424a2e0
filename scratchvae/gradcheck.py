"""Check hand-derived gradients against central finite differences in float64.

For each input array p and each checked coordinate i,
    ĝ_i = (f(p + h e_i) − f(p − h e_i)) / (2h),   h = 1e-6,
and the array's error is  max_i |g_i − ĝ_i| / max(max_i |g_i|, max_i |ĝ_i|, 1e-12)
(over the checked coordinates): a relative error that is not fooled by tiny entries.
Arrays up to ``max_coords`` entries are checked in full; larger ones on a seeded random
subset of ``max_coords`` coordinates.

Central differences have truncation error O(h²) and rounding error O(ε_mach/h), about
1e-10 relative in float64: an error near 1e-7 or below means backward matches forward.
(It does not prove the forward is right: that is what the statistical and closed-form
tests are for.)
"""

from __future__ import annotations

import numpy as np

from .backend import backend_of
from .errors import InputError

DEFAULT_H = 1e-6


def gradcheck(fun, inputs: dict, grads: dict, *, h=DEFAULT_H, max_coords=200, seed=0) -> dict:
    """Compare ``grads`` with central differences of the scalar ``fun()``.

    fun : callable with no arguments returning a scalar (a float or 0-d array) computed
        from the arrays in ``inputs``, which are perturbed **in place** one coordinate at a
        time (and restored).
    inputs : name -> float64 array (NumPy or CuPy).
    grads : name -> the analytic gradient of fun with respect to inputs[name].
    Returns name -> relative error (see the module docstring).
    """
    rng = np.random.default_rng(seed)
    errors = {}
    for name, p in inputs.items():
        if p.dtype != np.float64:
            raise InputError(f"gradcheck needs float64 inputs; {name} is {p.dtype}")
        if name not in grads:
            raise InputError(f"grads has no entry for input {name!r}")
        g = np.asarray(backend_of(grads[name]).to_host(grads[name])).reshape(-1)
        if g.size != p.size:
            raise InputError(f"grads[{name!r}] has {g.size} entries, the input {p.size}")
        flat = p.reshape(-1)
        idx = (np.arange(p.size) if p.size <= max_coords
               else np.sort(rng.choice(p.size, size=max_coords, replace=False)))
        num = np.empty(idx.size)
        for k, i in enumerate(idx):
            i = int(i)
            old = float(flat[i])
            flat[i] = old + h
            fp = float(fun())
            flat[i] = old - h
            fm = float(fun())
            flat[i] = old
            num[k] = (fp - fm) / (2 * h)
        ana = g[idx]
        scale = max(np.max(np.abs(ana), initial=0.0), np.max(np.abs(num), initial=0.0), 1e-12)
        errors[name] = float(np.max(np.abs(ana - num), initial=0.0) / scale)
    return errors


def gradcheck_model(model, x, eps=None, target=None, **kwargs) -> dict:
    """:func:`gradcheck` of ``model.loss_and_grads`` over every parameter (fixed ε).

    The model must be float64. ``eps`` defaults to one draw from the model's noise stream,
    of the shape the model's objective takes (``model.eps_shape``: (N, L), or (K, N, L) for
    the importance-weighted bound), held fixed for all evaluations. Returns parameter name
    -> relative error.
    """
    if model.dtype != np.float64:
        raise InputError(f"gradcheck_model needs a float64 model, got {model.dtype}")
    if eps is None:                      # None too for a point code, which takes no noise
        eps = model.noise(x.shape[0], model.rng["noise"])
    res = model.loss_and_grads(x, eps=eps, target=target)
    grads = {k: model.xp.array(v, copy=True) for k, v in res.grads.items()}

    def fun():
        return model.loss_and_grads(x, eps=eps, target=target, need_grads=False).objective

    return gradcheck(fun, model.params, grads, **kwargs)
