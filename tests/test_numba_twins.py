"""The Numba twins (the ``fast`` extra, ``scratchvae/backend/_numba_kernels.py``) against the
NumPy bodies they stand in for, in float32 and float64.

The bounds asserted here (the twins' module docstring says why each holds):

* bit for bit: bias + ReLU / leaky ReLU and their backward (out of place and in place), the KL
  backward, Adam
  (``adam`` and ``adam_from``), the bias gradient (``sum_rows``), the logvar bias and clamp of
  the KL forward, and the draws (uniform and normal, float32 and float64: the NumPy streams' bits);
* the KL forward, float32: σ within ``STD_ULPS`` ulp of the body's, z within one ulp of z plus
  ``Z_ULPS`` ulp of σ ε; the KL within 1e-6 relative (measured: 7.8e-8);
* the Bernoulli block, float32: dlogits within one ulp of dlogits plus ``SIG_ULPS`` ulp of σ(y);
  the loss within 1e-6 relative (measured: 9.8e-8); each term within 4ε of softplus(y) − x·y in
  extended precision, the body's own bound (measured over the grid below: 1.11ε; the body 2.08ε);
* in float64 the Bernoulli block and the KL forward run their bodies, and a whole float64 step
  through the twins gives the bodies' bits.

Shapes are tiny; CI compiles each twin once per dtype (cached on disk afterwards).
"""

import inspect
import json
import math
import sys

import numpy as np
import pytest

pytest.importorskip("numba")

from scratchvae import VAE, Adam, ops  # noqa: E402
from scratchvae import backend  # noqa: E402
from scratchvae.backend import DECLARED, NUMPY, _numba_kernels, _numba_philox, body_of, philox  # noqa: E402
from scratchvae.backend.random import Stream  # noqa: E402
from scratchvae.optim import adam_update, adam_update_from  # noqa: E402
from scratchvae.config import TrainConfig  # noqa: E402
from scratchvae.runs import load_run, provenance  # noqa: E402
from scratchvae.train import fit, resume  # noqa: E402

from _cuda_host import box_muller_edges  # noqa: E402
from test_bernoulli_block import CAP, grid, reference, wide_enough  # noqa: E402
from test_softplus import every  # noqa: E402

DTYPES = ("float32", "float64")
STD_ULPS, Z_ULPS, SIG_ULPS = 2.5, 4, 5      # measured worst on 5 million inputs: 2, 3, 4
SUM_REL = 1e-6
DRAWS = {"philox_uniform": ("k0", "k1", "d", "out", "first"), "philox_normal": ("k0", "k1", "d", "out", "first")}


@pytest.fixture(scope="module")
def twins():
    return _numba_kernels.Twins(body_of)


def twin(twins, block, *args, **kwargs):
    """``block`` run through its twin, called as the block calls it (defaults filled in)."""
    return block.call_kernel(twins.get(block.kernel), *args, **kwargs)


def ulp32(a):
    """The float32 ulp of each |a| (its binade's spacing; 2**-149 below the normal range)."""
    a = np.abs(np.asarray(a, np.float64))
    return np.where(a < 2.0**-126, 2.0**-149, np.ldexp(1.0, np.frexp(a)[1] - 24))


def same_bits(got, want):
    assert got.dtype == want.dtype and got.shape == want.shape
    np.testing.assert_array_equal(got.view(f"u{got.itemsize}"), want.view(f"u{want.itemsize}"))


def rel(got, want):
    return abs(float(got) - float(want)) / abs(float(want))


# -- the seam ----------------------------------------------------------------------------------
def test_every_twin_takes_its_blocks_arguments(twins):
    assert set(twins.names()) <= set(DECLARED) | set(DRAWS)
    assert {"bias_act", "act_backward", "reparam_kl_forward", "reparam_kl_backward", "bernoulli_nll",
            "adam", "adam_from", "sum_rows"} <= set(twins.names())
    for name in twins.names():
        got = tuple(inspect.signature(twins.get(name)).parameters)
        want = DRAWS[name] if name in DRAWS else tuple(inspect.signature(DECLARED[name].body).parameters)
        assert got == want, f"twin {name!r} takes {got}, its block {want}"


