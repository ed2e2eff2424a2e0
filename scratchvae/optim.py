"""Optimizers with PyTorch's update rules, updating parameters in place.

An optimizer is built over the parameters and stepped with the gradients of the same
structure: either one flat array each (the model's ``theta`` / ``grad``, the fast path: one
pass over everything) or dicts of arrays keyed like the model's ``params`` / ``grads``.
Its state (moments and the step count) is arrays that :meth:`state` returns and
:meth:`load_state` restores.

The training step (:mod:`scratchvae.step`) drives an optimizer through two methods, so that
the same step can be replayed as a CUDA graph: ``coefficients(t)``, the per-step numbers of
step t computed on the host (Adam's bias corrections; none for SGD), which the step reads
from a device-side schedule, and ``step_from(grads, coef)``, the update with those numbers
read from the device array ``coef``. ``step(grads)`` is the same update for eager use.
"""

from __future__ import annotations

import math

import numpy as np

from .backend import backend_of, fused, xp_of
from .errors import InputError


def _as_list(tree):
    if isinstance(tree, dict):
        return list(tree.keys()), list(tree.values())
    return None, [tree]


class _Optimizer:
    def __init__(self, params, lr):
        lr = float(lr)
        if not (lr > 0 and math.isfinite(lr)):
            raise InputError(f"lr must be a positive finite number, got {lr!r}")
        self.lr = lr
        self._names, self._params = _as_list(params)
        self.t = 0
        self._buf = [None] * len(self._params)

    def _scratch(self, i):
        """A buffer of parameter i's shape, made on the first step (steps allocate nothing)."""
        if self._buf[i] is None:
            self._buf[i] = xp_of(self._params[i]).empty_like(self._params[i])
        return self._buf[i]

    def _grads(self, grads):
        names, gs = _as_list(grads)
        if names != self._names or len(gs) != len(self._params):
            raise InputError(f"grads must have the parameters' structure (names {self._names}), "
                             f"got {names if names is not None else 'one array'}")
        for p, g in zip(self._params, gs):
            if p.shape != g.shape:
                raise InputError(f"a gradient has shape {g.shape}, its parameter {p.shape}")
        return gs

    def _zeros(self):
        return [xp_of(p).zeros_like(p) for p in self._params]

    def state(self) -> dict:
        """Optimizer state as a dict of host NumPy arrays (a sync on a GPU)."""
        out = {"t": np.array(self.t, dtype=np.int64)}
        for key in self._state_keys:
            for i, a in enumerate(getattr(self, key)):
                out[f"{key}.{i}"] = np.array(backend_of(a).to_host(a))
        return out

    @classmethod
    def state_spec(cls, params) -> dict:
        """name -> (shape, dtype name) of what :meth:`state` returns for ``params`` (a flat
        array or a dict of arrays), without building an optimizer."""
        _, arrays = _as_list(params)
        spec = {"t": ((), "int64")}
        for key in cls._state_keys:
            spec.update({f"{key}.{i}": (tuple(a.shape), a.dtype.name) for i, a in enumerate(arrays)})
        return spec

    def load_state(self, state: dict):
        """Restore what :meth:`state` returned (shapes must match)."""
        for key in self._state_keys:
            for i, a in enumerate(getattr(self, key)):
                v = state.get(f"{key}.{i}")
                if v is None or tuple(v.shape) != tuple(a.shape):
                    raise InputError(f"optimizer state {key}.{i} missing or of the wrong shape: "
                                     f"expected {tuple(a.shape)}, got {None if v is None else tuple(v.shape)}")
                a[...] = xp_of(a).asarray(v, dtype=a.dtype)
        self.t = int(state["t"])


class SGD(_Optimizer):
    """SGD with momentum μ, PyTorch's rule:  v ← μ v + g;  p ← p − lr · v  (v₀ = 0)."""

    _state_keys = ("velocity",)
    scales_with_gradient = True
    """Its step is lr times the gradient: with gradients that are batch sums, B times a mean's."""

    def __init__(self, params, lr=1e-2, momentum=0.0):
        super().__init__(params, lr)
        momentum = float(momentum)
        if not 0 <= momentum < 1:
            raise InputError(f"momentum must be in [0, 1), got {momentum!r}")
        self.momentum = momentum
        self.velocity = self._zeros()

    def step(self, grads):
        self.t += 1
        self.step_from(grads, None)

    def coefficients(self, t, lr=None):
        """SGD has no per-step coefficients (see :meth:`Adam.coefficients`); its learning rate is
        fixed, so a schedule's ``lr`` must be its own."""
        if lr is not None and lr != self.lr:
            raise InputError(f"SGD takes its fixed lr {self.lr}; a learning-rate schedule needs Adam")
        return ()

    def step_from(self, grads, coef):
        """The update without touching ``t`` (``coef`` is unused): a capturable step."""
        for i, (p, g, v) in enumerate(zip(self._params, self._grads(grads), self.velocity)):
            if self.momentum:
                v *= self.momentum
                v += g                      # v ← μ v + g
                g = v
            p -= xp_of(p).multiply(g, self.lr, out=self._scratch(i))   # p ← p − lr · v


