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

Transforms (all exact except where marked)
------------------------------------------
* ``float32`` uniform from one word ``u``: ``((u >> 8) | 1) * 2**-24``. The integer
  ``(u >> 8) | 1 = 2 * (u >> 9) + 1 < 2**24`` converts to float32 exactly and the power-of-two
  scaling is exact, so the values are the 2**23 odd multiples of 2**-24, in
  ``[2**-24, 1 - 2**-24]``: never 0, never 1. (The 24-bit form ``((u >> 8) + 0.5) * 2**-24``
  would need 25 significant bits and round ``1 - 2**-25`` up to 1.0 in float32.)
* ``float64`` uniform from two words ``a, b``: ``v = b * 2**32 + a``,
  ``u = ((v >> 11) | 1) * 2**-53`` (the top 52 bits of v, then a 1 bit); exact for the same
  reason, in ``[2**-53, 1 - 2**-53]``.
* normals (Box-Muller, always in float64): from one block ``(w0, w1, w2, w3)`` take
  ``u1 = uniform53(w0, w1)``, ``u2 = uniform53(w2, w3)``, then ``r = sqrt(-2 * log(u1))``,
  ``t = 2pi * u2`` (``2pi`` is the float64 nearest to 2 pi), ``n1 = r * cos(t)``,
  ``n2 = r * sin(t)``; each block gives two normals, in that order. Float32 normals are the
  float64 ones rounded to nearest-even. Multiplications are single IEEE roundings (the CUDA
  source is compiled with ``--fmad=false`` so none is fused into an FMA) and ``sqrt`` is
  correctly rounded on both backends, but ``log``, ``cos`` and ``sin`` are not: NumPy (its
  SIMD loops or the C library) and CUDA's libdevice may differ by 1-2 ulp in float64. So
  float64 normals may differ by a few float64 ulps between backends, while float32 normals
  almost always agree bit for bit (at most 1 float32 ulp, when a float64 result lies within a
  few ulps of a float32 rounding boundary). ``|n| < 8.58`` always, since ``u1 >= 2**-53``.
"""

import numpy as np

from scratchvae.errors import InputError

PHILOX_M0 = 0xD2511F53
PHILOX_M1 = 0xCD9E8D57
PHILOX_W0 = 0x9E3779B9
PHILOX_W1 = 0xBB67AE85

TWO_PI = 6.283185307179586  # float64 nearest to 2*pi, 0x401921FB54442D18; == 2 * math.pi
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


def uniform24(u, out=None):
    """Float32 uniforms in (0, 1), one per word ``u`` (< 2**32): ``((u >> 8) | 1) * 2**-24``.

    ``(u >> 8) | 1 = 2 * (u >> 9) + 1`` is odd and below 2**24, so its float32 conversion and
    the power-of-two scaling are exact: 2**23 values in ``[2**-24, 1 - 2**-24]``.
    """
    u = np.asarray(u)
    odd = np.right_shift(u, 8, dtype=u.dtype)
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


def box_muller(u1, u2, out=None, work=None):
    """Interleaved normals: ``out[2j] = r_j cos t_j``, ``out[2j+1] = r_j sin t_j``.

    ``r = sqrt(-2 log u1)``, ``t = TWO_PI * u2``, all in float64; u1, u2: float64 (B,) in
    (0, 1). ``out``: a flat array of 2B - 1 or 2B values (the last sine is dropped when odd),
    float64 or float32 (each product rounded once to it); default a new float64 (2B,).
    work: optional float64 (3, B) scratch.
    """
    if work is None:
        work = np.empty((3,) + u1.shape, dtype=np.float64)
    r, theta, trig = work
    np.log(u1, out=r)
    r *= -2.0
    np.sqrt(r, out=r)
    np.multiply(u2, TWO_PI, out=theta)
    if out is None:
        out = np.empty(2 * r.shape[0], dtype=np.float64)
    half = out.shape[0] // 2                  # how many sines are kept
    np.cos(theta, out=trig)
    np.multiply(trig, r, out=out[0::2])
    np.sin(theta[:half], out=trig[:half])
    np.multiply(trig[:half], r[:half], out=out[1::2])
    return out


# --------------------------------------------------------------------------------------------
# CUDA: the same generator and transforms. Every kernel takes the stream's key by value and
# reads the 64-bit draw counter d = (d_lo, d_hi) from device memory; block j of the draw uses
# counter (j_lo, j_hi, d_lo, d_hi) whatever the launch geometry (grid-stride loop).
# philox_advance increments d on the device, so a replayed CUDA graph advances the stream.
# --------------------------------------------------------------------------------------------
PHILOX_CUDA_SRC = r"""
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

