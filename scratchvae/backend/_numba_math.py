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
``log1p01(e)``: log(1 + e) in float32 for a float32 e in [0, 1] (the Bernoulli block's
    e^{−|y|}). For e ≥ ½, 1 + e = 2 (1 + f) with f = (e − 1)/2 ∈ [−¼, 0], formed exactly (e − 1
    is exact there, Sterbenz), and log(1 + e) = ln 2 + log1p(f) (ln 2 split in a float32 head
    and tail); else f = e ∈ [0, ½). Then log1p(f) = f + f² (−½ + f P(f)), P a degree-7
    polynomial fitted here to (log1p(f) − f + f²/2)/f³ over [−¼, ½] (weighted least squares,
    float32 coefficients: 5.7e-9 relative in float64), evaluated by fused multiply-adds: no
    division and no float64, so it vectorises 16 wide with the rest of the Bernoulli loop.
    Worst error over every float32 e in [0, 1], against log1p in float64: 0.907 ulp (faithfully
    rounded; NumPy's float32 log1p: up to 2.6 ulp); ``tests/test_numba_math.py`` holds it to
    0.91 ulp on a sample.
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


# -- float32 log(1 + e), e in [0, 1] ------------------------------------------------------------
LN2_HI_32 = F32(0.6931471805599453)
LN2_LO_32 = F32(0.6931471805599453 - float(LN2_HI_32))
LOG1P_P = tuple(F32(c) for c in (0.3333345651626587, -0.25000056624412537, 0.19990478456020355,
                                 -0.1664852648973465, 0.14486181735992432, -0.1315523386001587,
                                 0.10403130203485489, -0.044455185532569885))   # f⁰ … f⁷ of P


@njit(**INLINE)
def log1p01(e):
    big = e >= F32(0.5)
    f = fma(e, F32(0.5), F32(-0.5)) if big else e
    c = LOG1P_P
    p = fma(fma(fma(fma(fma(fma(fma(c[7], f, c[6]), f, c[5]), f, c[4]), f, c[3]), f, c[2]), f, c[1]), f, c[0])
    r = fma(f * f, fma(f, p, F32(-0.5)), f)   # f + f² (−½ + f P(f))
    return (LN2_HI_32 + (r + LN2_LO_32)) if big else r


# -- float64 evaluations for float32 arguments ---------------------------------------------------
LN2_HI = F64(0.693145751953125)               # 15 bits: k · LN2_HI is exact for |k| < 2**38
LN2_LO = F64(0.6931471805599453 - 0.693145751953125)
EXPM1_C = tuple(F64(1.0 / math.factorial(i)) for i in range(2, 12))


@njit(**INLINE)
def poly(z, c):
    """c[0] + z (c[1] + z (… + z c[-1])) (Horner; the tuple's loop is unrolled)."""
    p = c[len(c) - 1]
    for k in range(len(c) - 2, -1, -1):
        p = p * z + c[k]
    return p


@njit(**INLINE)
def expm1_d(x32):
    x = F64(x32)
    k = (x * F64(1.4426950408889634) + F64(6755399441055744.0)) - F64(6755399441055744.0)
    r = (x - k * LN2_HI) - k * LN2_LO
    em1 = r + r * r * poly(r, EXPM1_C)       # e^r − 1
    two_k = bits_f64((np.int64(k) + 1023) << 52)
    return two_k * em1 + (two_k - F64(1.0))


@njit(fastmath={"reassoc"}, **JIT)
def sum64(v):
    """Σ v in float64; the order is left to LLVM (vectorised): float64 sums of float32 terms."""
    acc = 0.0
    for j in range(v.size):
        acc += np.float64(v[j])
    return acc
