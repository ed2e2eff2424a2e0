"""GPU step times: eager CuPy vs the CUDA-graph step, and the GEMM floor on the same GEMM path.

python tools/gpu_timing.py [batch ...]   (default 128 4096). CUDA events around S steps after
W warm-up steps; float32; 784-400-20 Bernoulli VAE with Adam, as the PyTorch example.
"""
import sys
import time

import numpy as np

from scratchvae import VAE
from scratchvae.backend import get_backend
from scratchvae.backend.graph import StepGraphs
from scratchvae.optim import Adam
from scratchvae.ops.dense import matmul, sum_rows
from scratchvae.step import make_graph_step


def timed(cp, fn, warm, steps):
    for i in range(warm):
        fn(i)
    cp.cuda.runtime.deviceSynchronize()
    e0, e1 = cp.cuda.Event(), cp.cuda.Event()
    t0 = time.perf_counter()
    e0.record()
    for i in range(steps):
        fn(i)
    e1.record()
    e1.synchronize()
    wall = (time.perf_counter() - t0) * 1e3 / steps
    return cp.cuda.get_elapsed_time(e0, e1) / steps, wall


def main(sizes):
    import cupy as cp

    print(f"device: {cp.cuda.runtime.getDeviceProperties(0)['name'].decode()}  cupy {cp.__version__}")
    rows = []
    for B in sizes:
        rng = np.random.default_rng(0)
        xs = [cp.asarray((rng.uniform(size=(B, 784)) < 0.3).astype(np.float32)) for _ in range(4)]
        steps = 1000 if B <= 512 else 200
        res = {}
        m = VAE(hidden=(400,), latent=20, seed=0, backend="cupy")
        opt = Adam(m.theta)

        def eager(i):
            m.loss_and_grads(xs[i % 4])
            opt.step(m.grad)
        res["eager"] = timed(cp, eager, 20, steps)
        m2 = VAE(hidden=(400,), latent=20, seed=0, backend="cupy")
        step = make_graph_step(m2, Adam(m2.theta), xs[0])
        res["graph"] = timed(cp, lambda i: step(xs[i % 4]), 20, steps)
        assert step.graphs.failed is None, step.graphs.failed
        W1, Wh, Wd, Wo = (m.params[k] for k in ("enc.0.W", "enc.head.W", "dec.0.W", "dec.out.W"))
        e = lambda *s: cp.asarray(rng.normal(size=s).astype(np.float32))  # noqa: E731
        h, ml, z, g, y = e(B, 400), e(B, 40), e(B, 20), e(B, 400), e(B, 784)
        dy, dpre, dml, dpre1 = e(B, 784), e(B, 400), e(B, 40), e(B, 400)
        dWo, dWd, dWh, dW1, dg, dz, dh = e(400, 784), e(20, 400), e(400, 40), e(784, 400), e(B, 400), e(B, 20), e(B, 400)

        def products(i, mm):
            x = xs[i % 4]
            mm(x, W1, out=h); mm(h, Wh, out=ml); mm(z, Wd, out=g); mm(g, Wo, out=y)
            mm(g.T, dy, out=dWo); mm(z.T, dpre, out=dWd); mm(h.T, dml, out=dWh); mm(x.T, dpre1, out=dW1)
            mm(dy, Wo.T, out=dg); mm(dpre, Wd.T, out=dz); mm(dml, Wh.T, out=dh)
        res["gemm floor eager (scratchvae cuBLAS path)"] = timed(cp, lambda i: products(i, matmul), 20, steps)
        res["gemm floor eager (cupy.matmul)"] = timed(cp, lambda i: products(i, cp.matmul), 20, steps)
        sg = StepGraphs(get_backend("cupy"))   # the same 11 GEMMs captured: GPU time, no launch gaps
        res["gemm floor, graph (scratchvae cuBLAS path)"] = timed(
            cp, lambda i: sg.run("floor", lambda: products(0, matmul)), 20, steps)
        res["4 bias grads (ones @ dy), graph"] = timed(
            cp, lambda i: sg.run("db", lambda: (sum_rows(dy), sum_rows(dpre), sum_rows(dml), sum_rows(dpre1))),
            20, steps)
        assert sg.failed is None, sg.failed
        for k, (ms, wall) in res.items():
            rows.append((B, k, ms, wall))
        rows.append((B, "graph speed-up over eager", res["eager"][0] / res["graph"][0], None))
        rows.append((B, "gemm floor (graph) / graph step", res["gemm floor, graph (scratchvae cuBLAS path)"][0]
                     / res["graph"][0], None))
    print(f"{'batch':>6}  {'what':40s} {'ms/step (events)':>17} {'wall ms/step':>13}")
    for B, k, a, b in rows:
        print(f"{B:6d}  {k:40s} {a:17.4f} {'' if b is None else f'{b:13.4f}'}")


if __name__ == "__main__":
    main([int(s) for s in sys.argv[1:]] or [128, 4096])
