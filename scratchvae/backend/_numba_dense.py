"""Numba twins of the encoder's first layer on data (``ops/dense.py``: ``data_matmul``,
``data_weight_grad``): the products summed over x's nonzero entries only, and when to.

MNIST's pixels are mostly zeros, and a zero term adds nothing to x W or to xᵀ dy. The forward lists
each row's nonzero columns (branch-free) into the ``nonzeros`` buffer the stack keeps and sums W's
rows of those columns into an (O,) accumulator that stays in L1; the backward turns the list around
(each column's rows) and sums x_ni dy_n into dW's row i while that row stays in L1. Both sum in
ascending column (forward) and row (backward) order, so they differ from the BLAS's dense products
in float32 rounding (``tests/test_data_layer.py``). Where listing does not pay (the BLAS runs more
than one thread, more than ``SPARSE_DENSITY`` of x nonzero, arrays off the fast path) the launchers
in :class:`._numba_kernels.Twins` run the bodies, the dense products. Measurements:
``docs/design-notes.md`` and ``python -m benchmarks.data_layer``.
"""

from __future__ import annotations

import os

import numpy as np
from numba import njit

from ._numba_math import JIT

SPARSE_DENSITY = 0.25
"""The largest fraction of nonzero entries of x at which the ``data_matmul`` twin lists them and
skips the zeros: on one thread at 784-400 the listed products and the dense ones cost the same
between a quarter and 0.3 nonzero at batch 512 and 1024, between 0.3 and 0.4 at 128
(``python -m benchmarks.data_layer``, table in benchmarks/README.md; MNIST's pixels are 19 %
nonzero, binarised 13 %)."""


@njit(**JIT)
def _list_nonzeros(x, nz, limit):
    """nz[n, 0] = c, the count of row n's nonzero x[n, i], and nz[n, 1:1 + c] those i in
    ascending order; returns Σ_n c, or stops at the first row that takes it past ``limit``
    and returns that partial count (the list is then not used)."""
    total = 0
    for n in range(x.shape[0]):
        if total > limit:
            break
        c = 0
        for i in range(x.shape[1]):      # branchless: i is written at c + 1 and kept if x[n, i] ≠ 0
            nz[n, c + 1] = i
            c += x[n, i] != 0
        nz[n, 0] = c
        total += c
    return total


@njit(fastmath={"contract"}, **JIT)
def _rows_of_listed(x, nz, W, out):
    """out[n] = Σ_k x[n, i_k] W[i_k] over row n's listed columns i_k, in ascending i (into a
    (O,) accumulator that stays in L1, then copied): the product x W without its zero terms.
    Four listed columns at a time, so acc[j] is loaded and stored once for four rows of W, not
    once for each (the loop is bound by those loads and stores); the order of the sum is the
    same, so are the bits."""
    acc = np.empty(W.shape[1], W.dtype)
    for n in range(x.shape[0]):
        for j in range(acc.size):
            acc[j] = 0
        c, k = nz[n, 0], 1
        while k + 3 <= c:
            i0, i1, i2, i3 = nz[n, k], nz[n, k + 1], nz[n, k + 2], nz[n, k + 3]
            v0, v1, v2, v3 = x[n, i0], x[n, i1], x[n, i2], x[n, i3]
            for j in range(acc.size):
                a = acc[j]
                a += v0 * W[i0, j]
                a += v1 * W[i1, j]
                a += v2 * W[i2, j]
                a += v3 * W[i3, j]
                acc[j] = a
            k += 4
        for k in range(k, c + 1):
            i = nz[n, k]
            v = x[n, i]
            for j in range(acc.size):
                acc[j] += v * W[i, j]
        for j in range(acc.size):
            out[n, j] = acc[j]


