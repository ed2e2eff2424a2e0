"""softplus(z) = max(z, 0) + log1p(e^{−|z|}): its accuracy, its edges, in place.

The NumPy body is measured against numpy.logaddexp one precision up (float64 for float32,
long double for float64, where it is wider); the float32 Numba twin's bound is in
``tests/test_numba_twins.py``.
"""

import numpy as np
import pytest

from scratchvae import ops

BODY = ops.softplus.body
BOUND = {np.float32: 3.2, np.float64: 1.7}
"""ulp of the exact value. Measured: float32 3.08 over every 16th float32 in [−120, 100] and
3.14 at a random −2.046; float64 1.66 over 12 million normal draws of six scales."""


def every(stride, lo, hi):
    """Every ``stride``-th float32 in [lo, 0) and [0, hi] (by bit pattern)."""
    def patterns(b):
        return np.arange(0, np.float32(b).view(np.uint32), stride, dtype=np.uint32).view(np.float32)
    return np.concatenate([-patterns(-lo)[1:], patterns(hi)])


def ulps(got, exact, dtype):
    r = exact.astype(dtype)
    return np.abs(got.astype(exact.dtype) - exact) / np.spacing(np.abs(r)).astype(exact.dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_body_within_its_ulp_bound(dtype):
    wider = np.float64 if dtype == np.float32 else np.longdouble
    if np.finfo(wider).nmant <= np.finfo(dtype).nmant:
        pytest.skip("long double is double here: no wider reference")
    r = np.random.default_rng(3)
    z = np.concatenate([r.standard_normal(100_000) * s for s in (1e-3, 0.1, 1, 4, 20, 100)])
    if dtype == np.float32:
        z = np.concatenate([z, every(4093, -120.0, 100.0)])
    z = z.astype(dtype)
    err = ulps(BODY(z), np.logaddexp(z.astype(wider), wider(0)), dtype)
    assert err.max() <= BOUND[dtype], f"z = {z[np.argmax(err)]!r}: {err.max():.3f} ulp"
    assert err.max() > 0.5                     # the bound is the formula's, not a correctly rounded one


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_edges(dtype):
    big = np.finfo(dtype).max
    z = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, big, -big, 1e-30, -1e-30, 30.0, -30.0], dtype)
    with np.errstate(invalid="ignore"):          # logaddexp's NaN warns; softplus's does not
        want = np.logaddexp(z, dtype(0))
    for got in (BODY(z), ops.softplus(z)):
        assert got.dtype == dtype
        np.testing.assert_array_equal(got[:7], want[:7])      # log 2 twice, inf, 0, NaN, big, 0
        np.testing.assert_allclose(got[7:], want[7:], rtol=4 * np.finfo(dtype).eps, atol=0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_in_place_gives_the_same_values(dtype):
    z = (np.random.default_rng(4).standard_normal((7, 9)) * 10).astype(dtype)
    want = ops.softplus(z)
    for fn in (BODY, ops.softplus):
        a = z.copy()
        assert fn(a, out=a) is a
        np.testing.assert_array_equal(a, want if fn is ops.softplus else BODY(z))
