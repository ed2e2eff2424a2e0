"""Philox4x32-10 against its published known answers, a scalar reference, and hand arithmetic;
the uniform and normal transforms against their exact integer formulas."""

import math
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scratchvae.backend import philox
from scratchvae.backend.philox import (PHILOX_CUDA_SRC, PHILOX_M0, PHILOX_M1, PHILOX_W0,
                                       PHILOX_W1, box_muller, philox4x32, uniform24, uniform53)
from scratchvae.errors import InputError

# Known-answer vectors for Philox4x32-10 from the Random123 distribution's `kat_vectors`
# (Salmon et al., SC'11), as copied into DEShawResearch/Random123-Boost,
# libs/random/test/test_philox.cpp, test_kat_philox4x32 ("cut-and-pasted from the kat_vectors
# file in the original Random123 distribution"): counter words, key words, expected words.
KAT = [
    ((0x00000000, 0x00000000, 0x00000000, 0x00000000), (0x00000000, 0x00000000),
     (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF), (0xFFFFFFFF, 0xFFFFFFFF),
     (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]

u32s = st.integers(0, 2**32 - 1)


def reference_philox(counter, key, rounds=10):
    """Philox4x32 on Python ints, written straight from the paper's round function."""
    c0, c1, c2, c3 = counter
    k0, k1 = key
    for r in range(rounds):
        if r:
            k0, k1 = (k0 + PHILOX_W0) % 2**32, (k1 + PHILOX_W1) % 2**32
        p0, p1 = PHILOX_M0 * c0, PHILOX_M1 * c2
        c0, c1, c2, c3 = (p1 >> 32) ^ c1 ^ k0, p1 % 2**32, (p0 >> 32) ^ c3 ^ k1, p0 % 2**32
    return c0, c1, c2, c3


def u32(values):
    return np.array(values, dtype=np.uint32)


@pytest.mark.parametrize("counter, key, expected", KAT)
def test_known_answers(counter, key, expected):
    assert philox4x32(u32(counter), u32(key)).tolist() == list(expected)
    assert reference_philox(counter, key) == expected


def test_known_answers_batched_with_per_row_keys():
    counters = u32([c for c, _, _ in KAT])
    keys = u32([k for _, k, _ in KAT])
    expected = [list(e) for _, _, e in KAT]
    assert philox4x32(counters, keys).tolist() == expected
    # leading axes broadcast: one key for a (2, 3) grid of counters, and keys (2, 1, 2)
    grid = np.broadcast_to(counters, (2, 3, 4))
    out = philox4x32(grid, u32(KAT[2][1]))
    assert out.shape == (2, 3, 4) and out[1, 2].tolist() == expected[2]
    out = philox4x32(counters, np.broadcast_to(keys[:, None, :], (3, 1, 2)))
    assert out.shape == (3, 3, 4)
    assert [out[i, i].tolist() for i in range(3)] == expected


def test_one_and_two_rounds_by_hand():
    zero = u32([0, 0])
    # counter (1, 0, 0, 0): p0 = M0 * 1 -> hi 0, lo M0; p1 = 0 -> (0, 0, 0, M0)
    assert philox4x32(u32([1, 0, 0, 0]), zero, rounds=1).tolist() == [0, 0, 0, 0xD2511F53]
    # counter (2**32 - 1, 0, 0, 0): M0 * (2**32 - 1) = (M0 - 1) * 2**32 + (2**32 - M0)
    assert philox4x32(u32([0xFFFFFFFF, 0, 0, 0]), zero, rounds=1).tolist() == \
        [0, 0, 0xD2511F52, 0x2DAEE0AD]
    # c2 goes through M1 and lands in words 0 (hi) and 1 (lo); c1, c3 and the key are XORed
    # in: M1 * 2 = 0x1_9B3D1AAE
    assert philox4x32(u32([0, 0x10, 2, 0x20]), u32([0x100, 0x200]), rounds=1).tolist() == \
        [0x1 ^ 0x10 ^ 0x100, 0x9B3D1AAE, 0x20 ^ 0x200, 0]
    # the key is bumped before round 2, not round 1: zero in, zero key -> (W0, 0, W1, 0)
    assert philox4x32(u32([0, 0, 0, 0]), zero, rounds=2).tolist() == \
        [0x9E3779B9, 0, 0xBB67AE85, 0]
    assert philox4x32(u32([5, 6, 7, 8]), zero, rounds=0).tolist() == [5, 6, 7, 8]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.tuples(u32s, u32s, u32s, u32s), st.tuples(u32s, u32s)),
                min_size=1, max_size=8),
       st.integers(0, 12))