def test_the_numpy_backend_runs_the_twins_unless_switched_off_or_absent(monkeypatch):
    monkeypatch.delenv("SCRATCHVAE_NUMBA", raising=False)
    on = backend._numba_twins()
    assert isinstance(on, _numba_kernels.Twins) and on.get("bias_act") is not None
    monkeypatch.setattr(NUMPY, "_twins", on)
    assert NUMPY.describe()["fast_path"] is True and NUMPY.describe()["numba"] == on.version
    assert provenance(VAE(input_dim=6, hidden=(4,), latent=2))["fast_path"] is True     # a run's config.json
    monkeypatch.setenv("SCRATCHVAE_NUMBA", "0")
    off = backend._numba_twins()
    assert not off and off.get("bias_act") is None and off.why == "SCRATCHVAE_NUMBA=0"
    monkeypatch.setattr(NUMPY, "_twins", off)
    assert NUMPY.kernel("bias_act") is None
    assert NUMPY.describe() == {"backend": "numpy", "fast_path": False, "fast_path_off": "SCRATCHVAE_NUMBA=0"}
    monkeypatch.delenv("SCRATCHVAE_NUMBA")
    monkeypatch.setitem(sys.modules, "scratchvae.backend._numba_kernels", None)   # as if Numba were absent
    monkeypatch.delattr(backend, "_numba_kernels")
    absent = backend._numba_twins()
    assert not absent and "install the 'fast' extra" in absent.why


def test_a_resume_records_whether_its_sitting_ran_the_twins(tmp_path, monkeypatch):
    """A run started with the twins and resumed with ``SCRATCHVAE_NUMBA=0`` says so twice."""
    x = np.random.default_rng(0).random((24, 6)).astype(np.float32)
    monkeypatch.setattr(NUMPY, "_twins", _numba_kernels.Twins(body_of))
    fit(VAE(input_dim=6, hidden=(4,), latent=2, seed=1), x, config=TrainConfig(epochs=1, batch_size=8),
        run_dir=tmp_path)
    monkeypatch.setattr(NUMPY, "_twins", backend._NoTwins("SCRATCHVAE_NUMBA=0"))
    resume(load_run(tmp_path), x, epochs=2)
    doc = json.loads((tmp_path / "config.json").read_text())
    (note,) = doc["resumes"]
    assert doc["provenance"]["fast_path"] is True and "numba" in doc["provenance"]
    assert note["provenance"]["fast_path"] is False and note["provenance"]["fast_path_off"] == "SCRATCHVAE_NUMBA=0"
    assert note["provenance"]["numpy"] == np.__version__ and note["epochs"] == 2


# -- bit for bit --------------------------------------------------------------------------------
def specials(a):
    """Put ±0, ±inf and NaN into the first row of a (N, H) array (a float copy)."""
    a = a.copy()
    a[0, :5] = [0.0, -0.0, np.inf, -np.inf, np.nan]
    return a


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ["relu", "leaky_relu"])
def test_bias_act_and_its_backward_are_bit_for_bit(name, dtype, twins):
    r = np.random.default_rng(1)
    pre = specials(3 * r.normal(size=(7, 33))).astype(dtype)
    b = r.normal(size=33).astype(dtype)
    pre[1, :5] = -b[:5]                                   # pre + b = 0: the kink
    with np.errstate(invalid="ignore"):
        want = ops.bias_act_forward.body(pre.copy(), b, name)
        got = twin(twins, ops.bias_act_forward, pre.copy(), b, name)
        same_bits(got, want)
        inplace = pre.copy()
        same_bits(twin(twins, ops.bias_act_forward, inplace, b, name, out=inplace), want)
        da = specials(r.normal(size=(7, 33))).astype(dtype)[::-1].copy()
        want = ops.activation_backward.body(name, da, got.copy(), out=None)
        same_bits(twin(twins, ops.activation_backward, name, da, got.copy()), want)
        a = got.copy()
        same_bits(twin(twins, ops.activation_backward, name, da, a, out=a), want)     # the model's call


