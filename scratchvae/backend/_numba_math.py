"""Vectorisable elementary functions for the Numba twins (:mod:`._numba_kernels`).

Why these exist: the llvmlite wheels carry no vector math library, so ``math.exp`` in a Numba
loop stays one scalar call into the C library per element, while NumPy's float32 ``exp`` and
``log1p`` are SIMD loops; a fused twin built on the scalar calls runs slower than NumPy's
pass-per-operation body. Written out here as arithmetic, bit casts and selects, LLVM
vectorises them with the rest of a fused loop (no ``fastmath``: the twins keep IEEE order).

They serve the float32 twins (a float64 block runs its NumPy body: with the C library's scalar
exp and log1p a float64 twin was slower than NumPy's loops):

``exp32(x)``: e^x in float32, for every float32 x. Cody–Waite reduction
    x = k ln2 + r, |r| ≤ ½ ln2, with k = rint(x log2 e) by the 1.5·2²³ trick and r formed by
    two fused multiply-adds (ln2 split in a float32 head and tail); e^r = 1 + r + r² P(r), P
    Cephes' degree-5 minimax polynomial; e^x = e^r 2^⌊k/2⌋ 2^(k − ⌊k/2⌋), two exact scalings,
    so results in the subnormal range round once. x is clamped to [−104, 89] first (e^x is 0
    or ∞ beyond); NaN passes through. Worst error against e^x in float64, over every float32
    x with e^x a finite nonzero float32: 1.013 ulp (NumPy's SIMD float32 exp on the same
    machine: 2.54 ulp); ``tests/test_numba_math.py`` holds it to 1.02 ulp on a sample.
``log1p01(e)``: log(1 + e) for a float32 e in [0, 1] (the Bernoulli block's e^{−|y|}),
    evaluated in float64 and returned as float64: for e > √2 − 1, 1 + e is exact in float64
    and m = (1 + e)/2 ∈ (0.707, 1], else m = 1 + e with f = e taken exactly; then
    log(1 + f) = 2 atanh s, s = f / (2 + f), |s| ≤ 0.1716, by its series through s¹¹
    (truncation < 5e-11 relative; measured over every float32 e in [0, 1]: 5.1e-11, and 0.5006
    ulp once rounded to float32): correctly rounded but for ties closer than that.
``expm1_d(x)``: e^x − 1 of a float32 x in float64 arithmetic, returned as float64: x = k ln2
    + r (|r| ≤ ½ ln2, ln2 split so that k·LN2_HI is exact), e^r − 1 by Taylor through r¹¹
    (truncation < 1e-13 relative), e^x − 1 = 2^k (e^r − 1) + (2^k − 1); measured over every
    float32 x in [−88, 88]: 3.0e-14 relative, and every float32 rounding of it correctly
    rounded. ``e^x = expm1_d(x) + 1`` in float64 likewise.

The constants are float32 (or float64) values written once; intrinsics below are LLVM's own
(bit casts, ``llvm.fma``: an exact fused multiply-add on every CPU, a hardware instruction
where there is one). Also here, shared by the twins: their compile options (:data:`JIT`).
"""

from __future__ import annotations

import math

import numpy as np
from llvmlite import ir
from numba import njit
from numba.core import types
from numba.extending import intrinsic

JIT = dict(cache=True, error_model="numpy")
"""Options of every twin: cached compilation; float division by zero gives inf/NaN as NumPy
does (Numba's default raises, and that check would keep loops from vectorising). No
``parallel``: the twins run on the calling thread (``_numba_kernels`` says why)."""
INLINE = dict(JIT, inline="always")

F32, F64 = np.float32, np.float64


# -- intrinsics ---------------------------------------------------------------------------------
def _float_bits(ftype, width):
    """An intrinsic: the bits of a ``ftype`` value as a signed integer of ``width`` bits."""
    @intrinsic
    def bits(typingctx, x):
        if x != ftype:
            return None

        def codegen(context, builder, sig, args):
            return builder.bitcast(args[0], ir.IntType(width))
        return getattr(types, f"int{width}")(x), codegen
    return bits


