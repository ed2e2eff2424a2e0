"""The fused Bernoulli block, term by term: its loss against softplus(y) − x·y in extended
precision, and its gradient bit for bit against the σ arithmetic training has always used.

The block's term is [max(y, 0) − x·y] + log1p(e^{−|y|}) (``bernoulli_nll_forward_backward``):
two parts ≥ 0, each relatively accurate, so the term is too — also in the tails, where it
is e^{y} (x = 0, y ≪ 0) or e^{−y} (x = 1, y ≫ 0) and a form that subtracts numbers of size |y|
loses it. The reference is the same identity evaluated in ``np.longdouble`` from the exact
float inputs: on x86 that has a 64-bit significand (x·y of two float32 values is exact) and
a 15-bit exponent (e^{−1000} does not underflow).

The bound: |term − reference| ≤ ULPS·ε·(|reference| + tiny), ε the dtype's machine epsilon and
tiny its smallest normal number (the second part covers terms that are subnormal, where the
format has no relative precision left), plus e^{−cap} where |y| > cap (there e^{−|y|} is
taken as e^{−cap}). ULPS = 4: the term is three correctly rounded operations (1/t, a
subtraction, the final sum) and two library calls, NumPy's exp and log1p (measured here at
≤ 2.5 and ≤ 2 ulp in float32, < 1 ulp in float64); the worst term error measured over 20
million logits was 2.7ε in float32 and 1.3ε in float64.
"""

import math

import numpy as np
import pytest

from scratchvae import ops

DTYPES = ("float32", "float64")
CAP = {"float32": 88.0, "float64": 708.0}    # the NumPy body's exponent caps
ULPS = 4


def wide_enough(dtype):
    if np.finfo(np.longdouble).eps > np.finfo(dtype).eps / 2**8:
        pytest.skip(f"np.longdouble is not wider than {dtype} on this platform")


def grid(dtype):
    """Logits over every range that matters: a dense line over [−cap − 12, cap + 12], tiny |y|
    on a geometric scale, and far beyond the cap up to a quarter of the largest float."""
    cap, fi = CAP[dtype], np.finfo(dtype)
    half = np.concatenate([np.geomspace(float(fi.smallest_normal), 1.0, 2001),
                           np.geomspace(cap + 12, float(fi.max) / 4, 201)])
    y = np.concatenate([np.linspace(-cap - 12, cap + 12, 400_001), half, -half, [0.0, -0.0]])
    return y.astype(dtype)


def block_terms(y, x, bias=None, block=ops.bernoulli_nll_forward_backward):
    """(terms, loss, dlogits) of the block as the model calls it (overwrite_logits=True)."""
    dlogits, scratch = np.empty_like(y), np.empty_like(y)
    with np.errstate(over="raise", divide="raise", invalid="raise"):
        loss = block(y.copy(), x, dlogits, scratch, overwrite_logits=True, bias=bias)
    return scratch, loss, dlogits


def reference(y, x):
    """softplus(y) − x·y = max(y, 0) − x·y + log1p(e^{−|y|}), in np.longdouble."""
    yl, xl = y.astype(np.longdouble), x.astype(np.longdouble)
    return np.maximum(yl, 0) - xl * yl + np.log1p(np.exp(-np.abs(yl)))


@pytest.mark.parametrize("x", [0.0, 1.0, 0.3])
@pytest.mark.parametrize("dtype", DTYPES)
def test_terms_are_accurate_over_the_whole_logit_range(dtype, x):
    wide_enough(dtype)
    y = grid(dtype)
    xs = np.full_like(y, x)
    got, _, _ = block_terms(y, xs)
    want = reference(y, xs)
    fi = np.finfo(dtype)
    err = np.abs(got.astype(np.longdouble) - want)
    beyond = np.abs(y) > CAP[dtype]
    bound = (ULPS * float(fi.eps)) * (want + float(fi.smallest_normal))
    bound += np.where(beyond, math.exp(-CAP[dtype]) * (1 + ULPS * float(fi.eps)), 0.0)
    i = int(np.argmax(err / bound))
    assert err[i] <= bound[i], (f"x = {x}, y = {y[i]!r}: term {got[i]!r}, want {float(want[i])!r} "
                                f"(error {float(err[i] / want[i] / fi.eps):.3g} ε relative)")
    # the relative bound alone, wherever the term is normal and |y| is within the cap
    inside = ~beyond & (want >= float(fi.smallest_normal))
    assert inside.mean() > 0.8                              # not vacuous
    assert float(np.max(err[inside] / want[inside])) <= ULPS * float(fi.eps)


@pytest.mark.parametrize("dtype", DTYPES)
def test_cancellation_points(dtype):
    """The points of the bug report, y = −10 and −20 with x = 0, and their mirrors y = 10, 20
    with x = 1: the term is log1p(e^{−10}) = 4.539889921686465e-05 and log1p(e^{−20}) =
    2.061153620314381e-09. max(y − log σ(y), 0) − x·y gave 4.5776367e-05 (0.83% high) and 0
    in float32."""
    y = np.array([-10.0, -20.0, 10.0, 20.0], dtype)
    x = np.array([0.0, 0.0, 1.0, 1.0], dtype)
    want = np.array([4.539889921686465e-05, 2.061153620314381e-09] * 2)
    assert want[0] == math.log1p(math.exp(-10.0)) and want[1] == math.log1p(math.exp(-20.0))
    got, loss, _ = block_terms(y, x)
    eps = float(np.finfo(dtype).eps)
    np.testing.assert_allclose(got, want, rtol=ULPS * eps, atol=0)
    np.testing.assert_allclose(float(loss), want.sum(), rtol=ULPS * eps, atol=0)


def former_dlogits(y, x, cap):
    """σ(y) − x as the block formed it before its loss was made accurate."""
    s = np.negative(y)
    np.minimum(s, cap, out=s)
    np.exp(s, out=s)
    s += 1.0
    sig = np.reciprocal(s, out=s)
    sig -= x
    return sig


@pytest.mark.parametrize("dtype", DTYPES)
def test_gradient_is_bit_identical_to_the_former_sigma(dtype):
    """Training runs keep their bits: the NumPy body's dlogits is the same σ(y) − x for every
    logit, also past the cap (where the block clips −y from below too: t changes only where
    1 + t rounds to 1). (The Numba twin's own exponential is held to a bound against the body
    in ``tests/test_numba_twins.py``.)"""
    body = ops.bernoulli_nll_forward_backward.body
    r = np.random.default_rng(0)
    y = grid(dtype)
    x = r.uniform(size=y.shape).astype(dtype)
    x[::3] = np.round(x[::3])                               # binary pixels too
    _, _, dlogits = block_terms(y, x, block=body)
    np.testing.assert_array_equal(dlogits, former_dlogits(y, x, CAP[dtype]))
    # with the output layer's bias folded in: the same bits as the former σ of y + b
    y2 = (4 * r.normal(size=(64, 784))).astype(dtype)
    y2[0, :8] = [-10, -20, 10, 20, -1e3, 1e3, -CAP[dtype] - 1, CAP[dtype] + 1]
    x2 = r.uniform(size=y2.shape).astype(dtype)
    b = r.normal(size=784).astype(dtype)
    _, _, dlogits = block_terms(y2, x2, bias=b, block=body)
    np.testing.assert_array_equal(dlogits, former_dlogits(y2 + b, x2, CAP[dtype]))
