"""Check hand-derived gradients against central finite differences in float64.

For each input array p and each checked coordinate i,
    ĝ_i = (f(p + h e_i) − f(p − h e_i)) / (2h),   h = 1e-6,
and the array's error is  max_i |g_i − ĝ_i| / max(max_i |g_i|, max_i |ĝ_i|, 1e-12)
(over the checked coordinates): a relative error that is not fooled by tiny entries.
Arrays up to ``max_coords`` entries are checked in full; larger ones on a seeded random
subset of ``max_coords`` coordinates.

What a correct gradient still shows. Central differences have truncation error O(h²·f''')
and rounding error: f itself is computed to about ε_mach·|f| (ε_mach = 2.2e-16), so ĝ_i is
off by about ε_mach·|f|/h. Relative to the array's scale that is the **floor**,
ε_mach·|f| / (h · scale), which each result reports (:class:`GradcheckResult`): a loss that
sums many images is large (the README's 128 MNIST-sized images: |f| ≈ 7·10⁴ nats) and its
floors, 2·10⁻⁷ to 3·10⁻⁶ there, are what its errors show (0.7 to 1.0 floors), not 1e-10. An
error within :data:`FLOOR_FACTOR` floors, or below 1e-7, means backward matches forward. (It does not prove the
forward is right: that is what the statistical and closed-form tests are for.)

Kinks. ReLU and leaky ReLU have a kink at 0; where the step ±h moves a pre-activation a across
it, f is not smooth on [p − h, p + h] and ĝ_i is not the derivative (its error is of the order
of the jump in slope, not of h²). :func:`gradcheck` takes ``kinks``, a function returning every
kinked pre-activation of the last evaluation, and leaves out (and counts) each coordinate
whose step may cross one. The criterion, sound to second order: along the step,
a(t) = a₀ + t·a′ + r(t) with |r(t)| ≤ M t²/2 (M bounds |∂²a/∂p_i²| while no kink upstream is
crossed; one that is, is itself a pre-activation checked), so a zero in [−h, h] needs
|a₀| ≤ h|a′| + Mh²/2, and the two evaluations give h|a′| ≤ Δ + Mh²/2 with
Δ = max(|a(h) − a₀|, |a(−h) − a₀|). A coordinate is left out when, for some a,
    Δ > 0  and  |a₀| ≤ 2Δ,
which misses a crossing only where M h² > Δ, a curvature about 1/h = 10⁶ times the slope a′.
(Δ = 0: the step does not move a at all.)
"""

from __future__ import annotations

import numpy as np

from .backend import backend_of
from .errors import InputError
from .ops.activations import KINKED

DEFAULT_H = 1e-6
FLOOR_FACTOR = 4
"""How many floors an error may be and still mean backward matches forward (see the module)."""


class GradcheckResult(dict):
    """name -> relative error over the coordinates checked off kinks (a dict, as before), and:

    ``floor``    name -> ε_mach·|f| / (h · scale): the relative error rounding alone makes
    ``kinks``    name -> how many checked coordinates were left out: their step may cross a kink
    ``checked``  name -> how many coordinates the error is over
    """

    def __init__(self, errors, floor, kinks, checked):
        super().__init__(errors)
        self.floor, self.kinks, self.checked = floor, kinks, checked

    def ok(self, tol=1e-7, factor=FLOOR_FACTOR):
        """Whether every error is within ``tol`` or ``factor`` floors (backward matches forward)."""
        return all(err <= max(tol, factor * self.floor[name]) for name, err in self.items())

    def __repr__(self):
        worst = max(self, key=lambda k: self[k] / max(self.floor[k], 1e-300), default=None)
        left = sum(self.kinks.values())
        return (f"GradcheckResult({len(self)} arrays, largest error {max(self.values(), default=0.0):.2g}; "
                f"{worst}: {self[worst]:.2g} against a floor of {self.floor[worst]:.2g}; "
                f"{left} of {left + sum(self.checked.values())} coordinates left out on kinks)"
                if worst is not None else "GradcheckResult()")


