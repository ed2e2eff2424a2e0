"""Philox4x32-10 and the transforms that turn its words into floats, in NumPy and in CUDA.

Philox4x32-R (Salmon, Moraes, Dror, Shaw, "Parallel random numbers: as easy as 1, 2, 3", SC'11)
maps a 128-bit counter ``c = (c0, c1, c2, c3)`` and a 64-bit key ``k = (k0, k1)`` to four
uint32 words. One round, with ``M0 = 0xD2511F53``, ``M1 = 0xCD9E8D57`` and ``hi``/``lo`` the
halves of a 32x32 -> 64-bit product::

    p0 = M0 * c0;  p1 = M1 * c2
    c  = (hi(p1) ^ c1 ^ k0,  lo(p1),  hi(p0) ^ c3 ^ k1,  lo(p0))

Round 1 uses the key as given; before each later round the key is bumped by the Weyl constants,
``k0 += 0x9E3779B9``, ``k1 += 0xBB67AE85`` (mod 2**32). Ten rounds make Philox4x32-10.

In NumPy the words live in uint64 arrays (values below 2**32), so ``M * c`` is the exact
product, ``p >> 32`` its high half and ``p & 0xFFFFFFFF`` its low half (``philox_rows``).
``PHILOX_CUDA_SRC`` is the same function in CUDA (``__umulhi`` for the high half) plus the
transforms below, so the two backends give the same bits.

Transforms
----------
* ``float32`` uniform from one word ``u``: ``((u >> 8) | 1) * 2**-24``. The integer
  ``(u >> 8) | 1 = 2 * (u >> 9) + 1 < 2**24`` converts to float32 exactly and the power-of-two
  scaling is exact, so the values are the 2**23 odd multiples of 2**-24, in
  ``[2**-24, 1 - 2**-24]``: never 0, never 1. (The 24-bit form ``((u >> 8) + 0.5) * 2**-24``
  would need 25 significant bits and round ``1 - 2**-25`` up to 1.0 in float32.)
* ``float64`` uniform from two words ``a, b``: ``v = b * 2**32 + a``,
  ``u = ((v >> 11) | 1) * 2**-53`` (the top 52 bits of v, then a 1 bit); exact for the same
  reason, in ``[2**-53, 1 - 2**-53]``.
* normals (Box-Muller, always in float64): from one block ``(w0, w1, w2, w3)`` take
  ``u1 = uniform53(w0, w1)``, ``u2 = uniform53(w2, w3)``, then ``r = sqrt(-2 log u1)`` and
  ``n1 = r cos(2 pi u2)``, ``n2 = r sin(2 pi u2)``; each block gives two normals, in that order.
  Float32 normals are the float64 ones rounded to nearest-even. ``|n| < 8.58`` always, since
  ``u1 >= 2**-53``.

Bit-identical normals: only correctly rounded operations
--------------------------------------------------------
IEEE 754 rounds ``+ - * /`` and ``sqrt`` correctly, so any machine that evaluates the same
sequence of them on the same inputs gets the same bits. ``log``, ``cos`` and ``sin`` are not
correctly rounded: NumPy's loops and CUDA's libdevice may differ by an ulp or two. So
``box_muller`` does not call them. It builds the three functions from exact steps (``frexp``,
``rint``, scaling by 2, Sterbenz subtractions) and the five rounded operations, in one fixed
order that the NumPy code (``box_muller``) and the CUDA code (``_NORMAL_PAIR_C``, generated
from the same constants) both spell out:

* ``log u1``: ``u1 = m 2**e`` (``frexp``, exact); if ``m < sqrt(1/2)`` then ``m = 2m``,
  ``e = e - 1`` (exact), so ``m`` lies in ``[sqrt(1/2), sqrt(2))``. With ``f = m - 1``
  (exact, Sterbenz) and ``s = f / (f + 2)``, ``log m = 2 atanh s = 2 s (1 + s**2/3 + s**4/5
  + ...)``; ``|s| <= 0.1716``, so eleven terms (``LOG_C``, through ``s**20/21``) leave a
  truncation error below 1e-18. Then ``log u1 = e LN2_HI + (e LN2_LO + log m)``, where
  ``LN2_HI`` holds the top 32 bits of ln 2 (so ``e * LN2_HI`` is exact) and ``LN2_LO`` the
  rest.
* ``cos(2 pi u2)``, ``sin(2 pi u2)``: ``y = 4 u2`` (exact), ``q = rint(y)``, ``f = y - q``
  (exact), so ``2 pi u2 = q pi/2 + a`` with ``a = f * PIO2`` in ``[-pi/4, pi/4]``. The
  Taylor series of ``sin a`` (``a`` times ``SIN_C`` in ``a**2``, through ``a**17/17!``) and
  ``cos a`` (``COS_C``, through ``a**18/18!``) have truncation errors below 1e-18 there.
  Quadrant ``q mod 4`` picks ``(cos, sin) = (C, S), (-S, C), (-C, -S), (S, -C)``; negation
  is exact. (Reducing ``u2`` before multiplying by pi also avoids the error of rounding
  ``2 pi u2`` to a float64 first.)

Each polynomial is evaluated by Horner's rule, ``p = p * z + c`` from the highest
coefficient down, each product and sum rounded. The CUDA module is compiled with
``--fmad=false`` so that no ``p * z + c`` becomes one FMA (one rounding instead of two), and
CUDA's float64 ``/`` and ``sqrt`` are correctly rounded by default. The result: float64 and
float32 normals are **bit-identical** between NumPy and CuPy, and accurate to a few float64
ulps: within 2.5 ulps for ``r`` and 3 ulps of ``r`` for ``n`` against long-double libm
(``tests/test_philox.py``), and ``tests/test_cuda_host.py`` runs the CUDA kernels themselves,
compiled for the host, against NumPy bit for bit.
"""