def _bits_float(ftype, llvm_type, width):
    """An intrinsic: an integer's low ``width`` bits (sign-extended if narrower) read as ``ftype``."""
    @intrinsic
    def value(typingctx, x):
        if not isinstance(x, types.Integer):
            return None

        def codegen(context, builder, sig, args):
            v = args[0]
            if x.bitwidth > width:
                v = builder.trunc(v, ir.IntType(width))
            elif x.bitwidth < width:
                v = builder.sext(v, ir.IntType(width))
            return builder.bitcast(v, llvm_type)
        return ftype(x), codegen
    return value


bits_f32 = _bits_float(types.float32, ir.FloatType(), 32)
f64_bits = _float_bits(types.float64, 64)
bits_f64 = _bits_float(types.float64, ir.DoubleType(), 64)


@intrinsic
def fma(typingctx, a, b, c):
    """a·b + c rounded once (``llvm.fma``), for three floats of one type."""
    if not (isinstance(a, types.Float) and a == b == c):
        return None

    def codegen(context, builder, sig, args):
        ty = args[0].type
        fn = builder.module.declare_intrinsic("llvm.fma", [ty], ir.FunctionType(ty, [ty, ty, ty]))
        return builder.call(fn, args)
    return a(a, a, a), codegen


# -- float32 e^x -------------------------------------------------------------------------------
LOG2E = F32(1.4426950408889634)
LN2_HI32 = F32(0.6931471805599453)
LN2_LO32 = F32(0.6931471805599453 - float(LN2_HI32))
ROUNDER = F32(12582912.0)                     # 1.5 · 2**23: (v + R) − R = rint(v) for |v| < 2**22
EXP_P = tuple(F32(c) for c in (5.0000001201e-1, 1.6666665459e-1, 4.1665795894e-2, 8.3334519073e-3,
                               1.3981999507e-3, 1.9875691500e-4))   # Cephes expf, r⁰ … r⁵ of P


@njit(**INLINE)
def exp32(x):
    xc = min(max(x, F32(-104.0)), F32(89.0))
    k = fma(xc, LOG2E, ROUNDER) - ROUNDER
    r = fma(k, -LN2_HI32, xc)
    r = fma(k, -LN2_LO32, r)
    p = fma(fma(fma(fma(fma(EXP_P[5], r, EXP_P[4]), r, EXP_P[3]), r, EXP_P[2]), r, EXP_P[1]), r, EXP_P[0])
    p = fma(p, r * r, r) + F32(1.0)
    n = np.int32(k)
    h = n >> 1
    y = (p * bits_f32((h + 127) << 23)) * bits_f32((n - h + 127) << 23)
    return x if x != x else y


# -- float64 evaluations for float32 arguments ---------------------------------------------------
SQRT2M1 = F64(0.41421356237309503)
LN2 = F64(0.6931471805599453)
LN2_HI = F64(0.693145751953125)               # 15 bits: k · LN2_HI is exact for |k| < 2**38
LN2_LO = F64(0.6931471805599453 - 0.693145751953125)
ATANH_C = tuple(F64(2.0 / (2 * i + 1)) for i in range(6))   # 2 atanh s = s Σ 2 s^{2i}/(2i+1)
EXPM1_C = tuple(F64(1.0 / math.factorial(i)) for i in range(2, 12))


@njit(**INLINE)
def poly(z, c):
    """c[0] + z (c[1] + z (… + z c[-1])) (Horner; the tuple's loop is unrolled)."""
    p = c[len(c) - 1]
    for k in range(len(c) - 2, -1, -1):
        p = p * z + c[k]
    return p


@njit(**INLINE)
def log1p01(e):
    x = F64(e)
    big = x > SQRT2M1
    f = (F64(0.5) * (F64(1.0) + x) - F64(1.0)) if big else x
    s = f / (F64(2.0) + f)
    p = s * poly(s * s, ATANH_C)
    return (LN2 + p) if big else p


@njit(**INLINE)
def expm1_d(x32):
    x = F64(x32)
    k = (x * F64(1.4426950408889634) + F64(6755399441055744.0)) - F64(6755399441055744.0)
    r = (x - k * LN2_HI) - k * LN2_LO
    em1 = r + r * r * poly(r, EXPM1_C)       # e^r − 1
    two_k = bits_f64((np.int64(k) + 1023) << 52)
    return two_k * em1 + (two_k - F64(1.0))
