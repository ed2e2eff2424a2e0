"""The encoder's first layer on data that is mostly zeros: ``data_matmul`` / ``data_weight_grad``.

Their NumPy bodies are the dense products; the Numba twins list each row's nonzero columns and
skip the zero terms, where the BLAS runs one thread and few entries are nonzero. These tests
pin that policy down (``blas_threads`` patched, so they hold on any machine), check the listed
products against the dense ones in float32 and float64, and check the whole model's
gradients through the listed path against central differences.
"""

import numpy as np
import pytest

from scratchvae import VAE, gradcheck_model
from scratchvae.backend import NUMPY
from scratchvae.backend import _numba_dense
from scratchvae.backend._numba_dense import SPARSE_DENSITY
from scratchvae.ops.dense import data_matmul, data_weight_grad

pytest.importorskip("numba")


@pytest.fixture
def twins():
    tw = NUMPY.twins()
    if not tw:
        pytest.skip(f"no Numba twins: {tw.why}")
    return tw


@pytest.fixture
def one_thread(twins, monkeypatch):
    """The twins as they run where the BLAS has one thread (a rank of a run that fills the cores)."""
    monkeypatch.setattr(NUMPY, "blas_threads", 1)
    return twins


def set_threads(monkeypatch, threads):
    """The BLAS's threads as the twins will read them: told, or (None) nothing says."""
    monkeypatch.setattr(NUMPY, "blas_threads", threads)
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(_numba_dense.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)


def sparse(rng, shape, density, dtype):
    """Values in (0, 1] at a random ``density`` of the entries, exact zeros elsewhere."""
    x = rng.uniform(0.05, 1.0, size=shape) * (rng.uniform(size=shape) < density)
    return x.astype(dtype)


def buffers(x, O):
    N, I = x.shape
    return np.empty((N, O), x.dtype), np.empty((I, O), x.dtype), np.full((2 * N + 1, I + 1), -7, np.int32)


@pytest.mark.parametrize("dtype, tol", [(np.float32, 1e-5), (np.float64, 1e-13)])
def test_the_listed_products_are_the_dense_ones(one_thread, dtype, tol):
    rng = np.random.default_rng(0)
    x = sparse(rng, (9, 31), 0.15, dtype)
    x[2] = 0                                   # a row with nothing listed
    x[4, [0, 30]] = 0.5                        # the first and the last column
    x[6] = 0
    x[6, 7] = 1.0
    W, dy = rng.normal(size=(31, 13)).astype(dtype), rng.normal(size=(9, 13)).astype(dtype)
    out, dW, nz = buffers(x, 13)
    assert data_matmul(x, W, out, nz) is out
    for n in range(9):                         # the list: each row's nonzero columns, ascending
        cols = np.flatnonzero(x[n])
        assert nz[n, 0] == cols.size
        np.testing.assert_array_equal(nz[n, 1:1 + cols.size], cols)
    assert data_weight_grad(x, dy, dW, nz) is dW
    dense_y, dense_dW = x.astype(np.float64) @ W, x.T.astype(np.float64) @ dy
    assert np.abs(out - dense_y).max() <= tol * np.abs(dense_y).max()
    assert np.abs(dW - dense_dW).max() <= tol * np.abs(dense_dW).max()
    assert not out[2].any() and np.array_equal(out[6], x[6, 7] * W[7])
    assert not dW[np.flatnonzero(~x.any(axis=0))].any()      # columns no row lists: dW rows stay 0


@pytest.mark.parametrize("dtype, tol", [(np.float32, 1e-5), (np.float64, 1e-13)])
def test_long_rows_and_columns_take_the_fourfold_loops_and_their_remainders(one_thread, dtype, tol):
    """Row 3 lists all 23 columns (five times four and three more), column 5 all 37 rows (nine
    times four and one more): the forward's and the backward's unrolled loops and their tails."""
    rng = np.random.default_rng(5)
    x = sparse(rng, (37, 23), 0.12, dtype)
    x[3] = rng.uniform(0.05, 1.0, size=23)
    x[:, 5] = rng.uniform(0.05, 1.0, size=37)
    assert np.count_nonzero(x) <= SPARSE_DENSITY * x.size
    W, dy = rng.normal(size=(23, 11)).astype(dtype), rng.normal(size=(37, 11)).astype(dtype)
    out, dW, nz = buffers(x, 11)
    data_matmul(x, W, out, nz)
    data_weight_grad(x, dy, dW, nz)
    col = nz[37:].reshape(-1)                  # the backward's list by column: starts, then rows
    for i in range(23):
        np.testing.assert_array_equal(col[24 + col[i]:24 + col[i + 1]], np.flatnonzero(x[:, i]))
    dense_y, dense_dW = x.astype(np.float64) @ W, x.T.astype(np.float64) @ dy
    assert np.abs(out - dense_y).max() <= tol * np.abs(dense_y).max()
    assert np.abs(dW - dense_dW).max() <= tol * np.abs(dense_dW).max()