import math

import numpy as np

from scratchvae.errors import InputError

PHILOX_M0 = 0xD2511F53
PHILOX_M1 = 0xCD9E8D57
PHILOX_W0 = 0x9E3779B9
PHILOX_W1 = 0xBB67AE85

# The transform's constants (see "Bit-identical normals"); the CUDA source is generated from
# these same float64 values (``repr`` round-trips exactly).
LN2_HI = float.fromhex("0x1.62e42feep-1")    # ln 2 to 32 bits: e * LN2_HI exact for |e| < 2**21
LN2_LO = 1.9082149292705877e-10              # ln 2 - LN2_HI, rounded to float64
SQRT_HALF = 0.7071067811865476               # float64 nearest sqrt(1/2): where m is split
PIO2 = 1.5707963267948966                    # float64 nearest pi/2 (== math.pi / 2)
LOG_C = tuple(1.0 / (2 * k + 1) for k in range(11))                     # atanh(s)/s in s**2
SIN_C = tuple((-1) ** k / math.factorial(2 * k + 1) for k in range(9))  # sin(a)/a in a**2
COS_C = tuple((-1) ** k / math.factorial(2 * k) for k in range(10))     # cos(a) in a**2
_M = np.array([[PHILOX_M0], [PHILOX_M1]], dtype=np.uint64)
_W = np.array([[PHILOX_W0], [PHILOX_W1]], dtype=np.uint64)
_MASK32 = np.uint64(0xFFFFFFFF)
_U32 = np.uint64(32)
_TWO_M24 = np.float32(2.0**-24)
_TWO_M53 = 2.0**-53


def philox4x32(counter, key, rounds=10):
    """Philox4x32-``rounds`` of ``counter`` under ``key``.

    counter: uint32 array (..., 4); key: uint32 array (2,) or (..., 2), broadcast against the
    counter's leading axes. Returns a new uint32 array (broadcast leading shape, 4).
    """
    counter = np.asarray(counter)
    key = np.asarray(key)
    if counter.dtype != np.uint32 or counter.ndim < 1 or counter.shape[-1] != 4:
        raise InputError(f"counter must be a uint32 array of shape (..., 4), got {counter.dtype} "
                         f"array of shape {counter.shape}")
    if key.dtype != np.uint32 or key.ndim < 1 or key.shape[-1] != 2:
        raise InputError(f"key must be a uint32 array of shape (2,) or (..., 2), got {key.dtype} "
                         f"array of shape {key.shape}")
    if isinstance(rounds, bool) or not isinstance(rounds, (int, np.integer)) or rounds < 0:
        raise InputError(f"rounds must be an int >= 0, got {rounds!r}")
    lead = np.broadcast_shapes(counter.shape[:-1], key.shape[:-1])
    c = np.broadcast_to(counter, lead + (4,)).reshape(-1, 4).T   # (4, N)
    x = c[0::2].astype(np.uint64)                                # (c0, c2)
    y = c[1::2].astype(np.uint64)                                # (c1, c3)
    if key.ndim == 1:
        k = key.astype(np.uint64).reshape(2, 1)
    else:
        k = np.broadcast_to(key, lead + (2,)).reshape(-1, 2).T.astype(np.uint64)
    x, y = philox_rows(x, y, key_schedule(k, rounds))
    out = np.empty((x.shape[1], 4), dtype=np.uint32)
    out.T[0::2] = x
    out.T[1::2] = y
    return out.reshape(lead + (4,))


