"""The encoder's first layer on one BLAS thread: the listed products against the dense ones.

    python -m benchmarks.data_layer [--data-dir D] [--batches 128,512,1024] [--repeats 40]

Times, on one BLAS thread (threadpoolctl, of the ``dist`` extra) and with the Numba twins, the two products of a
784-400 first layer whose input is data: the forward x W (``ops.dense.data_matmul``) and the
weight gradient xᵀ dy (``data_weight_grad``), each once with the twin listing x's nonzeros and
skipping the zero terms and once as the dense BLAS product (the twin's density limit forced to
1 and to 0). Inputs: MNIST train batches as the harness makes them (pixels in [0, 1]), the same
binarised at 0.5, and the MNIST batch with nonzeros added at random places up to a few densities
(the listing's cost grows with the nonzeros, the dense product's does not: where they cross is
``SPARSE_DENSITY``). Medians of ``--repeats`` calls, ms; the dense column includes the count the
twin makes before it gives up on listing. Prints a Markdown table; writes nothing.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from .common import load_train_images, make_batches


def _median_ms(f, repeats):
    f()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        f()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def inputs(images, batch, rng):
    """(name, x) pairs: the MNIST batch, binarised, and with random nonzeros up to 0.25 … 0.4."""
    x = make_batches(images, batch, n_batches=1)[0]
    out = [("MNIST", x), ("MNIST binarised at 0.5", (x > 0.5).astype(np.float32))]
    for target in (0.25, 0.3, 0.4):
        y = x.copy()
        zero = y == 0
        add = zero & (rng.uniform(size=y.shape) < (target - (~zero).mean()) / zero.mean())
        y[add] = rng.uniform(0.05, 1.0, size=int(add.sum())).astype(np.float32)
        out.append((f"MNIST + random nonzeros to {target:.2f}", y))
    return out


def time_layer(x, repeats, hidden=400, seed=0):
    """{(path, product): median ms} for x (N, 784), listed and dense."""
    from scratchvae.backend import _numba_dense as twins
    from scratchvae.ops import dense

    rng = np.random.default_rng(seed)
    W = (0.05 * rng.standard_normal((x.shape[1], hidden))).astype(np.float32)
    dy = rng.standard_normal((x.shape[0], hidden)).astype(np.float32)
    out, dW = np.empty((x.shape[0], hidden), np.float32), np.empty_like(W)
    nz = np.empty((2 * x.shape[0] + 1, x.shape[1] + 1), np.int32)
    res, kept = {}, twins.SPARSE_DENSITY
    try:
        for path, limit in (("listed", 1.0), ("dense", 0.0)):
            twins.SPARSE_DENSITY = limit
            res[path, "forward"] = _median_ms(lambda: dense.data_matmul(x, W, out, nz), repeats)
            res[path, "weight grad"] = _median_ms(lambda: dense.data_weight_grad(x, dy, dW, nz), repeats)
            res[path, "listed"] = bool(nz[0, 0] >= 0)
    finally:
        twins.SPARSE_DENSITY = kept
    return res


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.data_layer", description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", help="folder holding the four MNIST IDX files (default $SCRATCHVAE_MNIST_DIR)")
    p.add_argument("--batches", default="128,512,1024", help="comma-separated batch sizes")
    p.add_argument("--repeats", type=int, default=40)
    a = p.parse_args(argv)
    from threadpoolctl import threadpool_limits

    from scratchvae.backend import NUMPY

    if not NUMPY.twins():
        raise SystemExit(f"no Numba twins ({NUMPY.twins().why}): nothing to compare")
    images, shown = load_train_images(a.data_dir)
    rng = np.random.default_rng(0)
    print(f"784-400 first layer, one BLAS thread, Numba {NUMPY.twins().version}; {shown}\n")
    print("| batch | input | nonzero | listed fwd + grad (ms) | dense fwd + grad (ms) | dense ÷ listed |")
    print("|---:|---|---:|---:|---:|---:|")
    NUMPY.set_blas_threads(1)
    with threadpool_limits(limits=1, user_api="blas"):
        for batch in (int(b) for b in a.batches.split(",")):
            for name, x in inputs(images, batch, rng):
                r = time_layer(x, a.repeats)
                assert r["listed", "listed"] and not r["dense", "listed"]
                lt, dt = r["listed", "forward"] + r["listed", "weight grad"], r["dense", "forward"] + r["dense", "weight grad"]
                print(f"| {batch} | {name} | {(x != 0).mean():.3f} | {r['listed', 'forward']:.2f} + "
                      f"{r['listed', 'weight grad']:.2f} = {lt:.2f} | {r['dense', 'forward']:.2f} + "
                      f"{r['dense', 'weight grad']:.2f} = {dt:.2f} | {dt / lt:.2f} |")


if __name__ == "__main__":
    main()
