"""bfloat16 words (scratchvae/ops/bf16.py) and the bf16 product, bit for bit where a CPU can tell.

The NumPy conversion is checked against an independent rounding (distances in float64, not the
bit trick it uses) over every upper half of a float32 with the rounding's edge cases below it,
against hand-worked words, against ml_dtypes where installed; the CUDA kernels, compiled for
the host (tests/_cuda_host.py), against the NumPy bodies bit for bit. The NumPy bf16 product
is the product of the words' exact values, accumulated in float32.
"""

import numpy as np
import pytest

from scratchvae.errors import InputError
from scratchvae.ops.bf16 import from_bf16, to_bf16
from scratchvae.ops.dense import matmul

from _cuda_host import host_kernels

EDGES = np.array([0x0000, 0x0001, 0x7FFF, 0x8000, 0x8001, 0xFFFF], dtype=np.uint32)
"""Lower halves of a float32 where rounding to bfloat16 turns: exact, just above, just below
half, the tie, just above it, the largest."""


def words_with_lower(lower):
    """Every upper half 0..0xFFFF with ``lower`` (an int or an array of 65536) below it, as float32."""
    upper = np.arange(1 << 16, dtype=np.uint32) << np.uint32(16)
    return (upper | np.asarray(lower, dtype=np.uint32)).view(np.float32)


def rne_reference(x):
    """float32 -> bfloat16 words by distances in float64 (not the bit trick under test): the
    nearer of the truncation toward zero and the next bfloat16 away from it, the even one on a
    tie; beyond the largest finite bfloat16 the next one is ±2^128 (so overflow gives ±inf);
    a NaN keeps its upper half with the quiet bit set."""
    u = x.view(np.uint32)
    h = u >> np.uint32(16)
    with np.errstate(invalid="ignore"):                  # signalling NaNs among the inputs
        lo = (h << np.uint32(16)).view(np.float32).astype(np.float64)
        hi = ((h + np.uint32(1)) << np.uint32(16)).view(np.float32).astype(np.float64)
        hi = np.where(np.isinf(hi), np.copysign(2.0 ** 128, lo), hi)
        x64 = x.astype(np.float64)
        d_lo, d_hi = np.abs(x64 - lo), np.abs(hi - x64)
        up = (d_hi < d_lo) | ((d_hi == d_lo) & (h % 2 == 1))
        nan = np.isnan(x)
    words = np.where(nan, h | np.uint32(0x40), np.where(up, h + np.uint32(1), h))
    return words.astype(np.uint16)


# -- the conversions -----------------------------------------------------------------------------
def test_to_bf16_rounds_to_nearest_even_at_every_edge_of_every_upper_half():
    for lower in EDGES:
        x = words_with_lower(lower)
        np.testing.assert_array_equal(to_bf16(x), rne_reference(x), err_msg=f"lower half {lower:#06x}")
    x = words_with_lower(np.random.default_rng(0).integers(0, 1 << 16, 1 << 16))
    np.testing.assert_array_equal(to_bf16(x), rne_reference(x))


def test_to_bf16_worked_examples():
    """Hand-checked words: ties to even, overflow to inf, signs, subnormals, NaN quieted."""
    bits = np.array([0x3F808000, 0x3F818000, 0x3F808001, 0x3F807FFF, 0x7F7FFFFF, 0x7F7F7FFF, 0xFF7FFFFF,
                     0x80000001, 0x00008000, 0x00018000, 0x7F800000, 0x7F800001, 0xFFC00000],
                    dtype=np.uint32)
    want = [0x3F80, 0x3F82, 0x3F81, 0x3F80, 0x7F80, 0x7F7F, 0xFF80,
            0x8000, 0x0000, 0x0002, 0x7F80, 0x7FC0, 0xFFC0]
    assert to_bf16(bits.view(np.float32)).tolist() == want


