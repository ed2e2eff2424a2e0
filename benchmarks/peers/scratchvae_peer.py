"""scratchvae's peers: ``scratchvae-numpy`` (CPU, the NumPy bodies), ``scratchvae-numba`` (CPU,
the fused blocks' Numba twins: the ``fast`` extra), ``scratchvae-cupy`` (GPU eager) and
``scratchvae-cupy-graph`` (GPU, the whole step as one CUDA graph), plus the GEMM floor.

Timed step (every peer here): ``model.loss_and_grads(x)`` — ε drawn by the model's 'noise'
stream inside, forward including the scalar loss, backward — then ``Adam.step(model.grad)``;
the model in the run's precision (``VAE(precision=...)``: fp32, tf32 or bf16; NumPy: fp32 only);
the step's 0-d objective is stored into a preallocated loss array (on CuPy a device copy,
no host sync). NumPy: wall clock around the loop. CuPy: CUDA events around the loop, then
one synchronize (the wall clock is recorded too).
"""

from __future__ import annotations

import os
import time

import numpy as np

from ..common import (ADAM_EPS, BETAS, CHECK_TOL, D, H, L, LR, PARAM_SHAPES, Skip,
                      openblas_runtime, peak_rss_bytes, steps_summary, thread_env)

GRAPH_TOL_F32 = 1e-5


def _backend(peer):
    if peer in ("scratchvae-numpy", "scratchvae-numba"):
        _fast_path(peer == "scratchvae-numba")
        return "numpy"
    from scratchvae.backend import cupy_usable

    if not cupy_usable():
        raise Skip("CuPy is not installed or sees no usable CUDA GPU")
    return "cupy"


def _fast_path(on):
    """Set this process's NumPy backend to the Numba twins (``on``) or to the NumPy bodies, whatever
    the environment says (``SCRATCHVAE_NUMBA``, read at the first block call); Skip if the twins
    cannot run here."""
    os.environ["SCRATCHVAE_NUMBA"] = "1" if on else "0"
    from scratchvae.backend import NUMPY

    twins = NUMPY.twins() if hasattr(NUMPY, "twins") else {}
    if on and not twins:
        raise Skip(f"no Numba twins: {getattr(twins, 'why', 'this scratchvae has none')}")


def _versions(backend):
    import scratchvae

    v = {"scratchvae": scratchvae.__version__, "numpy": np.__version__}
    if backend == "numpy":
        from scratchvae.backend import NUMPY

        fast = NUMPY.describe()
        if fast.get("fast_path"):
            v["numba"] = fast["numba"]
    if backend == "cupy":
        import cupy

        v["cupy"] = cupy.__version__
        v["cuda_runtime"] = cupy.cuda.runtime.runtimeGetVersion()
        v["gpu"] = _gpu_name(cupy)
    return v


def _gpu_name(cupy):
    name = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)["name"]
    return name.decode() if isinstance(name, bytes) else str(name)


def _model(dtype, backend, params, precision="fp32"):
    from scratchvae import VAE

    if precision != "fp32" and backend == "numpy":
        raise Skip(f"the numpy backend computes fp32 only, not {precision}")
    model = VAE(input_dim=D, hidden=(H,), latent=L, activation="relu", likelihood="bernoulli",
                dtype=dtype, seed=0, backend=backend, precision=precision)
    model.set_params(params)
    return model


def _adam(model):
    from scratchvae import Adam

    return Adam(model.theta, lr=LR, betas=BETAS, eps=ADAM_EPS)


# -- the CUDA-graph step ------------------------------------------------------------------------
def make_graph_step(model, opt, x_example):
    """``scratchvae.train.make_graph_step``: ``step(x)`` replays the captured training step on
    batch ``x`` and returns its −ELBO as a 0-d device array; the gradients stay in
    ``model.grad`` (the same-work check reads them there)."""
    from scratchvae.train import make_graph_step as factory

    return factory(model, opt, x_example)


def graph_fallback(step):
    """Why the graph step runs eagerly (its capture failed), or None while it replays a graph."""
    return step.graphs.failed