@pytest.mark.parametrize("dtype", DTYPES)
def test_kl_backward_is_bit_for_bit(dtype, twins):
    r = np.random.default_rng(2)
    N, L = 6, 5
    ml = r.normal(size=(N, 2 * L)).astype(dtype)
    eps, std, dz = (r.normal(size=(N, L)).astype(dtype) for _ in range(3))
    std = np.abs(std)
    for lv_edge in (None, ops.LOGVAR_LIMIT):              # clamped entries: zero gradient
        m = ml.copy()
        if lv_edge is not None:
            m[0, L], m[1, L + 1] = lv_edge, -lv_edge
        for beta in (1.0, 0.3, np.array([0.7])):
            for d in (dz, None):
                want = ops.reparam_kl_backward.body(None if d is None else d.copy(), eps, std, m, beta,
                                                    np.empty_like(m))
                got = twin(twins, ops.reparam_kl_backward, None if d is None else d.copy(), eps, std, m, beta,
                           np.empty_like(m))
                same_bits(got, want)


@pytest.mark.parametrize("dtype", DTYPES)
def test_adam_is_bit_for_bit_step_after_step(dtype, twins):
    r = np.random.default_rng(3)
    n = 1001
    p, m, v = r.normal(size=n).astype(dtype), np.zeros(n, dtype), np.zeros(n, dtype)
    state = {"body": [a.copy() for a in (p, m, v)], "twin": [a.copy() for a in (p, m, v)]}
    for t in range(1, 4):
        g = r.normal(size=n).astype(dtype)
        step, sbc2 = 1e-3 / (1 - 0.9**t), math.sqrt(1 - 0.999**t)
        adam_update.body(*state["body"][:1], g, *state["body"][1:], step, sbc2, 0.9, 0.999, 1e-8,
                         np.empty(n, dtype))
        coef = np.array([step, sbc2])
        twin(twins, adam_update_from, *state["twin"][:1], g, *state["twin"][1:], coef, 0.9, 0.999, 1e-8, None)
        for a, b in zip(state["twin"], state["body"]):
            same_bits(a, b)
    p2 = p.reshape(11, 91).copy()                         # a parameter of the dict form: 2-D
    want = p2.copy()
    adam_update.body(want, p2, np.zeros_like(p2), np.zeros_like(p2), 0.01, 0.1, 0.9, 0.999, 1e-8, np.empty_like(p2))
    twin(twins, adam_update, p2, p2.copy(), np.zeros_like(p2), np.zeros_like(p2), 0.01, 0.1, 0.9, 0.999, 1e-8, None)
    same_bits(p2, want)


@pytest.mark.parametrize("dtype", DTYPES)
def test_the_bias_gradient_is_bit_for_bit(dtype, twins):
    """NumPy's axis-0 sum adds the rows in order; one column it sums pairwise (the body runs)."""
    r = np.random.default_rng(9)
    for shape in ((0, 5), (1, 3), (9, 2), (37, 40), (200, 1), (130, 17)):
        a = (10 * r.normal(size=shape)).astype(dtype)
        same_bits(twin(twins, ops.sum_rows, a), ops.sum_rows.body(a))
        out = np.empty(shape[1], dtype)
        assert twin(twins, ops.sum_rows, a, out=out) is out
        same_bits(out, ops.sum_rows.body(a))