class Adam(_Optimizer):
    """Adam (Kingma & Ba 2015) with PyTorch's arithmetic, in place.

    m ← β₁ m + (1 − β₁) g;   v ← β₂ v + (1 − β₂) g²
    p ← p − (lr / (1 − β₁ᵗ)) · m / (√v / √(1 − β₂ᵗ) + ε)        (ε added after the root)
    """

    _state_keys = ("m", "v")
    scales_with_gradient = False
    """m / √v: a gradient scaled by c gives the same step (up to ε), batch sum or mean alike."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8):
        super().__init__(params, lr)
        b1, b2 = (float(b) for b in betas)
        if not (0 <= b1 < 1 and 0 <= b2 < 1):
            raise InputError(f"betas must both be in [0, 1), got {betas!r}")
        if not eps > 0:
            raise InputError(f"eps must be positive, got {eps!r}")
        self.betas, self.eps = (b1, b2), float(eps)
        self.m = self._zeros()
        self.v = self._zeros()

    def step(self, grads):
        self.t += 1
        b1, b2 = self.betas
        step_size, sqrt_bc2 = self.coefficients(self.t)
        for i, (p, g) in enumerate(zip(self._params, self._grads(grads))):
            adam_update(p, g, self.m[i], self.v[i], step_size, sqrt_bc2, b1, b2, self.eps,
                        self._scratch(i))

    def coefficients(self, t, lr=None):
        """Step t's bias-corrected (step_size, √(1 − β₂ᵗ)) = (lr / (1 − β₁ᵗ), √(1 − β₂ᵗ)); ``lr``
        (default the optimizer's) is step t's learning rate under a schedule."""
        b1, b2 = self.betas
        return (self.lr if lr is None else lr) / (1 - b1 ** t), math.sqrt(1 - b2 ** t)

    def step_from(self, grads, coef):
        """One update with ``coef`` = (step_size, √(1 − β₂ᵗ)) read from a float64 backend array.

        Leaves ``t`` alone: a CUDA-graph replay cannot touch a Python int, so the training loop
        fills a device table with :meth:`coefficients` for the coming steps, a kernel copies
        the current row into ``coef``, and the host advances ``t`` by one per replay. The
        arithmetic is :meth:`step`'s, bit for bit (the same float64 coefficients).
        """
        b1, b2 = self.betas
        for i, (p, g) in enumerate(zip(self._params, self._grads(grads))):
            adam_update_from(p, g, self.m[i], self.v[i], coef, b1, b2, self.eps, self._scratch(i))


@fused("adam")
def adam_update(p, g, m, v, step_size, sqrt_bc2, b1, b2, eps, scratch):
    """The fused Adam block over one (flat) buffer; ``scratch`` has p's shape.

    m ← β₁ m + (1−β₁) g;  v ← β₂ v + (1−β₂) g²;  p ← p − step_size · m / (√v / sqrt_bc2 + ε)
    with step_size = lr / (1 − β₁ᵗ) and sqrt_bc2 = √(1 − β₂ᵗ) computed by the caller.
    """
    xp = xp_of(p)
    m *= b1
    xp.multiply(g, 1 - b1, out=scratch)
    m += scratch
    v *= b2
    xp.multiply(g, g, out=scratch)
    scratch *= 1 - b2
    v += scratch
    xp.sqrt(v, out=scratch)
    scratch /= sqrt_bc2
    scratch += eps
    xp.divide(m, scratch, out=scratch)
    scratch *= step_size
    p -= scratch


@fused("adam_from")
def adam_update_from(p, g, m, v, coef, b1, b2, eps, scratch):
    """:func:`adam_update` with (step_size, sqrt_bc2) = ``coef[0], coef[1]`` (float64, on the backend)."""
    return adam_update(p, g, m, v, float(coef[0]), float(coef[1]), b1, b2, eps, scratch)


OPTIMIZERS = {"adam": Adam, "sgd": SGD}
"""The optimizers by name (the ``optimizer`` of a training configuration)."""


def make_optimizer(model, cfg):
    """The optimizer a :class:`~scratchvae.config.TrainConfig` ``cfg`` names, over the model's
    flat parameters."""
    if cfg.optimizer == "sgd":
        return SGD(model.theta, lr=cfg.lr, momentum=cfg.momentum)
    return Adam(model.theta, lr=cfg.lr, **({} if cfg.adam_eps is None else {"eps": cfg.adam_eps}))


# -- learning-rate schedules ----------------------------------------------------------------
def iwae_stage(epoch):
    """The stage i of 1-based ``epoch`` in Burda et al.'s schedule: stage i runs 3ⁱ epochs, so
    stages 0…i end after (3^(i+1) − 1)/2 epochs (1, 4, 13, 40, 121, 364, 1093, 3280)."""
    i = 0
    while (3 ** (i + 1) - 1) // 2 < epoch:
        i += 1
    return i


def iwae_lr(lr, steps_per_epoch):
    """step -> lr · 10^(−i/7), i the stage of the step's epoch (Burda, Grosse & Salakhutdinov 2016)."""
    return lambda step: lr * 10.0 ** (-iwae_stage(-(-step // steps_per_epoch)) / 7)


LR_SCHEDULES = {"constant": None, "iwae": iwae_lr}
"""Learning-rate schedules by name: a factory (lr, steps per epoch) -> (step -> lr), or None."""