def key_schedule(k, rounds=10):
    """Round keys ``k, k + W, k + 2W, ...`` (mod 2**32) of a uint64 key array (2, 1) or (2, N)."""
    keys = [np.asarray(k, dtype=np.uint64)]
    for _ in range(1, rounds):
        keys.append((keys[-1] + _W) & _MASK32)
    return keys[:rounds]


def philox_rows(x, y, keys, work=None):
    """The rounds on the pairs ``x = (c0, c2)`` and ``y = (c1, c3)``; the fast path underneath.

    x, y: C-contiguous uint64 arrays (2, N) of values < 2**32, overwritten; keys: the round
    keys from ``key_schedule`` (one round per key); work: optional uint64 (2, N) scratch.
    Returns the output pairs ``(x, y)`` in the same layout. Each of N counters is a column; a
    round is five ufuncs over (2, N), with the long axis innermost (NumPy is slow when the
    innermost axis has length 2)::

        p = (M0, M1) * x                      # (M0 c0, M1 c2), exact in uint64
        x = (hi(p1), hi(p0)) ^ y ^ (k0, k1)
        y = (lo(p1), lo(p0))
    """
    p = np.empty_like(x) if work is None else work
    for k in keys:
        np.multiply(x, _M, out=p)
        np.right_shift(p[::-1], _U32, out=x)
        x ^= y
        x ^= k
        np.bitwise_and(p[::-1], _MASK32, out=y)
    return x, y


def uniform24(u, out=None, work=None):
    """Float32 uniforms in (0, 1), one per word ``u`` (< 2**32): ``((u >> 8) | 1) * 2**-24``.

    ``(u >> 8) | 1 = 2 * (u >> 9) + 1`` is odd and below 2**24, so its float32 conversion and
    the power-of-two scaling are exact: 2**23 values in ``[2**-24, 1 - 2**-24]``. work:
    optional scratch of u's shape and dtype for the odd integers (it may be ``u`` itself).
    """
    u = np.asarray(u)
    odd = np.right_shift(u, 8, out=work, dtype=u.dtype)
    odd |= 1
    odd = odd.view(np.int64 if odd.dtype.itemsize == 8 else np.int32)  # < 2**24; faster to float
    return np.multiply(odd, _TWO_M24, out=out, dtype=np.float32, casting="unsafe")


def uniform53(a, b, out=None, work=None):
    """Float64 uniforms in (0, 1), one per word pair ``(a, b)`` (each < 2**32).

    ``v = b * 2**32 + a``, then ``u = ((v >> 11) | 1) * 2**-53``: the top 52 bits of v and a
    final 1 bit, an odd integer below 2**53, so the float64 conversion and the scaling are
    exact; ``u`` lies in ``[2**-53, 1 - 2**-53]``. work: optional uint64 scratch for v (it may
    be ``b`` itself when b is uint64 and no longer needed).
    """
    v = np.left_shift(b, _U32, out=work, dtype=np.uint64)
    v |= a
    v >>= np.uint64(11)
    v |= np.uint64(1)
    v = v.view(np.int64)  # same values (< 2**53); NumPy converts int64 to float64 faster
    return np.multiply(v, _TWO_M53, out=out, dtype=np.float64, casting="unsafe")


def horner(z, coeffs, out):
    """``out = (...(c[-1] z + c[-2]) z + ...) z + c[0]``, each product and sum rounded once."""
    np.multiply(z, coeffs[-1], out=out)
    for c in coeffs[-2:0:-1]:
        out += c
        out *= z
    out += coeffs[0]
    return out