def _sync(xp):
    """Wait for all device work (the graph replays on a stream of its own)."""
    if xp.__name__ == "cupy":
        xp.cuda.Device().synchronize()


# -- same work -----------------------------------------------------------------------------
def check(spec):
    peer = spec["peer"]
    backend = _backend(peer)
    z = np.load(spec["inputs"])
    params = {k: z[f"param/{k}"] for k in PARAM_SHAPES}
    if peer == "scratchvae-cupy-graph":
        return _check_graph(params, z["x"])
    model = _model("float64", backend, params)
    b = model.backend
    r = model.loss_and_grads(b.asarray(z["x"]), eps=b.asarray(z["eps"]))
    out = {"loss": b.to_host(r.objective)}
    out.update({f"grad/{k}": b.to_host(v) for k, v in model.grads.items()})
    np.savez(spec["grads_out"], **out)
    return {"status": "ok", "dtype": "float64", "versions": _versions(backend)}


def _check_graph(params, x64):
    """One graph replay against one eager CuPy step from the same parameters and Philox ε.

    The first ``step(x)`` runs one eager step and captures the graph; the second is the first
    replay, and that is the one compared. float64 (bound 1e-10) if the graph takes a float64
    model, else float32 (bound 1e-5, as in issue 5's float32 parity). The eager CuPy step is
    itself checked against numpy.
    """
    failures = []
    for dtype, tol in (("float64", CHECK_TOL), ("float32", GRAPH_TOL_F32)):
        try:
            gm = _model(dtype, "cupy", params)
            x = gm.backend.asarray(x64.astype(dtype))
            step = make_graph_step(gm, _adam(gm), x)
            step(x)                       # eager warm-up step + capture
            _sync(gm.xp)
        except Skip:
            raise
        except Exception as err:  # e.g. the graph supports float32 only
            failures.append(f"{dtype}: {type(err).__name__}: {err}")
            continue
        why = graph_fallback(step)
        if why is not None:
            failures.append(f"{dtype}: capture failed: {why}")
            continue
        break
    else:
        raise Skip("the graph step could not be built: " + "; ".join(failures))
    xp = gm.xp
    theta0 = gm.theta.copy()
    noise0 = gm.rng["noise"].state()
    gm.grad[...] = xp.nan
    _sync(xp)
    loss = step(x)                        # the first replay
    _sync(xp)
    ref = _model(dtype, "cupy", params)
    ref.theta[...] = theta0
    ref.rng["noise"].set_state(noise0)
    r = ref.loss_and_grads(x)
    errors = {k: _rel(gm.grads[k], ref.grads[k]) for k in PARAM_SHAPES}
    if loss is not None:
        errors["loss"] = _rel(loss, r.objective)
    return {"status": "ok", "dtype": dtype, "tol": tol, "errors": errors,
            "reference": "one eager scratchvae-cupy step, same parameters and Philox ε",
            "notes": failures, "versions": _versions("cupy")}


def _rel(a, ref):
    from ..common import rel_err

    return rel_err(_host(a), _host(ref))


def _host(a):
    return a.get() if hasattr(a, "get") else np.asarray(a)


# -- timing --------------------------------------------------------------------------------
class _WallTimer:
    """perf_counter around the loop (NumPy runs synchronously)."""

    name = "wall clock (time.perf_counter) around the loop"

    def start(self):
        self.t0 = time.perf_counter()

    def stop(self):
        wall = (time.perf_counter() - self.t0) * 1e3
        return wall, wall


class _CupyTimer:
    """CUDA events around the loop on the current stream, then one synchronize."""

    name = ("CUDA events (cupy.cuda.Event) on the legacy default stream around the loop (the graph's "
            "blocking stream is ordered with it), device synchronized after")

    def __init__(self, cupy):
        self.cp = cupy

    def start(self):
        self.cp.cuda.Device().synchronize()
        self.t0 = time.perf_counter()
        self.e0 = self.cp.cuda.Event()
        self.e0.record()

    def stop(self):
        e1 = self.cp.cuda.Event()
        e1.record()
        e1.synchronize()
        self.cp.cuda.Device().synchronize()
        wall = (time.perf_counter() - self.t0) * 1e3
        return self.cp.cuda.get_elapsed_time(self.e0, e1), wall