# -- within bounds: the blocks that call exp, expm1, log1p --------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
def test_kl_forward_within_its_bounds(dtype, twins):
    r = np.random.default_rng(4)
    N, L = 9, 20
    ml = r.normal(0, 2, size=(N, 2 * L)).astype(dtype)
    ml[:, L:] = r.uniform(-12, 12, size=(N, L))
    ml[0, L:L + 3] = [35.0, -40.0, 1e-6]                  # clamped to ±30 (all of logvar then)
    eps, b = r.normal(size=(N, L)).astype(dtype), r.normal(size=2 * L).astype(dtype)
    for bias in (None, b):
        outs = []
        for run in (ops.reparam_kl_forward.body, lambda *a: twin(twins, ops.reparam_kl_forward, *a)):
            m, z, std, terms = ml.copy(), *(np.empty((N, L), dtype) for _ in range(3))
            outs.append((run(m, eps, z, std, terms, bias), m, z, std))
        (kl_b, m_b, z_b, std_b), (kl_t, m_t, z_t, std_t) = outs
        same_bits(m_t, m_b)                                # the bias and the clamp, in place
        assert type(kl_t) is type(kl_b) and rel(kl_t, kl_b) <= SUM_REL
        if dtype == "float64":                             # the body ran
            assert kl_t == kl_b
            same_bits(z_t, z_b)
            continue
        assert np.all(np.abs(std_t.astype(np.float64) - std_b) <= STD_ULPS * ulp32(std_b))
        dz = np.abs(z_t.astype(np.float64) - z_b)
        assert np.all(dz <= ulp32(z_b) + Z_ULPS * ulp32(std_b.astype(np.float64) * eps))


@pytest.mark.parametrize("dtype", DTYPES)
def test_bernoulli_within_its_bounds(dtype, twins):
    r = np.random.default_rng(5)
    y = (5 * r.normal(size=(6, 784))).astype(dtype)
    y[0, :10] = [-10, -20, 10, 20, -1e3, 1e3, -CAP[dtype] - 1, CAP[dtype] + 1, 0.0, -0.0]
    y[1] = np.linspace(-CAP[dtype] - 5, CAP[dtype] + 5, 784)
    x = r.uniform(size=y.shape).astype(dtype)
    x[2:4] = x[2:4] > 0.5                                  # binary pixels
    x[4] = 0.0
    for bias in (None, r.normal(size=784).astype(dtype)):
        out = {}
        for name, run in (("body", ops.bernoulli_nll_forward_backward.body),
                          ("twin", lambda *a, **k: twin(twins, ops.bernoulli_nll_forward_backward, *a, **k))):
            dl, terms = np.empty_like(y), np.empty_like(y)
            out[name] = (run(y.copy(), x, dl, terms, overwrite_logits=True, bias=bias), dl)
        (loss_b, dl_b), (loss_t, dl_t) = out["body"], out["twin"]
        assert type(loss_t) is type(loss_b) and rel(loss_t, loss_b) <= SUM_REL
        if dtype == "float64":                             # the body ran
            assert loss_t == loss_b
            same_bits(dl_t, dl_b)
            continue
        yb = (y if bias is None else y + bias).astype(np.float64)
        sig = 1 / (1 + np.exp(-np.clip(yb, -CAP[dtype], CAP[dtype])))
        err = np.abs(dl_t.astype(np.float64) - dl_b)
        assert np.all(err <= ulp32(dl_b) + SIG_ULPS * ulp32(sig)), float(np.max(err / ulp32(sig)))


@pytest.mark.parametrize("x", [0.0, 1.0, 0.3])
@pytest.mark.parametrize("dtype", ["float32"])
def test_bernoulli_terms_are_accurate_over_the_whole_logit_range(dtype, x, twins):
    """The twin leaves its terms in ``scratch`` as the body does: each within 4ε of the exact
    softplus(y) − x·y (plus e^{−cap} beyond the cap), the body's own bound."""
    wide_enough(dtype)
    y = grid(dtype).reshape(1, -1)
    xs = np.full_like(y, x)
    terms = np.empty_like(y)
    twin(twins, ops.bernoulli_nll_forward_backward, y.copy(), xs, np.empty_like(y), terms)
    want = reference(y, xs)
    fi = np.finfo(dtype)
    err = np.abs(terms.astype(np.longdouble) - want)
    bound = 4 * float(fi.eps) * (want + float(fi.smallest_normal))
    bound += np.where(np.abs(y) > CAP[dtype], math.exp(-CAP[dtype]) * (1 + 4 * float(fi.eps)), 0.0)
    i = np.unravel_index(int(np.argmax(err / bound)), y.shape)
    assert err[i] <= bound[i], f"y = {y[i]!r}: term {terms[i]!r}, want {float(want[i])!r}"