def box_muller(u1, u2, out=None, work=None):
    """Interleaved normals: ``out[2j] = r_j cos(2 pi u2_j)``, ``out[2j+1] = r_j sin(2 pi u2_j)``.

    ``r = sqrt(-2 log u1)``; u1, u2: float64 (B,) in (0, 1). Only correctly rounded
    operations, in the order of the module docstring, so that CUDA gets the same bits.
    ``out``: a flat array of 2B - 1 or 2B values (the last sine is dropped when odd), float64
    or float32 (each product ``r * trig`` rounded once to it); default a new float64 (2B,).
    work: optional float64 (6, B) scratch.
    """
    B = u1.shape[0]
    if work is None:
        work = np.empty((6, B), dtype=np.float64)
    m, t, s, z, p, r = work
    # log u1 = e LN2_HI + (e LN2_LO + log m), with m in [sqrt(1/2), sqrt(2))
    e = t.view(np.int32)[:B]
    np.frexp(u1, out=(m, e))                         # u1 = m 2**e, m in [1/2, 1): exact
    small = z.view(np.bool_)[:B]
    np.less(m, SQRT_HALF, out=small)
    np.multiply(m, 2.0, out=m, where=small)
    np.subtract(e, 1, out=e, where=small)
    np.copyto(r, e)                                  # float(e), exact
    m -= 1.0                                         # f = m - 1, exact (Sterbenz)
    np.add(m, 2.0, out=s)
    np.divide(m, s, out=s)                           # s = f / (f + 2)
    np.multiply(s, s, out=z)
    horner(z, LOG_C, out=p)
    s += s
    p *= s                                           # log m = 2 s P(s**2)
    np.multiply(r, LN2_LO, out=m)
    m += p
    r *= LN2_HI
    r += m                                           # log u1
    r *= -2.0
    np.sqrt(r, out=r)
    # 2 pi u2 = q pi/2 + a with a = (4 u2 - q) PIO2: S = sin a in s, C = cos a in p
    np.multiply(u2, 4.0, out=m)                      # exact
    np.rint(m, out=t)                                # q in {0, 1, 2, 3, 4}
    m -= t                                           # exact
    m *= PIO2                                        # a
    np.multiply(m, m, out=z)
    horner(z, SIN_C, out=s)
    s *= m
    horner(z, COS_C, out=p)
    # quadrant q mod 4: (cos, sin) = (C, S), (-S, C), (-C, -S), (S, -C)
    odd, neg_cos, neg_sin = m.view(np.bool_).reshape(8, B)[:3]
    for mask, centre, radius in ((odd, 2.0, 1.0), (neg_cos, 1.5, 0.5), (neg_sin, 2.5, 0.5)):
        np.subtract(t, centre, out=z)                # odd: q = 1, 3; neg_cos: q = 1, 2;
        np.abs(z, out=z)                             # neg_sin: q = 2, 3 (q = 4 is 0)
        np.equal(z, radius, out=mask)
    np.copyto(z, p)
    np.copyto(z, s, where=odd)                       # |cos| part: S in odd quadrants
    np.copyto(s, p, where=odd)                       # |sin| part: C in odd quadrants
    np.negative(z, out=z, where=neg_cos)
    np.negative(s, out=s, where=neg_sin)
    if out is None:
        out = np.empty(2 * B, dtype=np.float64)
    half = out.shape[0] // 2                         # how many sines are kept
    np.multiply(r, z, out=out[0::2])
    np.multiply(r[:half], s[:half], out=out[1::2])
    return out


# --------------------------------------------------------------------------------------------
# CUDA: the same generator and transforms. Every kernel takes the stream's key by value and
# reads the 64-bit draw counter d = (d_lo, d_hi) from device memory; block j of the draw uses
# counter (j_lo, j_hi, d_lo, d_hi) whatever the launch geometry (grid-stride loop). A launch fills
# values first .. first + n - 1 of the draw (a rank's rows: random.Stream.rows).
# philox_advance increments d on the device, so a replayed CUDA graph advances the stream.
# --------------------------------------------------------------------------------------------
def _c_horner(var, z, coeffs):
    """C statements that compute ``horner(z, coeffs)`` into a new double ``var``, in its order."""
    lines = [f"double {var} = {z} * {coeffs[-1]!r};"]
    for c in coeffs[-2:0:-1]:
        lines.append(f"{var} = {var} + {c!r}; {var} = {var} * {z};")
    lines.append(f"{var} = {var} + {coeffs[0]!r};")
    return "\n    ".join(lines)