def time_ranked(spec):
    """``scratchvae-numba`` on MPI ranks (run by ``mpiexec -n R``): each rank its rows of every
    batch (its rows of ε: ``Stream.rows``), ``loss_and_grads``, the gradient and the loss summed
    over the ranks in place (:mod:`scratchvae.comm`, as ``fit`` does), ``Adam.step``. Rank 0 times
    the loop (every step synchronises the ranks) and reports; the other ranks return None."""
    from scratchvae.comm import world

    comm, B = world(), spec["batch"]
    _fast_path(True)
    z = np.load(spec["params"])
    model = _model("float32", "numpy", {k: z[k] for k in PARAM_SHAPES})
    opt = _adam(model)
    lo, hi = comm.rows(B)
    xs = [np.ascontiguousarray(xb[lo:hi], dtype=np.float32) for xb in np.load(spec["batches"])]
    noise, row = model.rng["noise"].rows(lo, hi, B), np.zeros(1)
    W, S = spec["warmup"], spec["steps"]
    losses = np.full(W + S, np.nan)

    def step(i):
        r = model.loss_and_grads(xs[i % len(xs)], noise=noise)
        comm.sum_(model.grad)
        row[0] = r.objective
        losses[i] = comm.sum_(row)[0]
        opt.step(model.grad)
    for i in range(W):
        step(i)
    comm.sum_(np.zeros(1))                       # every rank at the start line
    timer = _WallTimer()
    timer.start()
    for i in range(W, W + S):
        step(i)
    ms, wall = timer.stop()
    if comm.rank:
        return None
    return {"status": "ok", "peer": spec["peer"], "batch": B, "device": "cpu", "ms_per_step": ms / S,
            "wall_ms_per_step": wall / S, "timer": timer.name, "steps": S, "warmup": W, "dtype": "float32",
            "loss_forced": "each rank's loss summed over the ranks (an all-reduce) and stored per step",
            "precision_setting": "VAE(precision='fp32')", "ranks": comm.describe(),
            "peak_rss_bytes": peak_rss_bytes(), "threads": thread_env(), "versions": _versions("numpy"),
            "blas": openblas_runtime(), "peak_mem_bytes": peak_rss_bytes(), "peak_mem_kind": "ru_maxrss of rank 0",
            **steps_summary(losses[W:] / B)}