def test_softplus_within_its_bound(twins):
    """float32: within 1.7 ulp of the exact value (measured 1.64 over every 16th float32 in
    [−120, 100]), against the body's 3.2; the edges as the body; in place; float64 runs the body."""
    z = every(4093, -120.0, 100.0)
    exact = np.logaddexp(z.astype(np.float64), 0.0)
    got = twin(twins, ops.softplus, z)
    err = np.abs(got.astype(np.float64) - exact) / ulp32(exact.astype(np.float32))
    assert got.dtype == np.float32 and err.max() <= 1.7, float(z[np.argmax(err)])
    edges = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 3e38, -3e38, 1e-30, 88.0, -104.0], np.float32)
    np.testing.assert_array_equal(twin(twins, ops.softplus, edges), ops.softplus.body(edges))
    a = z[:350].reshape(50, 7).copy()
    want = twin(twins, ops.softplus, a)
    assert twin(twins, ops.softplus, a, out=a) is a and np.array_equal(a, want)
    z64 = z[::97].astype(np.float64)
    same_bits(twin(twins, ops.softplus, z64), ops.softplus.body(z64))


def test_bernoulli_rows_within_1e_6_of_the_body(twins):
    """−log p(x|y) per row, as importance sampling asks for it: (N, D), and (n, K, D) logits
    with x (n, 1, D); float32 or float64 sums. Float64 logits run the body."""
    r = np.random.default_rng(11)
    y = (r.standard_normal((3, 5, 784)) * 6).astype(np.float32)
    x = (r.uniform(size=(3, 1, 784)) < 0.3).astype(np.float32)
    for args in ((y, x), (y[0], x[0].repeat(5, axis=0)), (y[:, :1], x)):
        for dtype in (None, np.float64):
            got = twin(twins, ops.bernoulli_nll_rows, *args, dtype=dtype)
            want = ops.bernoulli_nll_rows.body(*args, dtype=dtype)
            assert got.shape == want.shape == args[0].shape[:-1] and got.dtype == want.dtype
            np.testing.assert_allclose(got, want, rtol=1e-6, atol=0)
    y64, x64 = y.astype(np.float64), x.astype(np.float64)
    same_bits(twin(twins, ops.bernoulli_nll_rows, y64, x64), ops.bernoulli_nll_rows.body(y64, x64))


@pytest.mark.parametrize("dtype", [None, np.float64])
def test_rows_into_given_buffers_keep_the_bits(twins, dtype):
    """With ``out`` and ``buffers`` (what a training step passes, so it allocates nothing) the
    twin and the body each give the bits they give without them; the Gaussian's body too."""
    r = np.random.default_rng(12)
    y = (r.standard_normal((40, 784)) * 6).astype(np.float32)
    x = (r.uniform(size=(40, 784)) < 0.3).astype(np.float32)
    for run in (lambda **k: twin(twins, ops.bernoulli_nll_rows, y, x, dtype=dtype, **k),
                lambda **k: ops.bernoulli_nll_rows.body(y, x, dtype=dtype, **k),
                lambda **k: ops.gaussian_nll_rows(y, x, np.full(784, -0.3, np.float32), dtype=dtype, **k)):
        want = run()
        out, buffers = np.empty(40, want.dtype), (np.empty_like(y), np.empty_like(y))
        assert run(out=out, buffers=buffers) is out
        same_bits(out, want)


