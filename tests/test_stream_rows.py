"""A draw's rows (``Stream.rows``): a rank's rows of a batch get the numbers the whole draw puts
there, on the NumPy fill, the Numba twins and the CUDA kernels (compiled for the host), whatever
the alignment: a row that starts inside a Philox block (a Box–Muller pair's sine, a float32
uniform's later word), the importance-weighted bound's (K, B, L) ε as K row ranges, a rank with
no rows."""

import numpy as np
import pytest

from scratchvae.backend import NUMPY, _NoTwins, philox
from scratchvae.backend.random import Stream
from scratchvae.errors import InputError

from _cuda_host import HostCupy, compiler

KINDS = {"uniform32": ("draw_uniform_into", np.float32), "uniform64": ("draw_uniform_into", np.float64),
         "normal32": ("draw_normal_into", np.float32), "normal64": ("draw_normal_into", np.float64)}
SPLITS = [(0, 3, 7), (1, 4, 7), (3, 7, 7), (2, 3, 5), (0, 7, 7)]   # (start, stop, total)


def whole_and_rows(kind, groups, width, start, stop, total, d=5):
    """The whole draw's rows [start, stop) of each group, and the rows drawn alone; the counters after."""
    method, dtype = KINDS[kind]
    whole, part = Stream(11, 3), Stream(11, 3)
    for s in (whole, part):
        s.set_state(np.array([*s.key, d, 0], np.uint32))
    full = getattr(whole, method)(np.empty((groups * total, width), dtype))
    want = full.reshape(groups, total, width)[:, start:stop].reshape(-1, width)
    got = getattr(part.rows(start, stop, total), method)(np.full(((stop - start) * groups, width), np.nan, dtype))
    return want, got, whole.state(), part.state()


@pytest.mark.parametrize("twins", ["numba", "numpy"])
@pytest.mark.parametrize("kind", list(KINDS))
def test_rows_of_a_draw_are_the_whole_draws_rows_bit_for_bit(kind, twins, monkeypatch):
    if twins == "numpy":
        monkeypatch.setattr(NUMPY, "_twins", _NoTwins("test"))
    for groups in (1, 3):                                    # K = 3: the bound's ε, three row ranges
        for width in (1, 3, 5, 784):                         # odd widths: rows start inside blocks
            for start, stop, total in SPLITS:
                want, got, s_whole, s_part = whole_and_rows(kind, groups, width, start, stop, total)
                np.testing.assert_array_equal(got.view(f"u{got.itemsize}"), want.view(f"u{want.itemsize}"),
                                              err_msg=f"{kind} G={groups} w={width} rows {start}:{stop} of {total}")
                np.testing.assert_array_equal(s_part, s_whole)     # one draw: d += 1 either way


def test_a_rank_with_no_rows_draws_nothing_but_keeps_the_counter_in_step():
    s, t = Stream(1, 1), Stream(1, 1)
    s.rows(2, 2, 4).draw_normal_into(np.empty((0, 3), np.float32))
    t.normal((4, 3), np.float32)
    np.testing.assert_array_equal(s.state(), t.state())
    np.testing.assert_array_equal(s.normal(5, np.float64), t.normal(5, np.float64))


def test_rows_refuse_what_does_not_fit():
    s = Stream(0, 0)
    with pytest.raises(InputError, match="whole blocks of 2 rows of 3 values"):
        s.rows(1, 3, 4).draw_normal_into(np.empty((3, 3), np.float32))
    with pytest.raises(InputError, match="stop must be an int in"):
        s.rows(0, 5, 4)
    with pytest.raises(InputError, match="start must be an int in"):
        s.rows(3, 2, 4)


@pytest.mark.skipif(compiler() is None, reason="no host C++ compiler")
@pytest.mark.parametrize("grid", [1, 3])
def test_the_cuda_kernels_fill_any_range_of_a_draw_as_numpy(grid):
    """Every generating kernel of PHILOX_CUDA_SRC, values first .. first + n − 1 of a draw, bit for
    bit with the same values of the whole NumPy draw."""
    cp, d = HostCupy(), 2**32 + 7
    draws = {"philox_uint32": lambda s, n: s.uint32(n),
             "philox_uniform_f32": lambda s, n: s.uniform(n, np.float32),
             "philox_uniform_f64": lambda s, n: s.uniform(n, np.float64),
             "philox_normal_f32": lambda s, n: s.normal(n, np.float32),
             "philox_normal_f64": lambda s, n: s.normal(n, np.float64)}
    for name, host_draw in draws.items():
        kernel = cp.RawKernel(philox.PHILOX_CUDA_SRC, name, options=philox.CUDA_OPTIONS)
        s = Stream(77, 4)
        s.set_state(np.array([*s.key, d & 0xFFFFFFFF, d >> 32], np.uint32))
        whole = host_draw(s, 200)
        for first, n in ((0, 200), (1, 6), (3, 1), (5, 150), (2, 0), (199, 1)):
            out = np.zeros(n, whole.dtype)
            dev_d = np.array([d & 0xFFFFFFFF, d >> 32], np.uint32)
            kernel((grid,), (32,), (np.uint32(s.key[0]), np.uint32(s.key[1]), dev_d, out, np.uint64(n),
                                    np.uint64(first)))
            bits = f"u{out.itemsize}"
            np.testing.assert_array_equal(out.view(bits), whole[first:first + n].view(bits), err_msg=f"{name} {first}+{n}")
