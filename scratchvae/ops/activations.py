"""Elementwise activations, each with a backward computed from the activation's *output*.

Shapes: any; in the model they are (N, H). Every derivative below is written in terms of
the output ``a = f(z)`` rather than the input ``z``, so the forward pass stores one array
per layer and works in place (``out`` may be the input):

=============  ==============================  =======================================
name           forward a = f(z)                derivative f'(z) in terms of a
=============  ==============================  =======================================
relu           max(z, 0)                       1[a > 0]  (0 at z = 0, as PyTorch)
leaky_relu     max(z, s·z), s = 0.01           1 if a > 0 else s   (s at z = 0, as PyTorch)
tanh           tanh z                          1 − a²
sigmoid        1 / (1 + e^{−z})                a (1 − a)
softplus       log(1 + e^z)                    1 − e^{−a}  (= σ(z), since e^{−a} = 1 − σ(z))
=============  ==============================  =======================================

Derivations, one line each:
  tanh' = sech² = 1 − tanh²;  σ' = e^{−z}/(1+e^{−z})² = σ(1 − σ);
  softplus' = e^z/(1+e^z) = σ(z), and e^{−softplus(z)} = 1/(1+e^z) = 1 − σ(z), so σ(z) = 1 − e^{−a}
  (computed as −expm1(−a), exact for tiny a). ReLU and leaky ReLU are piecewise linear; a > 0
  exactly when z > 0 (s > 0), so the output tells the branch.
"""

from __future__ import annotations

from ..backend import fused, xp_of
from ..errors import InputError

LEAKY_SLOPE = 0.01
ACTIVATIONS = ("relu", "leaky_relu", "tanh", "sigmoid", "softplus")
KINKED = ("relu", "leaky_relu")
"""The activations with a kink (at 0), where a finite difference across it is no derivative."""


def sigmoid(z, out=None):
    """σ(z) = 1/(1 + e^{−z}), computed as ½ + ½ tanh(z/2): bounded, no overflow for any z,
    in place when ``out`` is ``z``. (Its absolute error is half an ulp of ½; a block that needs
    σ's relative accuracy in the far tail, the Bernoulli loss, forms σ within its own fused
    arithmetic.)"""
    xp = xp_of(z)
    out = xp.multiply(z, 0.5, out=out)
    xp.tanh(out, out=out)
    xp.multiply(out, 0.5, out=out)
    xp.add(out, 0.5, out=out)
    return out


@fused("softplus")
def softplus(z, out=None, scratch=None):
    """softplus(z) = log(1 + e^z) = max(z, 0) + log1p(e^{−|z|})  (take e^{max(z, 0)} out of
    1 + e^z): no overflow for any z, and ±inf and NaN come out as log(1 + e^z) gives them.
    ``out`` may be ``z``; ``scratch``, a buffer of z's shape other than z and ``out``, holds
    log1p(e^{−|z|}) so that nothing is allocated (None: a temporary).

    Accuracy (``tests/test_softplus.py``): within 3.2 ulp in float32 and 1.7 ulp in float64
    of the exact value. Vectorised passes rather than numpy.logaddexp's scalar calls
    (docs/design-notes.md); CuPy's kernel is one pass of ``cupy.logaddexp``, the float32 Numba
    twin one pass of its own exp and log1p."""
    xp = xp_of(z)
    usable = scratch is not None and scratch is not z and scratch is not out
    t = xp.abs(z, out=scratch if usable else None)
    xp.negative(t, out=t)
    xp.exp(t, out=t)
    xp.log1p(t, out=t)                          # log1p(e^{−|z|}) ∈ [0, log 2]
    out = xp.maximum(z, 0, out=out)
    return xp.add(out, t, out=out)


def check_activation(name: str) -> str:
    if name not in ACTIVATIONS:
        raise InputError(f"activation must be one of {', '.join(ACTIVATIONS)}, got {name!r}")
    return name