def test_vectorised_matches_scalar_reference(rows, rounds):
    counters = u32([c for c, _ in rows])
    keys = u32([k for _, k in rows])
    got = philox4x32(counters, keys, rounds=rounds).tolist()
    assert got == [list(reference_philox(c, k, rounds)) for c, k in rows]


@pytest.mark.parametrize("counter, key", [
    (np.zeros(4, dtype=np.int64), u32([0, 0])),        # dtype
    (np.zeros(3, dtype=np.uint32), u32([0, 0])),       # last axis
    (u32([0, 0, 0, 0]), u32([0, 0, 0])),
    (u32([0, 0, 0, 0]), np.zeros(2, dtype=np.uint64)),
])
def test_bad_arguments_say_what_was_expected(counter, key):
    with pytest.raises(InputError, match="must be a uint32 array of shape"):
        philox4x32(counter, key)
    with pytest.raises(InputError, match="rounds must be an int >= 0, got -1"):
        philox4x32(u32([0, 0, 0, 0]), u32([0, 0]), rounds=-1)


def test_uniform24_is_exact_and_strictly_inside_unit_interval():
    words = u32([0, 0xFF, 0x100, 0x1FF, 0x12345678, 0xFFFFFEFF, 0xFFFFFFFF])
    got = uniform24(words)
    assert got.dtype == np.float32
    expected = [((int(w) >> 8) | 1) * 2.0**-24 for w in words]   # exact in float64
    assert got.astype(np.float64).tolist() == expected
    assert got[0] == np.float32(2.0**-24) and got[-1] == np.float32(1 - 2.0**-24) < 1
    # every one of the 2**24 possible values of u >> 8 lands strictly inside (0, 1)
    every = uniform24((np.arange(2**24, dtype=np.uint32) << np.uint32(8)))
    assert every.min() > 0 and every.max() < 1
    assert np.all(every[0::2] == every[1::2]) and np.all(np.diff(every[0::2]) > 0)  # 2**23 values


def test_uniform53_is_exact_and_strictly_inside_unit_interval():
    rng = np.random.default_rng(0)
    a = np.concatenate([u32([0, 0xFFFFFFFF, 0xFFF, 0x1000]), rng.integers(0, 2**32, 50, np.uint32)])
    b = np.concatenate([u32([0, 0xFFFFFFFF, 0, 0]), rng.integers(0, 2**32, 50, np.uint32)])
    got = uniform53(a, b)
    assert got.dtype == np.float64
    expected = [((((int(hi) << 32) | int(lo)) >> 11) | 1) * 2.0**-53 for lo, hi in zip(a, b)]
    assert got.tolist() == expected  # int -> float and * 2**-53 are exact for ints < 2**53
    assert got[0] == 2.0**-53 and got[1] == 1 - 2.0**-53 < 1
    assert got[2] == 2.0**-53 and got[3] == 3 * 2.0**-53  # v's top 52 bits count, bits 0..11 do not


def test_box_muller_matches_the_formula_in_libm():
    u1 = np.array([2.0**-53, 1e-300 + 2.0**-40, 0.25, 0.5, 1 - 2.0**-53, 0.9, 0.7071067811865476])
    u2 = np.array([0.0 + 2.0**-53, 0.125, 0.25, 0.6, 0.75, 1 - 2.0**-53, 0.375])
    got = box_muller(u1, u2)
    assert got.shape == (14,) and got.dtype == np.float64
    for n1, n2, a, b in zip(got[0::2], got[1::2], u1, u2):
        r = math.sqrt(-2.0 * math.log(a))
        t = 2 * math.pi * b
        assert n1 == pytest.approx(r * math.cos(t), rel=1e-14, abs=1e-14)
        assert n2 == pytest.approx(r * math.sin(t), rel=1e-14, abs=1e-14)
    # an odd float32 out drops the last sine and rounds each float64 product once
    odd = box_muller(u1, u2, out=np.empty(13, np.float32))
    np.testing.assert_array_equal(odd, got[:13].astype(np.float32))
    assert abs(got).max() < 8.58  # the largest |n|: sqrt(-2 log 2**-53) = 8.5717...
    # quarter turns are exact: cos(pi/2) is 0, not 6e-17 as with a rounded 2 pi u2
    quarter = box_muller(np.array([math.exp(-0.5)] * 4), np.array([0.25, 0.5, 0.75, 0.125]))
    r = quarter[1]
    assert quarter[:6].tolist() == [0.0, r, -r, 0.0, 0.0, -r] and r == pytest.approx(1, abs=1e-15)
    assert quarter[6] == pytest.approx(r * math.sqrt(0.5), rel=1e-15)