# ``box_muller``'s arithmetic for one pair, operation for operation (module docstring).
_NORMAL_PAIR_C = f"""
__device__ __forceinline__ void normal_pair(double u1, double u2, double *n1, double *n2) {{
    int e;
    double m = frexp(u1, &e);
    if (m < {SQRT_HALF!r}) {{ m = m * 2.0; e = e - 1; }}
    const double ef = (double)e;
    const double f = m - 1.0;
    double s = f / (f + 2.0);
    const double z = s * s;
    {_c_horner("p", "z", LOG_C)}
    s = s + s;
    p = p * s;
    double r = ef * {LN2_HI!r} + (ef * {LN2_LO!r} + p);
    r = sqrt(r * -2.0);
    const double y = u2 * 4.0;
    const double q = rint(y);
    const double a = (y - q) * {PIO2!r};
    const double za = a * a;
    {_c_horner("sa", "za", SIN_C)}
    sa = sa * a;
    {_c_horner("ca", "za", COS_C)}
    const int k = (int)q & 3;
    double c = (k & 1) ? sa : ca;
    double sn = (k & 1) ? ca : sa;
    if (k == 1 || k == 2) c = -c;
    if (k >= 2) sn = -sn;
    *n1 = r * c;
    *n2 = r * sn;
}}"""

PHILOX_DEVICE_SRC = r"""
#define PHILOX_M0 0xD2511F53u
#define PHILOX_M1 0xCD9E8D57u
#define PHILOX_W0 0x9E3779B9u
#define PHILOX_W1 0xBB67AE85u

typedef unsigned int u32;
typedef unsigned long long u64;

__device__ __forceinline__ void philox4x32_10(u32 c[4], u32 k0, u32 k1) {
#pragma unroll
    for (int r = 0; r < 10; ++r) {
        if (r > 0) { k0 += PHILOX_W0; k1 += PHILOX_W1; }
        const u32 hi0 = __umulhi(PHILOX_M0, c[0]);
        const u32 lo0 = PHILOX_M0 * c[0];
        const u32 hi1 = __umulhi(PHILOX_M1, c[2]);
        const u32 lo1 = PHILOX_M1 * c[2];
        c[0] = hi1 ^ c[1] ^ k0;
        c[1] = lo1;
        c[2] = hi0 ^ c[3] ^ k1;
        c[3] = lo0;
    }
}

__device__ __forceinline__ void philox_block(u64 j, u32 k0, u32 k1, u32 d_lo, u32 d_hi, u32 w[4]) {
    w[0] = (u32)j;
    w[1] = (u32)(j >> 32);
    w[2] = d_lo;
    w[3] = d_hi;
    philox4x32_10(w, k0, k1);
}

/* ((u >> 8) | 1) * 2^-24: exact, in (0, 1). */
__device__ __forceinline__ float uniform24(u32 u) {
    return (float)((u >> 8) | 1u) * (1.0f / 16777216.0f);
}

/* v = b * 2^32 + a; ((v >> 11) | 1) * 2^-53: exact, in (0, 1). */
__device__ __forceinline__ double uniform53(u32 a, u32 b) {
    const u64 v = ((u64)b << 32) | a;
    return (double)((v >> 11) | 1ull) * (1.0 / 9007199254740992.0);
}

/* Box-Muller from correctly rounded operations only; generated from philox.py's constants. */
""" + _NORMAL_PAIR_C + r"""

__device__ __forceinline__ void box_muller(const u32 w[4], double *n1, double *n2) {
    normal_pair(uniform53(w[0], w[1]), uniform53(w[2], w[3]), n1, n2);
}

"""

