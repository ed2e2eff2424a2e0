"""Numba twins of the NumPy draws of :class:`~.random.Stream`: the same bits, one pass.

``uniform32`` and ``pairs`` (float64 uniforms, or normals) fill a flat float32 / float64 array
with the values ``first``, ``first + 1``, … of draw ``d`` of the stream keyed ``(k0, k1)``
(a rank's rows start anywhere: ``Stream.rows``), exactly as the NumPy path of
``Stream.draw_uniform_into`` / ``draw_normal_into`` does (``random.py``'s counter layout, ``philox.py``'s transforms) and as
the CUDA kernels ``philox_uniform_*`` / ``philox_normal_*`` do: block j's four words from
Philox4x32-10 of counter (j_lo, j_hi, d_lo, d_hi), then ``uniform24`` of each word, or
``uniform53`` of each word pair, or Box–Muller of the two ``uniform53`` values.

Identical bits: Philox is integer arithmetic (uint64 products of 32-bit words, their halves
by shift and mask); the transforms are the exact steps and correctly rounded operations that
``philox.py`` spells out for ``box_muller`` and ``_NORMAL_PAIR_C``, in the same order, with
the same float64 constants; frexp and rint are exact bit operations here (u1 is a normal
number in [2⁻⁵³, 1); 0 < 4 u2 < 4). Numba compiles without ``fastmath``, so LLVM neither
reorders nor fuses them. ``tests/test_numba_twins.py`` compares every bit with the NumPy path.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ._numba_math import INLINE, JIT, bits_f64, f64_bits
from .philox import (COS_C, LN2_HI, LN2_LO, LOG_C, PHILOX_M0, PHILOX_M1, PHILOX_W0, PHILOX_W1, PIO2,
                     SIN_C, SQRT_HALF)

U64 = np.uint64
M0, M1, W0, W1 = U64(PHILOX_M0), U64(PHILOX_M1), U64(PHILOX_W0), U64(PHILOX_W1)
MASK32, S32 = U64(0xFFFFFFFF), U64(32)
TWO_M24 = np.float32(2.0**-24)
TWO_M53 = 2.0**-53
RINT = 4503599627370496.0                     # 2**52: (y + R) − R = rint(y) for 0 ≤ y < 2**51


@njit(**INLINE)
def _block(j, d_lo, d_hi, k0, k1):
    """Philox4x32-10 of counter (j_lo, j_hi, d_lo, d_hi) under (k0, k1): four words (uint64)."""
    c0, c1, c2, c3 = j & MASK32, j >> S32, d_lo, d_hi
    for _ in range(10):
        p0, p1 = M0 * c0, M1 * c2
        c0, c1, c2, c3 = (p1 >> S32) ^ c1 ^ k0, p1 & MASK32, (p0 >> S32) ^ c3 ^ k1, p0 & MASK32
        k0, k1 = (k0 + W0) & MASK32, (k1 + W1) & MASK32
    return c0, c1, c2, c3


@njit(**INLINE)
def _uniform53(a, b):
    """((b·2³² + a) >> 11 | 1) · 2⁻⁵³: exact, in (0, 1)."""
    return np.float64((((b << S32) | a) >> U64(11)) | U64(1)) * TWO_M53


@njit(**INLINE)
def _horner(z, c):
    """``philox.horner``: (…(c[-1] z + c[-2]) z + …) z + c[0], each step rounded."""
    p = z * c[len(c) - 1]
    for k in range(len(c) - 2, 0, -1):
        p = (p + c[k]) * z
    return p + c[0]


@njit(**INLINE)
def _normal_pair(u1, u2):
    """``_NORMAL_PAIR_C`` operation for operation: (r cos 2πu2, r sin 2πu2), r = √(−2 log u1)."""
    bits = f64_bits(u1)
    e = ((bits >> 52) & 0x7FF) - 1022                           # frexp: u1 = m 2**e
    m = bits_f64((bits & 0xFFFFFFFFFFFFF) | 0x3FE0000000000000)  # m in [1/2, 1)
    if m < SQRT_HALF:
        m, e = m * 2.0, e - 1
    ef = np.float64(e)
    f = m - 1.0
    s = f / (f + 2.0)
    p = _horner(s * s, LOG_C)
    p = p * (s + s)
    r = np.sqrt((ef * LN2_HI + (ef * LN2_LO + p)) * -2.0)
    y = u2 * 4.0
    q = (y + RINT) - RINT
    a = (y - q) * PIO2
    za = a * a
    sa = _horner(za, SIN_C) * a
    ca = _horner(za, COS_C)
    k = np.int64(q) & 3
    c, sn = (sa, ca) if k & 1 else (ca, sa)
    if k == 1 or k == 2:
        c = -c
    if k >= 2:
        sn = -sn
    return r * c, r * sn


@njit(**INLINE)
def _pair(j, d_lo, d_hi, k0, k1, normal):
    """Block j's two values: Box–Muller of its two uniform53 (``normal``), or those uniforms."""
    w0, w1, w2, w3 = _block(U64(j), d_lo, d_hi, k0, k1)
    u1, u2 = _uniform53(w0, w1), _uniform53(w2, w3)
    return _normal_pair(u1, u2) if normal else (u1, u2)


@njit(**JIT)
def pairs(k0, k1, d_lo, d_hi, out, normal, first):
    """out[i] = value first + i of the draw: value 2j + t is block j's t-th; a start inside a
    pair (first odd) takes that block's second value, an odd end the last block's first."""
    n = out.size
    s = min(first % 2, n)                        # a first value from inside a pair
    if s:
        out[0] = _pair(first // 2, d_lo, d_hi, k0, k1, normal)[1]
    b = (first + s) // 2
    m = n - s
    for j in range(m // 2):                      # whole blocks, indices from 0: LLVM vectorises
        out[s + 2 * j], out[s + 2 * j + 1] = _pair(b + j, d_lo, d_hi, k0, k1, normal)
    if m % 2:
        out[n - 1] = _pair(b + m // 2, d_lo, d_hi, k0, k1, normal)[0]


@njit(**INLINE)
def _uniform24(w):
    """((w >> 8) | 1) · 2⁻²⁴: exact, in (0, 1)."""
    return np.float32((w >> U64(8)) | U64(1)) * TWO_M24


@njit(**JIT)
def uniform32(k0, k1, d_lo, d_hi, out, first):
    """out[i] = uniform24(word t of block j) for value first + i = 4j + t; the first and the
    last block may be cut."""
    n = out.size
    r = first % 4
    s = min(4 - r, n) if r else 0                # values from inside the first block
    if s:
        w = _block(U64(first // 4), d_lo, d_hi, k0, k1)
        for t in range(s):
            out[t] = _uniform24(w[r + t])
    b = (first + s) // 4
    m = n - s
    for j in range(m // 4):
        w = _block(U64(b + j), d_lo, d_hi, k0, k1)
        for t in range(4):
            out[s + 4 * j + t] = _uniform24(w[t])
    w = _block(U64(b + m // 4), d_lo, d_hi, k0, k1)
    for t in range(m % 4):
        out[n - m % 4 + t] = _uniform24(w[t])