def test_box_muller_constants_are_what_the_docstring_says():
    from decimal import Decimal, getcontext

    getcontext().prec = 40
    ln2 = Decimal(2).ln()
    assert philox.LN2_HI.hex().endswith("ee00000p-1")       # 32 significant bits: e * LN2_HI exact
    assert abs(Decimal(philox.LN2_HI) + Decimal(philox.LN2_LO) - ln2) < Decimal(2) ** -80
    assert philox.PIO2 == math.pi / 2 and philox.SQRT_HALF == math.sqrt(0.5)
    assert philox.LOG_C == tuple(1 / (2 * k + 1) for k in range(11))
    # the first dropped terms are below 1e-18: s**22/23 at |s| = (sqrt 2 - 1)/(sqrt 2 + 1), and
    # a**19/19!, a**20/20! at a = pi/4
    s2 = ((math.sqrt(2) - 1) / (math.sqrt(2) + 1)) ** 2
    a2 = (math.pi / 4) ** 2
    assert s2 ** len(philox.LOG_C) / (2 * len(philox.LOG_C) + 1) < 1e-18
    assert a2 ** len(philox.SIN_C) / math.factorial(2 * len(philox.SIN_C) + 1) < 1e-18
    assert a2 ** len(philox.COS_C) / math.factorial(2 * len(philox.COS_C)) < 1e-18
    for k, (c, d) in enumerate(zip(philox.SIN_C, philox.COS_C)):
        assert c == pytest.approx((-1) ** k / math.factorial(2 * k + 1), rel=1e-16)
        assert d == pytest.approx((-1) ** k / math.factorial(2 * k), rel=1e-16)


@pytest.mark.skipif(np.finfo(np.longdouble).eps > 1e-18, reason="needs an extended long double")
def test_box_muller_is_accurate_to_a_few_ulps():
    """Against long-double libm: r within 2.5 ulps; each normal within 3 ulps of r, absolutely.

    (The old ``r cos(fl(2 pi u2))`` with libm was up to 6 off by the second measure.)
    """
    rng = np.random.default_rng(0)
    n = 200_000
    u1 = (rng.integers(0, 2**52, n) * 2 + 1) * 2.0**-53
    u2 = (rng.integers(0, 2**52, n) * 2 + 1) * 2.0**-53
    u1[:3] = [2.0**-53, 1 - 2.0**-53, 0.5]
    pi = np.longdouble("3.14159265358979323846264338327950288")
    r = np.sqrt(-2 * np.log(u1.astype(np.longdouble)))
    ulp_r = np.spacing(r.astype(np.float64))
    r_alone = box_muller(u1, np.full(n, 2.0**-53))[0::2]  # cos(2 pi 2**-53) rounds to 1
    assert np.max(np.abs(r_alone - r) / ulp_r) < 2.5
    got = box_muller(u1, u2)
    t = 2 * pi * u2.astype(np.longdouble)
    err = np.abs(np.stack([got[0::2] - r * np.cos(t), got[1::2] - r * np.sin(t)]))
    assert np.max(err / ulp_r) < 3


def test_cuda_source_names_every_kernel_and_avoids_fast_math():
    for name in philox.CUDA_KERNELS:
        assert re.search(r'extern "C" __global__ void %s\(' % name, PHILOX_CUDA_SRC), name
    assert "__umulhi" in PHILOX_CUDA_SRC
    for fast in ("__logf", "__sinf", "__cosf", "__expf", "__fsqrt", "__dmul", "sincospi",
                 "use_fast_math"):
        assert fast not in PHILOX_CUDA_SRC
    assert "--fmad=false" in philox.CUDA_OPTIONS
    for constant in ("0xD2511F53u", "0xCD9E8D57u", "0x9E3779B9u", "0xBB67AE85u"):
        assert constant in PHILOX_CUDA_SRC


def test_device_kernel_gives_the_known_answers(cp):
    rng = np.random.default_rng(1)
    counters = np.concatenate([u32([c for c, _, _ in KAT]),
                               rng.integers(0, 2**32, (997, 4), np.uint32)])
    keys = np.concatenate([u32([k for _, k, _ in KAT]),
                           rng.integers(0, 2**32, (997, 2), np.uint32)])
    out = cp.empty_like(cp.asarray(counters))
    n = counters.shape[0]
    philox.cuda_kernel("philox4x32_10_blocks")(
        (4,), (128,), (cp.asarray(counters), cp.asarray(keys), out, np.uint64(n)))
    got = out.get()
    assert got[:3].tolist() == [list(e) for _, _, e in KAT]
    np.testing.assert_array_equal(got, philox4x32(counters, keys))
