"""bfloat16 as 16-bit words: float32 -> bfloat16 rounded to nearest (ties to even), and back.

bfloat16 is the upper half of a float32: 1 sign bit, the same 8 exponent bits, 7 mantissa
bits (8 significant bits, about 2.4 decimal digits). NumPy and CuPy have no bfloat16 dtype,
so a bfloat16 array is stored as ``uint16`` words holding those 16 bits.

Rounding. Let u be the 32 bits of a float32 x and h = u >> 16 (the truncation, toward zero).
The 16 dropped bits r = u & 0xFFFF decide: r > 0x8000 rounds up (h + 1), r < 0x8000 down (h),
and the tie r = 0x8000 goes to the even h (up only if h is odd). All three are one integer sum:

    h_rne = (u + 0x7FFF + (h & 1)) >> 16

(0x7FFF + 1 = 0x8000 carries into bit 16 exactly when r ≥ 0x8000 and h is odd, or r > 0x8000).
A carry out of the mantissa increments the exponent, which is the correct rounding too: the
largest float32s round up to ±inf, as IEEE round-to-nearest does on overflow. Subnormals and
zeros are handled by the same sum (their bits are ordered like their values). NaN is the one
exception: the sum could carry a NaN's mantissa into the exponent of ±inf or the sign, so a NaN
keeps its upper 16 bits with the quiet bit (0x0040) set instead.

Back: the bfloat16 word h is the float32 with bits h << 16 (exact; every bfloat16 is a float32).
"""

from __future__ import annotations

import numpy as np

from ..backend import fused, xp_of
from ..errors import InputError

QUIET_NAN_BIT = 0x0040


@fused("to_bf16")
def to_bf16(x, out=None):
    """x (float32, any shape) -> its bfloat16 words (uint16, x's shape), rounded to nearest even.

    ``out``: a C-contiguous uint16 array of x's shape to write into (default: a new one).
    """
    xp = xp_of(x)
    if x.dtype != np.float32:
        raise InputError(f"to_bf16: x must be float32, got {x.dtype}")
    u = xp.ascontiguousarray(x).view(np.uint32)
    h = u >> np.uint32(16)
    word = (u + np.uint32(0x7FFF) + (h & np.uint32(1))) >> np.uint32(16)
    nan = (u & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000)
    word = xp.where(nan, h | np.uint32(QUIET_NAN_BIT), word).astype(np.uint16)
    if out is None:
        return word
    check_out("to_bf16", out, x.shape, np.uint16)
    out[...] = word
    return out


@fused("from_bf16")
def from_bf16(x16, out=None):
    """bfloat16 words (uint16, any shape) -> float32 (exact: the word is the upper half).

    ``out``: a C-contiguous float32 array of x16's shape to write into (default: a new one).
    """
    if x16.dtype != np.uint16:
        raise InputError(f"from_bf16: x16 must be uint16 (bfloat16 words), got {x16.dtype}")
    value = bf16_values(x16)
    if out is None:
        return value
    check_out("from_bf16", out, x16.shape, np.float32)
    out[...] = value
    return out


def bf16_values(x16):
    """The float32 values of bfloat16 words (a new array; no block: the NumPy product's own
    reading of its operands, see :func:`~.dense.matmul`)."""
    xp = xp_of(x16)
    return (xp.ascontiguousarray(x16).astype(np.uint32) << np.uint32(16)).view(np.float32)


def check_out(what, out, shape, dtype):
    """Refuse an ``out`` that is not a C-contiguous ``dtype`` array of ``shape``."""
    if tuple(out.shape) != tuple(shape) or out.dtype != dtype or not out.flags.c_contiguous:
        raise InputError(f"{what}: out must be a C-contiguous {np.dtype(dtype).name} array of shape "
                         f"{tuple(shape)}, got {out.dtype} {tuple(out.shape)}"
                         + ("" if out.flags.c_contiguous else " (not contiguous)"))