def gradcheck(fun, inputs: dict, grads: dict, *, h=DEFAULT_H, max_coords=200, seed=0, kinks=None) -> dict:
    """Compare ``grads`` with central differences of the scalar ``fun()``.

    fun : callable with no arguments returning a scalar (a float or 0-d array) computed
        from the arrays in ``inputs``, which are perturbed **in place** one coordinate at a
        time (and restored).
    inputs : name -> float64 array (NumPy or CuPy).
    grads : name -> the analytic gradient of fun with respect to inputs[name].
    kinks : optional callable returning, as one host array, every pre-activation at a kink of
        the evaluation ``fun`` just made: coordinates whose step may cross one are left out
        (see the module).
    Returns a :class:`GradcheckResult`: name -> relative error (see the module docstring).
    """
    rng = np.random.default_rng(seed)
    f0 = abs(float(fun()))
    at = None if kinks is None else np.asarray(kinks())
    errors, floor, left, checked = {}, {}, {}, {}
    for name, p in inputs.items():
        g = _host_grad(name, p, grads)
        flat = p.reshape(-1)
        idx = (np.arange(p.size) if p.size <= max_coords
               else np.sort(rng.choice(p.size, size=max_coords, replace=False)))
        num, crossed = np.empty(idx.size), np.zeros(idx.size, dtype=bool)
        for k, i in enumerate(idx):
            num[k], crossed[k] = _difference(fun, flat, int(i), h, kinks, at)
        ana, num = g[idx][~crossed], num[~crossed]
        scale = max(np.max(np.abs(ana), initial=0.0), np.max(np.abs(num), initial=0.0), 1e-12)
        errors[name] = float(np.max(np.abs(ana - num), initial=0.0) / scale)
        floor[name] = float(np.finfo(np.float64).eps * f0 / (h * scale))
        left[name], checked[name] = int(crossed.sum()), int(ana.size)
    return GradcheckResult(errors, floor, left, checked)


def _host_grad(name, p, grads):
    """grads[name] as a flat host array, once ``p`` and it are what a check needs."""
    if p.dtype != np.float64:
        raise InputError(f"gradcheck needs float64 inputs; {name} is {p.dtype}")
    if name not in grads:
        raise InputError(f"grads has no entry for input {name!r}")
    g = np.asarray(backend_of(grads[name]).to_host(grads[name])).reshape(-1)
    if g.size != p.size:
        raise InputError(f"grads[{name!r}] has {g.size} entries, the input {p.size}")
    return g


def _difference(fun, flat, i, h, kinks, at):
    """(ĝ_i, whether the step may cross a kink) for coordinate i of ``flat`` (restored after)."""
    old = float(flat[i])
    flat[i] = old + h
    fp = float(fun())
    up = None if kinks is None else np.asarray(kinks())
    flat[i] = old - h
    fm = float(fun())
    down = None if kinks is None else np.asarray(kinks())
    flat[i] = old
    if kinks is None:
        return (fp - fm) / (2 * h), False
    moved = np.maximum(np.abs(up - at), np.abs(down - at))
    return (fp - fm) / (2 * h), bool(np.any((moved > 0) & (np.abs(at) <= 2 * moved)))


def gradcheck_model(model, x, eps=None, target=None, kinks=True, **kwargs) -> dict:
    """:func:`gradcheck` of ``model.loss_and_grads`` over every parameter (fixed ε).

    The model must be float64. ``eps`` defaults to one draw from the model's noise stream,
    of the shape the model's objective takes (``model.eps_shape``: (N, L), or (K, N, L) for
    the importance-weighted bound), held fixed for all evaluations. With ``kinks`` (default)
    and a ReLU or leaky-ReLU model, the coordinates whose step may move a hidden pre-activation
    across 0 are left out and counted (see the module). Returns a :class:`GradcheckResult`:
    parameter name -> relative error, with each array's floor and kinks.
    """
    if model.dtype != np.float64:
        raise InputError(f"gradcheck_model needs a float64 model, got {model.dtype}")
    if eps is None:                      # None too for a point code, which takes no noise
        eps = model.noise(x.shape[0], model.rng["noise"])
    res = model.loss_and_grads(x, eps=eps, target=target)
    grads = {k: model.xp.array(v, copy=True) for k, v in res.grads.items()}

    def fun():
        return model.loss_and_grads(x, eps=eps, target=target, need_grads=False).objective

    return gradcheck(fun, model.params, grads, kinks=_preactivations(model, x.shape[0]) if kinks else None, **kwargs)


def _preactivations(model, n):
    """A function giving every kinked hidden pre-activation of the model's last forward at batch
    size n, recomputed from the inputs its stacks' caches keep (a = x_j W_j + b_j); None where
    no stack has a kinked activation."""
    ws = model.workspace(n)
    stacks = [(s, c) for s, c in ((model.encoder, ws.enc), (model.decoder, ws.dec)) if s.activation in KINKED]
    if not any(len(s.layers) > 1 for s, _ in stacks):
        return None

    def pre():
        out = [(c.inputs[j] @ layer.W + layer.b).reshape(-1)
               for s, c in stacks for j, layer in enumerate(s.layers[:-1])]
        return model.backend.to_host(model.xp.concatenate(out))
    return pre