def time_peer(spec):
    peer, B = spec["peer"], spec["batch"]
    backend = _backend(peer)
    batches = np.load(spec["batches"])
    z = np.load(spec["params"])
    params = {k: z[k] for k in PARAM_SHAPES}
    precision = spec.get("precision", "fp32")
    model = _model("float32", backend, params, precision)
    opt = _adam(model)
    xp, b = model.xp, model.backend
    assert model.theta.dtype == np.float32 and model.grad.dtype == np.float32, "float32 expected"
    xs = [b.asarray(xb) for xb in batches]
    assert all(x.dtype == np.float32 and x.shape == (B, D) for x in xs)
    W, S = spec["warmup"], spec["steps"]
    losses = xp.full(W + S, xp.nan, dtype=xp.float32)
    timer = _WallTimer() if backend == "numpy" else _CupyTimer(xp)
    if backend == "cupy":
        pool = xp.get_default_memory_pool()

    if peer == "scratchvae-cupy-graph":
        gstep = make_graph_step(model, opt, xs[0])

        def step(i):
            losses[i] = gstep(xs[i % len(xs)])
        forced = "the graph's loss output copied into a device array per step; no host sync"
    else:
        def step(i):
            r = model.loss_and_grads(xs[i % len(xs)])
            opt.step(model.grad)
            losses[i] = r.objective
        forced = ("loss computed inside loss_and_grads (NumPy: eager) and stored per step"
                  + ("; CuPy: device copy, no host sync" if backend == "cupy" else ""))

    t0 = time.perf_counter()
    step(0)                           # compiles (CuPy, Numba) or loads compiled code from the cache
    first_ms = (time.perf_counter() - t0) * 1e3
    for i in range(1, W):
        step(i)
    if peer == "scratchvae-cupy-graph":
        why = graph_fallback(gstep)
        if why is not None:
            raise Skip(f"the CUDA-graph capture failed, the step would run eagerly: {why}")
    timer.start()
    for i in range(W, W + S):
        step(i)
    ms, wall = timer.stop()
    host_losses = b.to_host(losses[W:]) / B
    assert host_losses.dtype == np.float32
    res = {"status": "ok", "peer": peer, "batch": B, "device": "cpu" if backend == "numpy" else "gpu",
           "ms_per_step": ms / S, "wall_ms_per_step": wall / S, "timer": timer.name,
           "steps": S, "warmup": W, "dtype": "float32", "loss_forced": forced, "first_step_ms": first_ms,
           "precision_setting": f"VAE(precision={precision!r})",
           "peak_rss_bytes": peak_rss_bytes(), "threads": thread_env(),
           "versions": _versions(backend), **steps_summary(host_losses)}
    if peer == "scratchvae-cupy-graph" and np.isnan(host_losses).all():
        res["note"] = "the graph step returned no loss; loss fields are not meaningful"
    if backend == "numpy":
        res["fast_path"] = b.describe()
        res["blas"] = openblas_runtime()
        res["peak_mem_bytes"], res["peak_mem_kind"] = res["peak_rss_bytes"], "ru_maxrss"
    else:
        res["peak_mem_bytes"] = int(pool.total_bytes())
        res["peak_mem_kind"] = "cupy memory pool total_bytes (held high-water), the graph's private pool added"
        gpool = getattr(getattr(gstep, "graphs", None), "pool", None) if peer.endswith("graph") else None
        if gpool is not None:
            res["peak_mem_bytes"] += int(gpool.total_bytes())
    if spec.get("floor"):
        res["floor_ms"] = res["floor_eager_ms"] = gemm_floor(xp, xs, params, B, W, S, timer, precision)
        res["floor_path"] = floor_path(backend) + f", {precision}, out= buffers, transposes as views"
        if backend == "cupy":
            ms, why = gemm_floor_graph(model.backend, xs, params, B, W, S, timer, precision)
            if ms is not None:
                res["floor_ms"] = res["floor_graph_ms"] = ms
                res["floor_path"] = (f"scratchvae.ops.dense.matmul (the step's cuBLAS path, {precision}), the 11 "
                                     "products captured as one CUDA graph (StepGraphs) and replayed, "
                                     "the batch copied into its input buffer first like the graph step; "
                                     "out= buffers, transposes as views")
            else:
                res["floor_graph_note"] = why
    return res


def _step_matmul(xp):
    """The matrix product the step itself uses: ``scratchvae.ops.dense.matmul`` where it exists
    (numpy.matmul on NumPy; on CuPy the capturable cuBLAS binding), else ``xp.matmul``."""
    try:
        from scratchvae.ops.dense import matmul
    except ImportError:
        return xp.matmul
    return matmul


def floor_path(backend):
    try:
        from scratchvae.ops.dense import matmul  # noqa: F401
    except ImportError:
        return f"{'numpy' if backend == 'numpy' else 'cupy'}.matmul"
    return ("scratchvae.ops.dense.matmul = numpy.matmul (BLAS)" if backend == "numpy" else
            "scratchvae.ops.dense.matmul (the step's cuBLAS path), launched eagerly")


def gemm_floor(xp, xs, params, B, warmup, steps, timer, precision="fp32"):
    """ms per step of the step's 11 matrix products alone (float32 out= buffers), eagerly.

    Forward: x@W1, h@Whead, z@Wd, g@Wo. Weight gradients: gᵀ@dy, zᵀ@dpre, hᵀ@dml,
    xᵀ@dpre1. Input gradients: dy@Woᵀ, dpre@Wdᵀ, dml@Wheadᵀ. Operands C-contiguous,
    transposes are views; x rotates over the same preloaded batches; nothing is zero. In
    ``precision`` (bf16: the operands are bfloat16 words made once; the step's conversions
    are not part of the floor).
    """
    products = _products(xp, params, B, precision)
    for i in range(warmup):
        products(xs[i % len(xs)])
    timer.start()
    for i in range(warmup, warmup + steps):
        products(xs[i % len(xs)])
    ms, _ = timer.stop()
    return ms / steps