# -- what the twins leave to the bodies ---------------------------------------------------------------
def test_what_a_twin_does_not_cover_runs_the_body(twins):
    r = np.random.default_rng(7)
    pre, b = r.normal(size=(4, 6)).astype(np.float32), r.normal(size=6).astype(np.float32)
    for name in ("tanh", "sigmoid", "softplus"):
        same_bits(twin(twins, ops.bias_act_forward, pre.copy(), b, name), ops.bias_act_forward.body(pre.copy(), b, name))
        a = ops.bias_act_forward.body(pre.copy(), b, name)
        same_bits(twin(twins, ops.activation_backward, name, pre, a.copy()),
                  ops.activation_backward.body(name, pre, a.copy()))
    wide = r.normal(size=(4, 12)).astype(np.float32)
    same_bits(twin(twins, ops.bias_act_forward, wide[:, ::2], b, "relu"),        # not contiguous
              ops.bias_act_forward.body(wide[:, ::2], b, "relu"))
    y, x = r.normal(size=50).astype(np.float32), r.uniform(size=50).astype(np.float32)   # 1-D logits
    d1, d2 = np.empty_like(y), np.empty_like(y)
    assert twin(twins, ops.bernoulli_nll_forward_backward, y.copy(), x, d1, np.empty_like(y)) == \
        ops.bernoulli_nll_forward_backward.body(y.copy(), x, d2, np.empty_like(y))
    same_bits(d1, d2)
    with pytest.raises(Exception, match="out must not be da"):
        twin(twins, ops.activation_backward, "relu", pre, pre, out=pre)


# -- the draws ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["uniform", "normal"])
def test_draws_give_the_numpy_streams_bits(kind, dtype, monkeypatch):
    """Every size's tail (n mod 4), and a draw counter that carries into d_hi."""
    d = 2**32 - 1
    for n in (0, 1, 2, 3, 5, 8, 1001):
        got, want = Stream(31337, 2), Stream(31337, 2)
        for s in (got, want):
            s.set_state(np.array([*s.key, d & 0xFFFFFFFF, d >> 32], np.uint32))
        monkeypatch.setattr(NUMPY, "_twins", _numba_kernels.Twins(body_of))
        a = getattr(got, kind)((n,), dtype)
        monkeypatch.setattr(NUMPY, "_twins", backend._NoTwins("the NumPy path"))
        b = getattr(want, kind)((n,), dtype)
        same_bits(a, b)
        assert (got.state() == want.state()).all()


def test_normal_pair_is_box_muller_bit_for_bit_at_the_edges():
    """The Box–Muller edges of ``test_cuda_host`` (``box_muller_edges``): u at 2**-53 and 1 − 2**-53,
    both sides of the √½ split, every quarter turn, the rint ties, and random pairs."""
    u1, u2 = box_muller_edges(2000)
    got = np.array([_numba_philox._normal_pair(a, b) for a, b in zip(u1, u2)]).reshape(-1)
    same_bits(got, philox.box_muller(u1, u2))


# -- the whole step -------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
def test_a_training_step_through_the_twins_matches_the_bodies(dtype, monkeypatch):
    """Loss and every gradient of a model step (the same ε from the same stream), then Adam."""
    x = (np.random.default_rng(8).uniform(size=(16, 784)) < 0.3).astype(dtype)
    res = {}
    for name, table in (("twins", _numba_kernels.Twins(body_of)),
                        ("bodies", backend._NoTwins("off"))):
        monkeypatch.setattr(NUMPY, "_twins", table)
        m = VAE(hidden=(32,), latent=4, dtype=dtype, seed=5)
        opt = Adam(m.theta)
        r = m.loss_and_grads(x)
        grads = {k: v.copy() for k, v in m.grads.items()}
        opt.step(m.grad)
        res[name] = (r.recon, r.kl, grads, m.theta.copy())
    if dtype == "float64":                                 # exact twins, and the bodies
        for a, b in zip(res["twins"][:2], res["bodies"][:2]):
            assert a == b
        for k, g in res["bodies"][2].items():
            same_bits(res["twins"][2][k], g)
        same_bits(res["twins"][3], res["bodies"][3])
        return
    for a, b in zip(res["twins"][:2], res["bodies"][:2]):
        assert rel(a, b) <= SUM_REL
    for k, g in res["bodies"][2].items():
        assert np.linalg.norm(res["twins"][2][k] - g) <= 1e-5 * np.linalg.norm(g), k