def test_from_bf16_is_exact_and_to_bf16_keeps_every_bfloat16():
    words = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    x = from_bf16(words)
    np.testing.assert_array_equal(x.view(np.uint32), words.astype(np.uint32) << np.uint32(16))
    ok = ~np.isnan(x)
    np.testing.assert_array_equal(to_bf16(x)[ok], words[ok])
    assert ((to_bf16(x)[~ok] & 0x40) == 0x40).all()


def test_to_bf16_matches_ml_dtypes_where_installed():
    ml_dtypes = pytest.importorskip("ml_dtypes")
    for lower in EDGES:
        x = words_with_lower(lower)
        finite = ~np.isnan(x)
        np.testing.assert_array_equal(to_bf16(x)[finite], x[finite].astype(ml_dtypes.bfloat16).view(np.uint16))


def test_conversions_refuse_wrong_dtypes_and_outs():
    with pytest.raises(InputError, match="to_bf16: x must be float32, got float64"):
        to_bf16(np.zeros(3))
    with pytest.raises(InputError, match="from_bf16: x16 must be uint16"):
        from_bf16(np.zeros(3, np.float32))
    with pytest.raises(InputError, match=r"to_bf16: out must be a C-contiguous uint16 array of shape \(3,\)"):
        to_bf16(np.zeros(3, np.float32), out=np.zeros(3, np.float32))


@pytest.fixture(scope="module")
def hk():
    return host_kernels()


def test_cuda_conversions_give_the_numpy_bodies_bits(hk):
    """Every upper half: half of them (of both parities) with the tie below, the others with an
    edge or a random lower half; back, every bfloat16 word."""
    rng = np.random.default_rng(1)
    upper = np.arange(1 << 16)
    other = np.where(rng.random(1 << 16) < 0.5, rng.choice(EDGES, 1 << 16), rng.integers(0, 1 << 16, 1 << 16))
    x = words_with_lower(np.where((upper >> 1) % 2 == 0, 0x8000, other)).reshape(-1, 64)
    got = to_bf16.call_kernel(hk.get("to_bf16"), x)
    assert got.dtype == np.uint16 and got.shape == x.shape
    np.testing.assert_array_equal(got, to_bf16(x))
    words = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).reshape(-1, 64)
    out = np.empty(words.shape, np.float32)
    back = from_bf16.call_kernel(hk.get("from_bf16"), words, out=out)
    assert back is out
    np.testing.assert_array_equal(back.view(np.uint32), from_bf16(words).view(np.uint32))
    t = np.ascontiguousarray(x[:3].T)                     # a view that is not contiguous is copied first
    np.testing.assert_array_equal(to_bf16.call_kernel(hk.get("to_bf16"), x[:3].T), to_bf16(t))
    with pytest.raises(InputError, match="to_bf16: out must be a C-contiguous uint16"):
        to_bf16.call_kernel(hk.get("to_bf16"), x, out=np.empty(x.shape, np.float32))


# -- the products ----------------------------------------------------------------------------------
def test_the_bf16_product_is_the_product_of_the_words_values():
    r = np.random.default_rng(2)
    a, b = r.standard_normal((5, 7)).astype(np.float32), r.standard_normal((7, 3)).astype(np.float32)
    a16, b16 = to_bf16(a), to_bf16(b)
    got = matmul(a16, b16, precision="bf16")
    assert got.dtype == np.float32
    want = from_bf16(a16).astype(np.float64) @ from_bf16(b16).astype(np.float64)
    assert np.abs(got - want).max() <= 1e-6 * np.abs(want).max()
    assert np.abs(got - a.astype(np.float64) @ b).max() > 1e-4        # the rounding is there
    with pytest.raises(InputError, match="precision bf16 takes bfloat16 words"):
        matmul(a, b, precision="bf16")
    with pytest.raises(InputError, match="precision tf32 takes float32 operands"):
        matmul(a.astype(np.float64), b, precision="tf32")
    with pytest.raises(InputError, match="precision must be one of fp32, tf32, bf16, got 'fp16'"):
        matmul(a, b, precision="fp16")