def gemm_floor_graph(backend, xs, params, B, warmup, steps, timer, precision="fp32"):
    """The same 11 products captured once as a CUDA graph and replayed (GPU):
    ``(ms per step, None)`` or ``(None, why not)``."""
    from scratchvae.backend.graph import StepGraphs

    xp = backend.xp
    products = _products(xp, params, B, precision)
    graphs = StepGraphs(backend)
    xbuf = xp.empty_like(xs[0])

    def run(i):
        with graphs.context():
            backend.copy(xbuf, xs[i % len(xs)])
        graphs.run(B, lambda: products(xbuf))

    try:
        for i in range(warmup):
            run(i)
    except Exception as err:
        return None, f"capturing the products failed: {type(err).__name__}: {err}"
    if graphs.failed is not None:
        return None, f"capturing the products failed: {graphs.failed}"
    timer.start()
    for i in range(warmup, warmup + steps):
        run(i)
    ms, _ = timer.stop()
    return ms / steps, None


def _products(xp, params, B, precision="fp32"):
    """A function of x running the step's 11 products into preallocated float32 buffers, in
    ``precision``; the inputs are random (never zero) operands, as the products read them
    (bf16: bfloat16 words, made once; x's words made at each call, one conversion as the step's)."""
    rng = np.random.default_rng(1)
    mm, words = _step_matmul(xp), _words(precision)

    def rand(*shape):
        return words(xp.asarray(rng.standard_normal(shape).astype(np.float32)))

    def empty(*shape):
        return xp.empty(shape, dtype=xp.float32)

    W1, Wh, Wd, Wo = (words(xp.ascontiguousarray(xp.asarray(params[k], dtype=xp.float32)))
                      for k in ("enc.0.W", "enc.head.W", "dec.0.W", "dec.out.W"))
    h, ml, g, y = empty(B, H), empty(B, 2 * L), empty(B, H), empty(B, D)
    hi, z, gi = rand(B, H), rand(B, L), rand(B, H)                       # the layers' inputs
    dy, dpre, dml, dpre1 = rand(B, D), rand(B, H), rand(B, 2 * L), rand(B, H)
    dWo, dWd, dWh, dW1 = empty(H, D), empty(L, H), empty(H, 2 * L), empty(D, H)
    dg, dz, dh = empty(B, H), empty(B, L), empty(B, H)
    kw = {} if precision == "fp32" else {"precision": precision}
    xw = words(empty(B, D)) if precision == "bf16" else None

    def products(x):
        if xw is not None:
            from scratchvae.ops.bf16 import to_bf16

            x = to_bf16(x, out=xw)
        mm(x, W1, out=h, **kw)
        mm(hi, Wh, out=ml, **kw)
        mm(z, Wd, out=g, **kw)
        mm(gi, Wo, out=y, **kw)
        mm(gi.T, dy, out=dWo, **kw)
        mm(z.T, dpre, out=dWd, **kw)
        mm(hi.T, dml, out=dWh, **kw)
        mm(x.T, dpre1, out=dW1, **kw)
        mm(dy, Wo.T, out=dg, **kw)
        mm(dpre, Wd.T, out=dz, **kw)
        mm(dml, Wh.T, out=dh, **kw)

    return products


def _words(precision):
    """bf16: the bfloat16 words of an array (scratchvae.ops.bf16.to_bf16); else the array."""
    if precision != "bf16":
        return lambda a: a
    from scratchvae.ops.bf16 import to_bf16

    return to_bf16


def time_any(spec):
    """A timing task: on MPI ranks (``spec['ranks']`` > 1) or in one process (a ranked peer's name,
    'scratchvae-numba-1x1', runs as its base peer: the harness sets its threads)."""
    from . import base_peer

    if spec.get("ranks", 1) > 1:
        return time_ranked(spec)
    return time_peer({**spec, "peer": base_peer(spec["peer"])[0]})


TASKS = {"check": check, "time": time_any}