@pytest.mark.parametrize("dtype", DTYPES)
def test_the_conditional_prior_within_its_bounds(dtype, twins):
    """A hierarchical model's conditional prior (ops/hierarchy.py): the head's bias and clamp bit
    for bit; each row's ½ Σ (r² + lv_p) within SUM_REL (float64 sums of exp32's terms); the
    backward (β, a schedule's β, one weight per row) within 1e-6 in norm, its clamped entries 0.
    Float64 runs the bodies: the same bits."""
    r = np.random.default_rng(12)
    N, L = 11, 9
    head, h = r.normal(size=(N, 2 * L)).astype(dtype), r.normal(size=(N, L)).astype(dtype)
    head[0, L:L + 2] = [40.0, -35.0]
    b = (r.normal(size=2 * L) * 0.3).astype(dtype)
    outs = []
    for run in (ops.cond_prior_forward.body, lambda *a, **k: twin(twins, ops.cond_prior_forward, *a, **k)):
        hd = head.copy()
        out = run(hd, h, np.empty(N, dtype), np.empty((N, L), dtype), np.empty((N, L), dtype), bias=b)
        outs.append((out, hd))
    (o_b, h_b), (o_t, h_t) = outs
    same_bits(h_t, h_b)
    assert np.max(np.abs(o_t.astype(np.float64) - o_b) / np.abs(o_b)) <= SUM_REL
    for w in (0.7, np.array([0.3]), r.uniform(size=N).astype(dtype)):
        res = []
        for run in (ops.cond_prior_backward.body, lambda *a: twin(twins, ops.cond_prior_backward, *a)):
            dh = np.ones((N, L), dtype)
            res.append((run(h_b, h, w, np.empty((N, 2 * L), dtype), dh, np.empty((N, L), dtype)), dh))
        (g_b, dh_b), (g_t, dh_t) = res
        assert g_t[0, L] == 0 and g_t[0, L + 1] == 0
        if dtype == "float64":
            same_bits(g_t, g_b)
            same_bits(dh_t, dh_b)
            continue
        for got, want in ((g_t, g_b), (dh_t, dh_b)):
            assert np.linalg.norm(got - want) <= 1e-6 * np.linalg.norm(want)


def test_a_two_layer_step_through_the_twins_matches_the_bodies(monkeypatch):
    """As the one-layer step above, float32, a two-layer model's ELBO (the conditional prior's twins
    in it). (The bound's weights w̃ = softmax(log w) turn a 1e-7 relative change of a log w of
    several hundred nats into 1e-5 of the gradient: the blocks' own bounds above are the test.)"""
    x = (np.random.default_rng(9).uniform(size=(16, 784)) < 0.3).astype(np.float32)
    res = {}
    for name, table in (("twins", _numba_kernels.Twins(body_of)), ("bodies", backend._NoTwins("off"))):
        monkeypatch.setattr(NUMPY, "_twins", table)
        m = VAE(hidden=((32,), (16,)), latent=(4, 3), seed=5)
        r = m.loss_and_grads(x)
        res[name] = (float(r.objective), {k: v.copy() for k, v in m.grads.items()})
    assert rel(res["twins"][0], res["bodies"][0]) <= SUM_REL
    for k, g in res["bodies"][1].items():
        assert np.linalg.norm(res["twins"][1][k] - g) <= 1e-5 * np.linalg.norm(g), k