@pytest.mark.parametrize("why", ["dense data", "two BLAS threads", "threads unknown", "float16"])
def test_the_twin_runs_the_dense_product_where_listing_does_not_pay(twins, monkeypatch, why):
    rng = np.random.default_rng(1)
    threads = {"two BLAS threads": 2, "threads unknown": None}.get(why, 1)
    set_threads(monkeypatch, threads)
    density = min(1.0, SPARSE_DENSITY + 0.3) if why == "dense data" else 0.1
    x = sparse(rng, (40, 50), density, np.float16 if why == "float16" else np.float32)
    W, dy = rng.normal(size=(50, 8)).astype(x.dtype), rng.normal(size=(40, 8)).astype(x.dtype)
    out, dW, nz = buffers(x, 8)
    data_matmul(x, W, out, nz)
    assert nz[0, 0] == -1                      # nothing listed: the backward runs the dense product too
    data_weight_grad(x, dy, dW, nz)
    np.testing.assert_array_equal(out, np.matmul(x, W))
    np.testing.assert_array_equal(dW, np.matmul(x.T, dy))


def test_a_backward_whose_forward_listed_nothing_runs_the_dense_product(one_thread):
    rng = np.random.default_rng(2)
    x = sparse(rng, (6, 10), 0.1, np.float32)
    dy = rng.normal(size=(6, 4)).astype(np.float32)
    _, dW, nz = buffers(x, 4)
    nz[0, 0] = -1
    np.testing.assert_array_equal(data_weight_grad(x, dy, dW, nz), np.matmul(x.T, dy))


def test_the_bodies_mark_the_list_unused(monkeypatch):
    from scratchvae.backend import _NoTwins

    monkeypatch.setattr(NUMPY, "_twins", _NoTwins("switched off for this test"))
    x = np.zeros((3, 5), np.float32)
    x[1, 2] = 1.0
    out, _, nz = buffers(x, 2)
    W = np.arange(10, dtype=np.float32).reshape(5, 2)
    np.testing.assert_array_equal(data_matmul(x, W, out, nz), x @ W)
    assert nz[0, 0] == -1


def test_blas_threads_is_what_the_backend_was_told_else_the_environment(monkeypatch):
    set_threads(monkeypatch, None)
    threads = _numba_dense.blas_threads
    assert threads(None) is None                           # nothing says: the dense product
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert threads(None) == 2
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "1")
    assert threads(None) == 1                              # OpenBLAS's own variable first
    assert threads(4) == 4                                 # told (the ranks' limit_threads) wins
    monkeypatch.delenv("OPENBLAS_NUM_THREADS")
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.setattr(_numba_dense.os, "sched_getaffinity", lambda pid: {0}, raising=False)
    assert threads(None) == 1                              # one core


def test_the_twins_read_what_the_backend_was_told(twins, monkeypatch):
    set_threads(monkeypatch, None)
    rng = np.random.default_rng(3)
    x = sparse(rng, (8, 20), 0.1, np.float32)
    W = rng.normal(size=(20, 4)).astype(np.float32)
    out, _, nz = buffers(x, 4)
    NUMPY.set_blas_threads(1)
    data_matmul(x, W, out, nz)
    assert nz[0, 0] >= 0
    NUMPY.set_blas_threads(2)
    data_matmul(x, W, out, nz)
    assert nz[0, 0] == -1


def test_the_ranks_thread_limit_tells_the_backend(monkeypatch):
    pytest.importorskip("threadpoolctl")
    from scratchvae import comm

    monkeypatch.setattr(NUMPY, "blas_threads", None)
    monkeypatch.setattr(comm.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    import threadpoolctl

    with threadpoolctl.threadpool_limits(limits=None):     # restores the BLAS's threads after
        assert comm.limit_threads(2, environ={})["blas_threads"] == 1
        assert NUMPY.blas_threads == 1
    assert comm.limit_threads(2, environ={"OMP_NUM_THREADS": "1"})["blas_threads"] == "as the environment sets them"


def sparse_model(dtype, **kw):
    rng = np.random.default_rng(5)
    m = VAE(input_dim=24, hidden=(7,), latent=3, activation="tanh", dtype=dtype, seed=5, **kw)
    m.set_params({k: rng.normal(size=s) * (1.5 / np.sqrt(s[0]) if len(s) == 2 else 0.3)
                  for k, s in m.shapes.items()})
    x = sparse(rng, (6, 24), 0.2, dtype)
    return m, x


@pytest.mark.parametrize("kw", [{}, {"objective": "iwae", "iw_samples": 3}, {"posterior": "full"}],
                         ids=["elbo", "iwae", "full"])
def test_model_gradients_through_the_listed_first_layer(one_thread, kw):
    m, x = sparse_model("float64", **kw)
    err = gradcheck_model(m, x)
    assert m.workspace(6).enc.nonzeros[0, 0] >= 0          # the listed path ran
    assert max(err.values()) <= 1e-7, err


def test_float32_step_through_the_listed_first_layer_is_the_bodies_step(one_thread, monkeypatch):
    from scratchvae.backend import _NoTwins

    m, x = sparse_model("float32")
    eps = m.noise(6, m.rng["noise"])
    listed = m.loss_and_grads(x, eps=eps)
    assert m.workspace(6).enc.nonzeros[0, 0] >= 0
    got = {k: np.array(v) for k, v in listed.grads.items()}
    loss = float(listed.objective)
    monkeypatch.setattr(NUMPY, "_twins", _NoTwins("switched off for this test"))
    dense = m.loss_and_grads(x, eps=eps)
    assert loss == pytest.approx(float(dense.objective), rel=1e-6)
    for k, g in dense.grads.items():
        assert np.abs(got[k] - g).max() <= 1e-5 * max(np.abs(g).max(), 1e-6), k
