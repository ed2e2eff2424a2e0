"""Streams: the documented counter layout, state round trips, distributions, errors, and
NumPy/CuPy agreement (the CuPy tests skip without cupy and a GPU)."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scratchvae.backend.philox import philox4x32
from scratchvae.backend.random import Stream, Streams, derive_key
from scratchvae.model import MODEL_STREAMS
from scratchvae.step import TRAIN_STREAMS
from scratchvae.errors import BackendError, InputError

STREAMS = {**MODEL_STREAMS, **TRAIN_STREAMS}   # every stream a run draws from, by id

M32 = 0xFFFFFFFF


# -- the layout, rebuilt from philox4x32 and the documented formulas ---------------------------
def layout_blocks(seed, stream_id, d, n_blocks):
    """Block j of draw d: Philox4x32-10 of (j_lo, j_hi, d_lo, d_hi) under the documented key."""
    key = np.array([seed & M32, ((seed >> 32) ^ (stream_id * 0x9E3779B9)) & M32], np.uint32)
    j = np.arange(n_blocks, dtype=np.uint64)
    counters = np.stack([j & M32, j >> 32, np.full_like(j, d & M32), np.full_like(j, d >> 32)],
                        axis=1).astype(np.uint32)
    return philox4x32(counters, key)


def layout_values(kind, seed, stream_id, d, n):
    """The n values of draw d, per the table in random.py's docstring (exact except normals)."""
    per_block = 4 if kind in ("uint32", "uniform32") else 2
    words = layout_blocks(seed, stream_id, d, -(-n // per_block)).reshape(-1).tolist()
    if kind == "uint32":
        return words[:n]
    if kind == "uniform32":
        return [((w >> 8) | 1) * 2.0**-24 for w in words[:n]]
    u = [((((words[2 * i + 1] << 32) | words[2 * i]) >> 11) | 1) * 2.0**-53
         for i in range(len(words) // 2)]
    if kind == "uniform64":
        return u[:n]
    normals = []
    for u1, u2 in zip(u[0::2], u[1::2]):
        r = math.sqrt(-2.0 * math.log(u1))
        normals += [r * math.cos(2 * math.pi * u2), r * math.sin(2 * math.pi * u2)]
    return normals[:n]


def draw(stream, kind, n):
    if kind == "uint32":
        return stream.uint32(n)
    if kind == "normal":
        return stream.normal(n, np.float64)
    return stream.uniform(n, np.float32 if kind == "uniform32" else np.float64)


def with_counter(stream, d):
    state = stream.state()
    state[2], state[3] = d & M32, d >> 32
    stream.set_state(state)
    return stream


@pytest.mark.parametrize("kind", ["uint32", "uniform32", "uniform64"])
def test_draws_follow_the_documented_layout_exactly(kind):
    s = Stream(20240607, 3)
    for d, n in enumerate([10, 0, 1, 7, 33]):  # empty draws advance d too
        assert draw(s, kind, n).tolist() == layout_values(kind, 20240607, 3, d, n)
    assert s.state().tolist() == [*derive_key(20240607, 3), 5, 0]


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**63 - 1), stream_id=st.integers(0, 2**32 - 1),
       d=st.integers(0, 2**64 - 1), n=st.integers(0, 41),
       kind=st.sampled_from(["uint32", "uniform32", "uniform64"]))
def test_any_seed_stream_and_counter_follow_the_layout(seed, stream_id, d, n, kind):
    s = with_counter(Stream(seed, stream_id), d)
    assert draw(s, kind, n).tolist() == layout_values(kind, seed, stream_id, d, n)
    assert s.state().tolist()[2:] == [(d + 1) % 2**64 & M32, (d + 1) % 2**64 >> 32]


def test_normals_follow_the_layout_within_libm_rounding():
    s = Stream(5, 1)
    for d, n in enumerate([9, 10, 1]):
        got = s.normal(n, np.float64)
        np.testing.assert_allclose(got, layout_values("normal", 5, 1, d, n), rtol=1e-14, atol=1e-15)
    # float32 normals are the float64 ones rounded to nearest: draw 3 both ways
    f32 = s.normal((3, 5), np.float32)
    f64 = with_counter(Stream(5, 1), 3).normal((3, 5), np.float64)
    assert f32.dtype == np.float32
    np.testing.assert_array_equal(f32, f64.astype(np.float32))


def test_splitting_a_draw_changes_nothing_but_the_counter():
    # a (4, 5) draw is the same 20 values as a flat draw of 20 at the same d, in C order
    a, b = Stream(1, 0), Stream(1, 0)
    np.testing.assert_array_equal(a.normal((4, 5), np.float32).reshape(-1),
                                  b.normal(20, np.float32))
    # an odd draw drops the last block's second normal; the next draw starts a fresh d
    c = Stream(1, 0)
    c.uint32(0), c.uint32(0)
    odd = c.normal(7, np.float64)
    even = Stream(1, 0)
    even.set_state(np.array([*derive_key(1, 0), 2, 0], np.uint32))
    np.testing.assert_array_equal(odd, even.normal(8, np.float64)[:7])


def test_counter_carries_into_the_high_word():
    s = with_counter(Stream(9, 2), 2**32 - 1)
    assert s.uint32(6).tolist() == layout_values("uint32", 9, 2, 2**32 - 1, 6)
    assert s.state().tolist()[2:] == [0, 1]
    assert s.uint32(6).tolist() == layout_values("uint32", 9, 2, 2**32, 6)
    s = with_counter(Stream(9, 2), 2**64 - 1)
    s.uint32(1)
    assert s.state().tolist()[2:] == [0, 0]  # d wraps mod 2**64


def test_key_derivation():
    seed = 0x0123456789ABCDEF
    assert derive_key(seed, 0) == (0x89ABCDEF, 0x01234567)
    assert derive_key(seed, 1) == (0x89ABCDEF, 0x01234567 ^ 0x9E3779B9)
    assert derive_key(seed, 4) == (0x89ABCDEF, 0x01234567 ^ (4 * 0x9E3779B9 & M32))
    assert Stream(seed, 4).state().tolist() == [*derive_key(seed, 4), 0, 0]
    # seeds below 2**32: all (seed, stream) keys distinct
    keys = {derive_key(seed, i) for seed in range(200) for i in STREAMS.values()}
    assert len(keys) == 200 * len(STREAMS)


def test_same_seed_same_numbers_different_seed_or_stream_different_numbers():
    first = Stream(42, 1).normal(64, np.float32)
    np.testing.assert_array_equal(first, Stream(42, 1).normal(64, np.float32))
    assert not np.array_equal(first, Stream(43, 1).normal(64, np.float32))
    assert not np.array_equal(first, Stream(42, 2).normal(64, np.float32))
    s = Stream(42, 1)
    s.normal(64, np.float32)
    assert not np.array_equal(first, s.normal(64, np.float32))  # draws advance


def test_state_round_trip_gives_the_identical_continuation():
    s = Stream(777, 0)
    s.normal(13, np.float32), s.uint32(5)
    saved = s.state()
    assert saved.dtype == np.uint32 and saved.shape == (4,) and saved[2] == 2
    expected = [s.normal((3, 7), np.float64), s.uniform(9, np.float32), s.permutation(11)]
    t = Stream(777, 0)
    t.set_state(saved)
    got = [t.normal((3, 7), np.float64), t.uniform(9, np.float32), t.permutation(11)]
    for e, g in zip(expected, got):
        np.testing.assert_array_equal(e, g)
    saved[2] = 99  # state() hands out a copy
    assert s.state()[2] == 5


def test_streams_state_round_trip_and_names():
    a = Streams(2024, STREAMS)
    assert a.seed == 2024
    for name, i in STREAMS.items():
        np.testing.assert_array_equal(a[name].uint32(3), Stream(2024, i).uint32(3))
    a["noise"].normal(5, np.float32)
    state = a.state()
    assert sorted(state) == sorted(STREAMS) and state["noise"][2] == 2 and state["init"][2] == 1
    b = Streams(2024, STREAMS)
    b.set_state(state)
    for name in STREAMS:
        np.testing.assert_array_equal(a[name].normal(4, np.float64), b[name].normal(4, np.float64))


def test_set_state_refuses_bad_states_and_changes_nothing():
    s = Stream(3, 1)
    good = s.state()
    for bad in [good.astype(np.int64), good[:3], good.reshape(2, 2), good.tolist()]:
        with pytest.raises(InputError, match=r"must be a numpy uint32 array of shape \(4,\), got"):
            s.set_state(bad)
    with pytest.raises(InputError, match="must have key .* got .*another seed or stream"):
        s.set_state(Stream(4, 1).state())
    with pytest.raises(InputError, match="must have key"):
        s.set_state(Stream(3, 2).state())
    streams = Streams(3, STREAMS)
    streams["init"].uint32(1)
    state = streams.state()
    with pytest.raises(InputError, match="state must have keys"):
        streams.set_state({k: v for k, v in state.items() if k != "eval"})
    mixed = dict(state, eval=Streams(4, STREAMS).state()["eval"], init=np.array([*state["init"][:2], 50, 0],
                                                                     np.uint32))
    with pytest.raises(InputError, match=r"state\['eval'\] must have the key"):
        streams.set_state(mixed)
    assert streams["init"].state()[2] == 1  # all or nothing


def test_bad_arguments_say_what_was_expected():
    for seed in [-1, 2**63, 1.5, True, "7", None]:
        with pytest.raises(InputError, match=r"seed must be an int in \[0, 2\*\*63\), got"):
            Stream(seed, 0)
    with pytest.raises(InputError, match="stream_id must be an int"):
        Stream(0, -1)
    with pytest.raises(InputError, match="seed must be an int"):
        Streams(-5, STREAMS)
    s = Stream(0, 0)
    for dtype in [None, np.int32, "float16", np.complex64, "nonsense"]:
        with pytest.raises(InputError, match="dtype must be float32 or float64, got"):
            s.normal(3, dtype)
    for shape in [-1, (2, -1), 2.0, (2, None), "3"]:
        with pytest.raises(InputError, match="shape must be an int or a tuple of ints >= 0"):
            s.uniform(shape, np.float32)
    with pytest.raises(InputError,
                       match=r"out must have shape \(2, 3\) and dtype float32, got shape"):
        s.normal((2, 3), np.float32, out=np.empty((3, 2), np.float32))
    with pytest.raises(InputError, match="out must have shape"):
        s.normal((2, 3), np.float32, out=np.empty((2, 3), np.float64))
    with pytest.raises(InputError, match="C-contiguous"):
        s.draw_normal_into(np.empty((4, 6), np.float32)[:, ::2])
    with pytest.raises(InputError, match="out must have dtype float32 or float64, got int32"):
        s.draw_uniform_into(np.empty(3, np.int32))
    with pytest.raises(BackendError, match="out must be a numpy array"):
        s.draw_normal_into([0.0, 0.0])
    with pytest.raises(BackendError, match="xp must be the numpy or cupy module"):
        Stream(0, 0, xp=math)
    with pytest.raises(InputError, match=r"stream name must be one of \('init', 'noise'"):
        Streams(0, STREAMS)["nosie"]
    with pytest.raises(InputError, match="n must be an int"):
        s.permutation(-3)
    assert s.state()[2] == 0  # nothing above drew


def test_dtype_and_out_are_honoured():
    s = Stream(8, 4)
    for dtype in (np.float32, np.float64, "float32", np.dtype("float64")):
        assert s.normal((2, 3), dtype).dtype == np.dtype(dtype)
        assert s.uniform((2, 3), dtype).dtype == np.dtype(dtype)
    assert s.normal((), np.float32).shape == () and s.normal(0, np.float32).shape == (0,)
    assert s.uint32(5).dtype == np.uint32
    out = np.full((5, 4), np.nan, np.float32)
    assert with_counter(s, 0).normal((5, 4), np.float32, out=out) is out
    np.testing.assert_array_equal(out, with_counter(Stream(8, 4), 0).normal((5, 4), np.float32))
    assert s.draw_uniform_into(out) is out and np.all((out > 0) & (out < 1))
    np.testing.assert_array_equal(out, with_counter(Stream(8, 4), 1).uniform((5, 4), np.float32))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_uniforms_are_strictly_inside_the_unit_interval_and_uniform(dtype):
    n = 200_000
    u = Stream(11, 3).uniform(n, dtype)
    assert u.dtype == dtype
    assert u.min() > 0 and u.max() < 1
    d = np.abs(np.sort(u.astype(np.float64)) - (np.arange(1, n + 1) - 0.5) / n).max() + 0.5 / n
    assert d < 1.63 / math.sqrt(n)  # Kolmogorov-Smirnov at the 1% level


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_normal_moments_and_shape_against_the_normal_cdf(dtype):
    n = 100_000
    z = Stream(12345, 1).normal(n, dtype)
    assert z.dtype == dtype
    z = z.astype(np.float64)
    assert abs(z.mean()) < 5 / math.sqrt(n)
    assert abs(z.std() - 1) < 5 / math.sqrt(2 * n)
    cdf = 0.5 * (1 + np.array([math.erf(v / math.sqrt(2)) for v in np.sort(z)]))
    i = np.arange(1, n + 1)
    ks = max(np.max(i / n - cdf), np.max(cdf - (i - 1) / n))
    assert ks < 1.63 / math.sqrt(n)  # Kolmogorov-Smirnov at the 1% level
    # the two normals of a block (z[0::2], z[1::2]) are uncorrelated
    assert abs(np.corrcoef(z[0::2], z[1::2])[0, 1]) < 5 / math.sqrt(n / 2)
    assert np.abs(z).max() < 8.58


def test_permutation():
    s = Stream(5, 2)
    p = s.permutation(1000)
    assert p.dtype == np.int64 and p.shape == (1000,)
    np.testing.assert_array_equal(np.sort(p), np.arange(1000))
    np.testing.assert_array_equal(p, Stream(5, 2).permutation(1000))
    assert not np.array_equal(p, s.permutation(1000))
    assert Stream(5, 2).permutation(0).tolist() == []
    assert Stream(5, 2).permutation(1).tolist() == [0]
    # the documented keys: (w[2i] << 32) | w[2i + 1] from one uint32(2n) draw, stable argsort
    w = np.array(layout_values("uint32", 5, 2, 0, 2000), dtype=np.uint64)
    keys = (w[0::2] << np.uint64(32)) | w[1::2]
    np.testing.assert_array_equal(p, np.argsort(keys, kind="stable"))
    # every position is about as likely for element 0 (coarse: 2000 permutations of 4)
    first = [s.permutation(4)[0] for _ in range(2000)]
    counts = np.bincount(first, minlength=4)
    assert np.all(np.abs(counts - 500) < 5 * math.sqrt(2000 * 0.25 * 0.75))


# -- CuPy: the same streams on the GPU ---------------------------------------------------------


SIZES = [0, 1, 2, 3, 4, 5, 7, 8, 9, 255, 1023, 1024, 4097, 100_003]


def test_cupy_matches_numpy(cp):
    """Bit for bit, normals included: the transform uses only correctly rounded operations."""
    host, dev = Stream(31337, 1), Stream(31337, 1, cp)
    for n in SIZES:
        np.testing.assert_array_equal(host.uint32(n), dev.uint32(n).get())
        np.testing.assert_array_equal(host.uniform(n, np.float32), dev.uniform(n, np.float32).get())
        np.testing.assert_array_equal(host.uniform(n, np.float64), dev.uniform(n, np.float64).get())
        a, b = host.normal(n, np.float32), dev.normal(n, np.float32).get()
        assert b.dtype == np.float32
        np.testing.assert_array_equal(a.view(np.int32), b.view(np.int32), err_msg=str(n))
        a, b = host.normal(n, np.float64), dev.normal(n, np.float64).get()
        assert b.dtype == np.float64
        np.testing.assert_array_equal(a.view(np.int64), b.view(np.int64), err_msg=str(n))
    np.testing.assert_array_equal(host.state(), dev.state())
    assert host.state()[2] == 5 * len(SIZES)


def test_cupy_state_permutation_and_carry(cp):
    host, dev = Stream(2, 4), Stream(2, 4, cp)
    for s in (host, dev):
        with_counter(s, 2**32 - 1)
    np.testing.assert_array_equal(host.uint32(10), dev.uint32(10).get())
    assert dev.state().tolist()[2:] == [0, 1]
    np.testing.assert_array_equal(host.permutation(5000), dev.permutation(5000))
    out = cp.empty((7, 3), cp.float32)
    assert dev.normal((7, 3), cp.float32, out=out) is out
    np.testing.assert_array_equal(host.normal((7, 3), np.float32), out.get())
    with pytest.raises(BackendError, match="out must be a cupy array"):
        dev.draw_normal_into(np.empty(3, np.float32))
    with pytest.raises(BackendError, match="out must be a numpy array"):
        host.draw_normal_into(out)


def test_cupy_graph_replay_advances_the_stream_on_the_device(cp):
    warm = Stream(0, 0, cp)  # compile the kernels outside the capture
    warm.normal(3, cp.float32), warm.uniform(3, cp.float64)
    dev, host = Stream(99, 1, cp), Stream(99, 1)
    eps = cp.empty((64, 20), cp.float32)
    u = cp.empty(1001, cp.float64)
    stream = cp.cuda.Stream(non_blocking=True)
    with stream:
        stream.begin_capture()
        dev.draw_normal_into(eps)
        dev.draw_uniform_into(u)
        graph = stream.end_capture()
        for _ in range(3):
            graph.launch(stream)
            stream.synchronize()
            np.testing.assert_array_equal(eps.get(), host.normal((64, 20), np.float32))
            np.testing.assert_array_equal(u.get(), host.uniform(1001, np.float64))
    assert dev.state().tolist() == host.state().tolist() and host.state()[2] == 6
