"""A model's precision: what its matrix products compute in. Everything else stays FP32.

=========  ====================================================================================
setting    the products (forward x W, backward xᵀ dy and dy Wᵀ)
=========  ====================================================================================
``fp32``   true FP32 (no tensor cores): the default, and the only one the NumPy backend computes
``tf32``   FP32 operands and output; on a GPU the TF32 tensor cores round the operands to 10
           mantissa bits (8 exponent bits, as FP32) and accumulate in FP32
``bf16``   the operands rounded to bfloat16 (nearest even, :mod:`.bf16`; 7 mantissa bits), the
           products accumulated in FP32 (``cublasGemmEx``, ``CUBLAS_COMPUTE_32F``) with FP32 output
=========  ====================================================================================

In every setting the parameters (the master weights), the gradients, the optimizer's state,
the elementwise blocks (bias + activation, sample + KL, the likelihood) and the loss sums stay
in the model's dtype (float32), and bias gradients are summed in it. A reduced precision needs a
float32 model on a backend that computes it (:attr:`Backend.precisions
<scratchvae.backend.Backend>`: CuPy).

bf16 keeps a second copy of what the products read: ``theta`` in bfloat16 words (rewritten from
the FP32 master weights before each forward, one conversion of the flat buffer), and each
activation and output gradient converted once into a uint16 buffer of the workspace. The forward
input's words serve its layer's weight gradient too (xᵀ dy), and once that is formed the buffer
takes the words of the gradient that overwrites the activation. :class:`Precision` is what the
model asks; it never branches on the name.
"""

from __future__ import annotations

import numpy as np

from .bf16 import to_bf16
from .dense import PRECISIONS, matmul

__all__ = ["PRECISIONS", "Precision", "make_precision"]


class Precision:
    """fp32 and tf32: the products read the float32 arrays themselves."""

    words = False   # whether the products read copies (bf16) rather than the arrays

    def __init__(self, name):
        self.name = name

    def buffer(self, xp, shape):
        """A buffer for a product operand's copy (None: the operand is read as it is)."""
        return None

    def operand(self, a, buf=None):
        """``a`` as the products read it (bf16: its words, written into ``buf`` or a new array)."""
        return a

    def kept(self, a, buf):
        """The operand copy of ``a`` made earlier into ``buf`` (fp32, tf32: ``a`` itself)."""
        return a

    def matmul(self, a, b, out=None):
        """a @ b of two operands as :meth:`operand` gives them; float32 out."""
        return matmul(a, b, out=out, precision=self.name)

    def __repr__(self):
        return f"<precision {self.name}>"


class BF16(Precision):
    """bf16: the products read bfloat16 words (uint16) made from the float32 arrays."""

    words = True

    def buffer(self, xp, shape):
        return xp.empty(shape, dtype=np.uint16)

    def operand(self, a, buf=None):
        return to_bf16(a, out=buf)

    def kept(self, a, buf):
        return buf


def make_precision(name):
    """The :class:`Precision` called ``name`` ('fp32', 'tf32' or 'bf16'); None if there is none."""
    if name not in PRECISIONS:
        return None
    return BF16(name) if name == "bf16" else Precision(name)