PHILOX_CUDA_SRC = PHILOX_DEVICE_SRC + r"""
#define GRID_STRIDE_BLOCKS(B) \
    for (u64 j = (u64)blockIdx.x * blockDim.x + threadIdx.x; j < (B); \
         j += (u64)gridDim.x * blockDim.x)

/* Fill out[0 .. n) with values first .. first + n - 1 of the draw: F turns block j's four words
   into F::K values (four uniforms or words, or a pair of float64 values), values K j .. K j + K - 1
   of the draw; the first and the last block may be cut (a row that starts inside a block). Each
   value is converted to T (double to float: to nearest even, as NumPy's astype). */
template <typename T, typename F>
__device__ __forceinline__ void philox_fill(u32 k0, u32 k1, const u32 *d, T *out, u64 n, u64 first, F f) {
    const u32 d_lo = d[0], d_hi = d[1];
    const u64 b0 = first / F::K;
    const u64 B = (first + n + F::K - 1) / F::K - b0;
    GRID_STRIDE_BLOCKS(B) {
        u32 w[4];
        typename F::V v[F::K];
        philox_block(b0 + j, k0, k1, d_lo, d_hi, w);
        f(w, v);
        const u64 i = F::K * (b0 + j);
        for (int t = 0; t < F::K; ++t)
            if (i + t >= first && i + t < first + n) out[i + t - first] = (T)v[t];
    }
}

struct raw_words {
    enum { K = 4 };
    typedef u32 V;
    __device__ void operator()(const u32 *w, u32 *v) const { for (int t = 0; t < 4; ++t) v[t] = w[t]; }
};
struct uniform24_words {
    enum { K = 4 };
    typedef float V;
    __device__ void operator()(const u32 *w, float *v) const { for (int t = 0; t < 4; ++t) v[t] = uniform24(w[t]); }
};
struct uniform53_pair {
    enum { K = 2 };
    typedef double V;
    __device__ void operator()(const u32 *w, double *v) const {
        v[0] = uniform53(w[0], w[1]);
        v[1] = uniform53(w[2], w[3]);
    }
};
struct normal_words {
    enum { K = 2 };
    typedef double V;
    __device__ void operator()(const u32 *w, double *v) const { box_muller(w, &v[0], &v[1]); }
};

extern "C" __global__ void philox_uint32(u32 k0, u32 k1, const u32 *d, u32 *out, u64 n, u64 first) {
    philox_fill(k0, k1, d, out, n, first, raw_words());
}

extern "C" __global__ void philox_uniform_f32(u32 k0, u32 k1, const u32 *d, float *out, u64 n, u64 first) {
    philox_fill(k0, k1, d, out, n, first, uniform24_words());
}

extern "C" __global__ void philox_uniform_f64(u32 k0, u32 k1, const u32 *d, double *out, u64 n, u64 first) {
    philox_fill(k0, k1, d, out, n, first, uniform53_pair());
}

extern "C" __global__ void philox_normal_f32(u32 k0, u32 k1, const u32 *d, float *out, u64 n, u64 first) {
    philox_fill(k0, k1, d, out, n, first, normal_words());
}

extern "C" __global__ void philox_normal_f64(u32 k0, u32 k1, const u32 *d, double *out, u64 n, u64 first) {
    philox_fill(k0, k1, d, out, n, first, normal_words());
}

/* Plain Philox4x32-10 of n_blocks arbitrary counters (n_blocks x 4) under keys (n_blocks x 2):
   the known-answer check of the device code. */
extern "C" __global__ void philox4x32_10_blocks(const u32 *ctr, const u32 *key, u32 *out,
                                                u64 n_blocks) {
    GRID_STRIDE_BLOCKS(n_blocks) {
        u32 w[4] = {ctr[4 * j], ctr[4 * j + 1], ctr[4 * j + 2], ctr[4 * j + 3]};
        philox4x32_10(w, key[2 * j], key[2 * j + 1]);
        for (int t = 0; t < 4; ++t) out[4 * j + t] = w[t];
    }
}

/* d += 1 (64-bit, carry from d_lo into d_hi); launch with one thread. */
extern "C" __global__ void philox_advance(u32 *d) {
    if (blockIdx.x == 0 && threadIdx.x == 0) {
        const u64 v = ((u64)d[1] << 32 | d[0]) + 1ull;
        d[0] = (u32)v;
        d[1] = (u32)(v >> 32);
    }
}
"""

CUDA_KERNELS = ("philox_uint32", "philox_uniform_f32", "philox_uniform_f64",
                "philox_normal_f32", "philox_normal_f64", "philox_advance",
                "philox4x32_10_blocks")
CUDA_OPTIONS = ("--fmad=false",)

_cuda_kernels = {}


def cuda_kernel(name):
    """The kernel ``name`` (one of ``CUDA_KERNELS``) of ``PHILOX_CUDA_SRC`` as a ``cupy.RawKernel``.

    Imports cupy on first use. CuPy compiles the source on the first launch on each device
    (and caches the binary), so do one eager draw before capturing a CUDA graph.
    """
    kernel = _cuda_kernels.get(name)
    if kernel is None:
        if name not in CUDA_KERNELS:
            raise InputError(f"kernel must be one of {CUDA_KERNELS}, got {name!r}")
        import cupy

        kernel = cupy.RawKernel(PHILOX_CUDA_SRC, name, options=CUDA_OPTIONS)
        _cuda_kernels[name] = kernel
    return kernel