@njit(**JIT)
def _by_column(nz, n_rows, n_cols):
    """The row-order list nz[:n_rows] (``_list_nonzeros``) again in column order, into the flat
    rest of nz: col[i] … col[i + 1] − 1 index, in col[n_cols + 1:], the rows n (ascending) that
    list column i. Fits whatever the density: N I + N + I + 1 ≥ (I + 1) + Σ_n c_n."""
    col = nz[n_rows:].reshape(-1)
    for i in range(n_cols + 1):
        col[i] = 0
    for n in range(n_rows):
        for k in range(1, nz[n, 0] + 1):
            col[nz[n, k] + 1] += 1
    for i in range(n_cols):                       # col[i] = where column i's rows start
        col[i + 1] += col[i]
    for n in range(n_rows):                       # rows ascending; col[i] moves on to col[i + 1]'s start
        for k in range(1, nz[n, 0] + 1):
            i = nz[n, k]
            col[n_cols + 1 + col[i]] = n
            col[i] += 1
    for i in range(n_cols, 0, -1):                # back to the starts
        col[i] = col[i - 1]
    col[0] = 0
    return col


@njit(fastmath={"contract"}, **JIT)
def _grad_of_listed(x, nz, dy, dW):
    """dW[i] = Σ_n x[n, i] dy[n] over the rows n that list column i, in ascending n: xᵀ dy
    without its zero terms (the rows of dW no row lists stay 0). Column by column (the list
    again in column order, ``_by_column``), so dW[i] stays in L1 while its rows are summed in,
    four rows of dy at a time (one load and store of dW[i, j] for four, as in the forward)."""
    col = _by_column(nz, x.shape[0], x.shape[1])
    rows = col[x.shape[1] + 1:]
    for i in range(dW.shape[0]):
        for j in range(dW.shape[1]):
            dW[i, j] = 0
        p, end = col[i], col[i + 1]
        while p + 4 <= end:
            n0, n1, n2, n3 = rows[p], rows[p + 1], rows[p + 2], rows[p + 3]
            v0, v1, v2, v3 = x[n0, i], x[n1, i], x[n2, i], x[n3, i]
            for j in range(dW.shape[1]):
                a = dW[i, j]
                a += v0 * dy[n0, j]
                a += v1 * dy[n1, j]
                a += v2 * dy[n2, j]
                a += v3 * dy[n3, j]
                dW[i, j] = a
            p += 4
        for p in range(p, end):
            n = rows[p]
            v = x[n, i]
            for j in range(dW.shape[1]):
                dW[i, j] += v * dy[n, j]


def blas_threads(told):
    """The threads numpy's BLAS runs: ``told`` (what the backend was told,
    ``Backend.set_blas_threads``, which the ranks' ``limit_threads`` calls), else what
    ``OPENBLAS_NUM_THREADS`` / ``OMP_NUM_THREADS`` say, else 1 where this process may use one core;
    None where nothing says."""
    if told is not None:
        return told
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"):
        if os.environ.get(var, "").strip().isdigit():
            return int(os.environ[var])
    return 1 if hasattr(os, "sched_getaffinity") and len(os.sched_getaffinity(0)) == 1 else None


def _list_buffer(nonzeros, x):
    return (isinstance(nonzeros, np.ndarray) and nonzeros.dtype == np.int32 and nonzeros.flags.c_contiguous
            and nonzeros.shape == (2 * x.shape[0] + 1, x.shape[1] + 1))


def listed_product(x, W, out, nonzeros):
    """out = x W summed over x's nonzeros, listed into ``nonzeros``, if x (N, I) is at most
    ``SPARSE_DENSITY`` nonzero; False (nothing computed) where it is not or the shapes do not
    fit. The arrays are on the fast path (C-contiguous, one float dtype)."""
    if x.ndim != 2 or not x.shape[0] or W.shape[0] != x.shape[1] or out.shape != (x.shape[0], W.shape[1]):
        return False
    limit = int(SPARSE_DENSITY * x.size)
    if not _list_buffer(nonzeros, x) or _list_nonzeros(x, nonzeros, limit) > limit:
        return False
    _rows_of_listed(x, nonzeros, W, out)
    return True


def listed_weight_grad(x, dy, out, nonzeros):
    """out = xᵀ dy over the nonzeros the forward listed; False where it listed none (column 0 of
    row 0 is −1) or the shapes do not fit."""
    ok = (x.ndim == 2 and x.shape[0] and dy.shape[0] == x.shape[0] and out.shape == (x.shape[1], dy.shape[1])
          and _list_buffer(nonzeros, x) and nonzeros[0, 0] >= 0)
    if ok:
        _grad_of_listed(x, nonzeros, dy, out)
    return bool(ok)