def activation_forward(name, z, out=None, scratch=None, slope=LEAKY_SLOPE):
    """a = f(z) elementwise (``out`` may be ``z``). See the module table for f.

    Leaky ReLU and softplus in place need a second buffer of z's shape: pass ``scratch`` to
    avoid an allocation (the model passes a gradient buffer that is free during the forward pass).
    """
    xp = xp_of(z)
    if out is None:
        out = xp.empty_like(z)
    if name == "relu":
        xp.maximum(z, 0, out=out)
    elif name == "leaky_relu":
        # max(z, s z): the one activation that needs a second buffer when done in place.
        sz = scratch if scratch is not None and scratch is not z else xp.empty_like(z)
        xp.multiply(z, slope, out=sz)
        xp.maximum(z, sz, out=out)
    elif name == "tanh":
        xp.tanh(z, out=out)
    elif name == "sigmoid":
        sigmoid(z, out=out)
    elif name == "softplus":
        softplus(z, out=out, scratch=scratch)
    else:
        check_activation(name)
    return out


def activation_derivative(name, a, out=None, slope=LEAKY_SLOPE):
    """f'(z) from the output a = f(z) (see the module table). ``out`` may be ``a``."""
    xp = xp_of(a)
    if out is None:
        out = xp.empty_like(a)
    if name == "relu":
        xp.sign(a, out=out)                   # 1[a > 0], since a ≥ 0
    elif name == "leaky_relu":
        xp.sign(a, out=out)                   # 1, 0, −1 for z > 0, z = 0, z < 0
        xp.maximum(out, 0, out=out)           # 1, 0, 0
        out *= 1 - slope
        out += slope                          # 1, s, s
    elif name == "tanh":
        xp.multiply(a, a, out=out)
        xp.subtract(1, out, out=out)          # 1 − a²
    elif name == "sigmoid":
        # a (1 − a) = ¼ − (a − ½)²: one buffer, so it also works in place.
        xp.subtract(a, 0.5, out=out)
        xp.multiply(out, out, out=out)
        xp.subtract(0.25, out, out=out)
    elif name == "softplus":
        xp.negative(a, out=out)
        xp.expm1(out, out=out)
        xp.negative(out, out=out)             # 1 − e^{−a} = σ(z)
    else:
        check_activation(name)
    return out


@fused("act_backward", on="da")
def activation_backward(name, da, a, out=None, mask=None, slope=LEAKY_SLOPE):
    """dz = da ⊙ f'(z), with f'(z) computed from the output ``a`` (see the module table).

    ``out`` may be ``a`` (the model's choice: the activation is spent once its layer's
    weight gradient is formed, and nothing temporary is made) or a separate buffer; it
    must not be ``da``. ReLU-type derivatives are the mask 1[a > 0]: pass a boolean
    ``mask`` buffer of a's shape to avoid allocating it (``np.sign`` written in place runs
    ~15× slower than this on NumPy 2.x).
    """
    if out is not None and out is da:
        raise InputError("activation_backward: out must not be da (use out=a or a new buffer)")
    if name in ("relu", "leaky_relu"):
        xp = xp_of(da)
        mask = xp.greater(a, 0, out=mask)        # z > 0 exactly when a > 0
        if name == "relu":
            return xp.multiply(da, mask, out=out)
        if out is None:
            out = xp.empty_like(da)
        xp.copyto(out, mask)                     # 1 or 0
        out *= 1 - slope
        out += slope                             # 1 or s
        out *= da
        return out
    out = activation_derivative(name, a, out=out, slope=slope)
    out *= da
    return out


@fused("bias_act")
def bias_act_forward(pre, b, name, out=None, scratch=None, slope=LEAKY_SLOPE):
    """Fused block after a GEMM: a = f(pre + b), b broadcast over rows.

    pre: (N, H) the product x @ W; b: (H,); out: (N, H), may be ``pre`` (the usual case).
    On a GPU this is one kernel; here it is two in-place passes.
    """
    xp = xp_of(pre)
    if out is None:
        out = xp.empty_like(pre)
    xp.add(pre, b, out=out)
    return activation_forward(name, out, out=out, scratch=scratch, slope=slope)