/* Box-Muller in double precision with the accurate log/sqrt/cos/sin (not the intrinsics). */
__device__ __forceinline__ void box_muller(const u32 w[4], double *n1, double *n2) {
    const double u1 = uniform53(w[0], w[1]);
    const double theta = 6.283185307179586476925286766559 * uniform53(w[2], w[3]);
    const double r = sqrt(-2.0 * log(u1));
    *n1 = r * cos(theta);
    *n2 = r * sin(theta);
}

#define GRID_STRIDE_BLOCKS(B) \
    for (u64 j = (u64)blockIdx.x * blockDim.x + threadIdx.x; j < (B); \
         j += (u64)gridDim.x * blockDim.x)

extern "C" __global__ void philox_uint32(u32 k0, u32 k1, const u32 *d, u32 *out, u64 n) {
    const u32 d_lo = d[0], d_hi = d[1];
    const u64 B = (n + 3) / 4;
    GRID_STRIDE_BLOCKS(B) {
        u32 w[4];
        philox_block(j, k0, k1, d_lo, d_hi, w);
        const u64 i = 4 * j;
        for (int t = 0; t < 4; ++t) if (i + t < n) out[i + t] = w[t];
    }
}

extern "C" __global__ void philox_uniform_f32(u32 k0, u32 k1, const u32 *d, float *out, u64 n) {
    const u32 d_lo = d[0], d_hi = d[1];
    const u64 B = (n + 3) / 4;
    GRID_STRIDE_BLOCKS(B) {
        u32 w[4];
        philox_block(j, k0, k1, d_lo, d_hi, w);
        const u64 i = 4 * j;
        for (int t = 0; t < 4; ++t) if (i + t < n) out[i + t] = uniform24(w[t]);
    }
}

extern "C" __global__ void philox_uniform_f64(u32 k0, u32 k1, const u32 *d, double *out, u64 n) {
    const u32 d_lo = d[0], d_hi = d[1];
    const u64 B = (n + 1) / 2;
    GRID_STRIDE_BLOCKS(B) {
        u32 w[4];
        philox_block(j, k0, k1, d_lo, d_hi, w);
        const u64 i = 2 * j;
        out[i] = uniform53(w[0], w[1]);
        if (i + 1 < n) out[i + 1] = uniform53(w[2], w[3]);
    }
}

extern "C" __global__ void philox_normal_f32(u32 k0, u32 k1, const u32 *d, float *out, u64 n) {
    const u32 d_lo = d[0], d_hi = d[1];
    const u64 B = (n + 1) / 2;
    GRID_STRIDE_BLOCKS(B) {
        u32 w[4];
        double n1, n2;
        philox_block(j, k0, k1, d_lo, d_hi, w);
        box_muller(w, &n1, &n2);
        const u64 i = 2 * j;
        out[i] = (float)n1;  /* round to nearest even, as NumPy's astype */
        if (i + 1 < n) out[i + 1] = (float)n2;
    }
}

extern "C" __global__ void philox_normal_f64(u32 k0, u32 k1, const u32 *d, double *out, u64 n) {
    const u32 d_lo = d[0], d_hi = d[1];
    const u64 B = (n + 1) / 2;
    GRID_STRIDE_BLOCKS(B) {
        u32 w[4];
        double n1, n2;
        philox_block(j, k0, k1, d_lo, d_hi, w);
        box_muller(w, &n1, &n2);
        const u64 i = 2 * j;
        out[i] = n1;
        if (i + 1 < n) out[i + 1] = n2;
    }
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
