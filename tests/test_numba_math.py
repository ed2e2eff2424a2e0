"""The Numba twins' elementary functions (``scratchvae/backend/_numba_math.py``) against float64.

Each function is checked on every 251st float32 of its range (bit patterns in order, so every
binade is sampled evenly, subnormal arguments and results included) and at its edges. The
bounds, and what a run over every float32 measured (the module docstring):

* ``exp32``: ≤ 1.02 ulp of e^x for every x whose e^x is a finite nonzero float32 (all: 1.013);
* ``log1p01``: ≤ 0.91 ulp of log1p(e) in float32, e in [0, 1] (all: 0.907);
* ``expm1_d``: within 1e-13 relative of e^x − 1 for |x| ≤ 88 (all: 3.0e-14), ≤ 0.501 ulp once
  rounded to float32 (all: 0.49999994, correctly rounded).
"""

import math

import numpy as np
import pytest

pytest.importorskip("numba")

from numba import njit  # noqa: E402

from scratchvae.backend._numba_math import exp32, expm1_d, log1p01  # noqa: E402

STRIDE = 251
EXP_ULPS, LOG1P_ULPS, ROUNDED_ULPS = 1.02, 0.91, 0.501
EXPM1_REL = 1e-13


@njit(error_model="numpy")
def _map(x, out, which):
    for i in range(x.size):
        out[i] = exp32(x[i]) if which == 0 else (log1p01(x[i]) if which == 1 else expm1_d(x[i]))


def apply(which, x):
    out = np.empty(x.size, np.float32 if which in (0, 1) else np.float64)
    _map(x, out, which)
    return out


def floats(lo, hi):
    """Every STRIDE-th float32 in [lo, hi] (by bit pattern), and lo, hi themselves."""
    def patterns(a, b):               # a, b ≥ 0
        return np.arange(np.float32(a).view(np.uint32), np.float32(b).view(np.uint32), STRIDE,
                         dtype=np.uint32).view(np.float32)
    parts = [np.array([lo, hi], np.float32)]
    if hi > 0:
        parts.append(patterns(max(lo, 0.0), hi))
    if lo < 0:
        parts.append(-patterns(max(-hi, 0.0), -lo))
    return np.concatenate(parts)


def ulp32(r):
    a = np.abs(r)
    return np.where(a < 2.0**-126, 2.0**-149, np.ldexp(1.0, np.frexp(a)[1] - 24))


def test_exp32_within_its_ulp_bound():
    x = floats(-104.0, 88.72)
    with np.errstate(over="ignore"):
        want = np.exp(x.astype(np.float64))
    finite = (want > 0) & (want < float(np.finfo(np.float32).max))
    got = apply(0, x).astype(np.float64)
    err = np.abs(got - want)[finite] / ulp32(want[finite])
    assert finite.mean() > 0.99 and err.max() <= EXP_ULPS, float(x[finite][np.argmax(err)])


def test_exp32_at_its_edges():
    x = np.array([0.0, -0.0, 1.0, -1.0, 88.72, 88.73, 89.0, 1e30, np.inf, -103.0, -103.97, -104.0, -1e30,
                  -np.inf, np.nan, 2.0**-149, -(2.0**-149)], np.float32)
    got = apply(0, x)
    assert got[0] == got[1] == 1.0 and got[2] == np.float32(math.e)
    assert np.all(np.isposinf(got[[5, 6, 7, 8]])) and np.isfinite(got[4])
    assert got[9] > 0 and got[10] == np.float32(2.0**-149) and np.all(got[[11, 12, 13]] == 0)
    assert np.isnan(got[14]) and got[15] == got[16] == 1.0


def test_log1p01_within_its_ulp_bound():
    """Both branches (e < ½: the polynomial in e; e ≥ ½: ln 2 + log1p((e − 1)/2)) and their seam,
    the subnormal range (log1p(e) = e there) and the ends."""
    e = np.concatenate([floats(0.0, 1.0), np.float32([0.0, 2.0**-149, 2.0**-126, 1e-30, 0.63890123,
                                                      np.nextafter(np.float32(0.5), np.float32(0)), 0.5,
                                                      np.nextafter(np.float32(1), np.float32(0)), 1.0])])
    got = apply(1, e)
    assert got.dtype == np.float32
    want = np.log1p(e.astype(np.float64))
    pos = want > 0
    assert np.all(got[~pos] == 0)
    assert np.max(np.abs(got.astype(np.float64) - want)[pos] / ulp32(want[pos])) <= LOG1P_ULPS
    tiny = (e > 0) & (e < 2.0**-30)
    assert np.array_equal(got[tiny], e[tiny])                 # log1p(e) = e, exactly, for tiny e
    assert np.isnan(apply(1, np.float32([np.nan]))[0])


def test_expm1_d_is_float64_accurate_and_rounds_correctly():
    x = np.concatenate([floats(-88.0, 88.0), np.float32([0.0, 2.0**-149, -(2.0**-149), 0.34657359,
                                                        -0.34657359, 30.0, -30.0, 15.0])])
    got = apply(2, x)
    want = np.expm1(x.astype(np.float64))
    nz = want != 0
    assert np.all(got[~nz] == 0) and np.max(np.abs(got - want)[nz] / np.abs(want[nz])) <= EXPM1_REL
    assert np.max(np.abs(got.astype(np.float32) - want)[nz] / ulp32(want[nz])) <= ROUNDED_ULPS
