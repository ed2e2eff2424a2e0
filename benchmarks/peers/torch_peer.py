"""PyTorch peers: ``torch-eager``, ``torch-compile`` (the CPU or CUDA) and ``torch-graph`` (CUDA).

The model is scratchvae's, written the way a PyTorch user would: four ``nn.Linear`` layers
(``weight = W.T`` of scratchvae's (fan_in, fan_out) ``W``), the μ/logvar head fused into one
``Linear(400, 40)`` split into columns [:20] / [20:] (the same GEMM as scratchvae's head),
``binary_cross_entropy_with_logits(reduction="sum")`` and the PyTorch example's KL.

Timed step: ``eps = torch.randn(B, 20)`` (draw ε), ``loss = model(x, eps)`` (forward and the
scalar loss), ``zero_grad(set_to_none=True)``, ``loss.backward()``, ``opt.step()``, then
``losses[i] = loss.detach()`` (a device copy: no host sync). Adam: ``foreach=True`` on the CPU,
``fused=True`` on CUDA. CPU: wall clock around the loop (eager CPU ops are synchronous, so
the loss is computed within the step). CUDA: CUDA events around the loop, one synchronize.
``torch-compile``: ``torch.compile(model)`` (CPU: default mode; CUDA: ``mode="reduce-overhead"``,
CUDA graphs); backward through AOTAutograd; the optimizer as in eager; compilation happens
in the warm-up, outside the timed loop.
``torch-graph`` (CUDA only; on the CPU it skips): the whole step — ε drawn with ``torch.randn``,
forward, backward and ``Adam(capturable=True, fused=True)`` — captured once with
``torch.cuda.graph`` (after three warm-up steps on a side stream, as PyTorch's documentation
does it) and replayed; each step copies the batch into the graph's static input first.

Precision (``spec['precision']``), PyTorch's own settings: fp32, ``allow_tf32 = False`` and
``set_float32_matmul_precision("highest")``; tf32, ``allow_tf32 = True`` and "high"; bf16, TF32
off and the forward (with the loss) under ``torch.autocast(dtype=torch.bfloat16)``: the linear
layers' products in bfloat16 with FP32 accumulation, master weights and Adam in float32
(``cache_enabled=False`` in the graph peer, as CUDA graphs require).
"""

from __future__ import annotations

import contextlib
import re
import time

import numpy as np

from ..common import (ADAM_EPS, BETAS, D, H, L, LR, PARAM_SHAPES, THREADS, Skip, peak_rss_bytes,
                      steps_summary, thread_env)

#: torch module name -> scratchvae parameter prefix (weight = W.T, bias = b)
LAYERS = (("fc1", "enc.0"), ("head", "enc.head"), ("fc3", "dec.0"), ("fc4", "dec.out"))


def _torch():
    try:
        import torch
    except ImportError:
        raise Skip("PyTorch is not installed (the bench extra pins torch==2.13.0)") from None
    torch.set_num_threads(THREADS)
    return torch


def _device(torch, device):
    if device == "gpu":
        if not torch.cuda.is_available():
            raise Skip(f"torch {torch.__version__} sees no CUDA GPU")
        return torch.device("cuda")
    return torch.device("cpu")


def _set_tf32(torch, tf32):
    torch.backends.cuda.matmul.allow_tf32 = bool(tf32)
    torch.backends.cudnn.allow_tf32 = bool(tf32)
    torch.set_float32_matmul_precision("high" if tf32 else "highest")


def set_precision(torch, dev, precision, graph=False):
    """PyTorch's own setting for ``precision``: (a factory of the context the forward runs in,
    its description for the table)."""
    _set_tf32(torch, precision == "tf32")
    if precision == "bf16":
        def autocast():
            return torch.autocast(device_type=dev.type, dtype=torch.bfloat16, cache_enabled=not graph)
        return autocast, (f"torch.autocast({dev.type!r}, torch.bfloat16{', cache_enabled=False' if graph else ''})"
                          " around the forward and loss; TF32 off")
    if precision == "tf32":
        return contextlib.nullcontext, "allow_tf32=True, set_float32_matmul_precision('high')"
    return contextlib.nullcontext, "allow_tf32=False, set_float32_matmul_precision('highest')"


def _need_cuda(spec):
    """torch-graph on the CPU: one line why not, before torch is even imported."""
    if spec["peer"] == "torch-graph" and spec["device"] != "gpu":
        raise Skip("torch-graph needs CUDA (torch.cuda.graph captures CUDA work only)")


def build(torch, dtype, dev, params):
    """The model in ``dtype`` on ``dev`` with scratchvae's parameters (weight = W.T)."""
    nn, F = torch.nn, torch.nn.functional

    class TorchVAE(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1 = nn.Linear(D, H)
            self.head = nn.Linear(H, 2 * L)   # [:, :L] μ, [:, L:] logvar
            self.fc3 = nn.Linear(L, H)
            self.fc4 = nn.Linear(H, D)

        def forward(self, x, eps):
            h = F.relu(self.fc1(x))
            ml = self.head(h)
            mu, logvar = ml[:, :L], ml[:, L:]
            z = mu + torch.exp(0.5 * logvar) * eps
            y = self.fc4(F.relu(self.fc3(z)))
            recon = F.binary_cross_entropy_with_logits(y, x, reduction="sum")
            kl = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
            return recon + kl

    m = TorchVAE().to(device=dev, dtype=dtype)
    with torch.no_grad():
        for mod, prefix in LAYERS:
            lin = getattr(m, mod)
            lin.weight.copy_(torch.from_numpy(np.ascontiguousarray(params[f"{prefix}.W"].T)))
            lin.bias.copy_(torch.from_numpy(np.asarray(params[f"{prefix}.b"])))
    return m


def grads_by_name(m):
    """The gradients under scratchvae's names and layouts (W = weight.T)."""
    out = {}
    for mod, prefix in LAYERS:
        lin = getattr(m, mod)
        out[f"{prefix}.W"] = lin.weight.grad.detach().cpu().numpy().T
        out[f"{prefix}.b"] = lin.bias.grad.detach().cpu().numpy()
    return out


def _compile(torch, m, device):
    return torch.compile(m, mode="reduce-overhead" if device == "gpu" else None)


def _versions(torch, dev):
    v = {"torch": torch.__version__, "torch_threads": torch.get_num_threads()}
    cfg = torch.__config__.show()
    blas = re.search(r"BLAS_INFO=([^,\s]+)", cfg)
    if blas:
        v["torch_blas"] = blas.group(1)
    v["torch_cpu_capability"] = getattr(torch.backends.cpu, "get_cpu_capability", lambda: None)()
    if dev.type == "cuda":
        v["cuda"] = torch.version.cuda
        v["gpu"] = torch.cuda.get_device_name(dev)
    return v


def _first_line(err):
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"[:300]


# -- same work -----------------------------------------------------------------------------
def check(spec):
    _need_cuda(spec)
    torch = _torch()
    dev = _device(torch, spec["device"])
    _set_tf32(torch, False)
    z = np.load(spec["inputs"])
    params = {k: z[f"param/{k}"] for k in PARAM_SHAPES}
    m = build(torch, torch.float64, dev, params)
    fn = m
    if spec["peer"] == "torch-compile":
        fn = _compile(torch, m, spec["device"])
    x = torch.from_numpy(z["x"]).to(dev)
    eps = torch.from_numpy(z["eps"]).to(dev)
    try:
        if spec["peer"] == "torch-graph":          # the captured forward and backward, replayed once
            def body():
                loss = fn(x, eps)
                loss.backward()
                return loss
            graph, loss = capture(torch, body, m.zero_grad, warmup=1)
            graph.replay()
            torch.cuda.synchronize()
        else:
            loss = fn(x, eps)
            loss.backward()
    except Exception as err:
        if spec["peer"] == "torch-compile":
            raise Skip(f"torch.compile failed: {_first_line(err)}") from None
        raise
    assert loss.dtype == torch.float64
    out = {"loss": loss.detach().cpu().numpy()}
    out.update({f"grad/{k}": v for k, v in grads_by_name(m).items()})
    np.savez(spec["grads_out"], **out)
    return {"status": "ok", "dtype": "float64", "versions": _versions(torch, dev)}


# -- timing --------------------------------------------------------------------------------
def capture(torch, body, zero_grad, warmup=3):
    """``torch.cuda.graph`` around ``body()`` (one step; it returns the loss), after ``warmup``
    calls on a side stream, as PyTorch's documentation captures a whole training step. The
    gradients are set to None first, so backward allocates them from the graph's pool and
    every replay writes them there. Returns (the graph, its static loss)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warmup):
            zero_grad(set_to_none=True)
            body()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    zero_grad(set_to_none=True)
    with torch.cuda.graph(graph):
        loss = body()
    return graph, loss


def _optimizer(torch, m, dev, peer):
    if peer == "torch-graph":
        return (torch.optim.Adam(m.parameters(), lr=LR, betas=BETAS, eps=ADAM_EPS, capturable=True, fused=True),
                "Adam(capturable=True, fused=True)")
    if dev.type == "cuda":
        return torch.optim.Adam(m.parameters(), lr=LR, betas=BETAS, eps=ADAM_EPS, fused=True), "Adam(fused=True)"
    return torch.optim.Adam(m.parameters(), lr=LR, betas=BETAS, eps=ADAM_EPS, foreach=True), "Adam(foreach=True)"


def _step_fn(torch, spec, m, opt, dev, xs, losses, autocast):
    """The timed step ``step(i)`` of the peer (torch-graph: captured on its first call)."""
    peer, B = spec["peer"], spec["batch"]
    fn = _compile(torch, m, spec["device"]) if peer == "torch-compile" else m
    cudagraphs = peer == "torch-compile" and dev.type == "cuda"
    if peer == "torch-graph":
        x_static = xs[0].clone()
        graph = []

        def body():
            eps = torch.randn(B, L, device=dev)            # drawn inside the graph: new ε each replay
            with autocast():
                loss = m(x_static, eps)
            loss.backward()
            opt.step()
            return loss

        def step(i):
            x_static.copy_(xs[i % len(xs)])
            if not graph:
                graph.extend(capture(torch, body, opt.zero_grad))
            graph[0].replay()
            losses[i] = graph[1].detach()
        return step

    def step(i):
        if cudagraphs:
            torch.compiler.cudagraph_mark_step_begin()
        eps = torch.randn(B, L, device=dev)
        with autocast():
            loss = fn(xs[i % len(xs)], eps)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses[i] = loss.detach()
    return step


def _timed(torch, dev, step, W, S):
    """(ms over the S timed steps, host wall ms, the timer's description)."""
    if dev.type == "cuda":
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        e0.record()
        for i in range(W, W + S):
            step(i)
        e1.record()
        e1.synchronize()
        wall = (time.perf_counter() - t0) * 1e3
        return e0.elapsed_time(e1), wall, "CUDA events (torch.cuda.Event) around the loop, synchronized after"
    t0 = time.perf_counter()
    for i in range(W, W + S):
        step(i)
    ms = (time.perf_counter() - t0) * 1e3
    return ms, ms, "wall clock (time.perf_counter) around the loop"


def time_peer(spec):
    _need_cuda(spec)
    torch = _torch()
    peer, B, device = spec["peer"], spec["batch"], spec["device"]
    dev = _device(torch, device)
    precision = spec.get("precision", "fp32")
    autocast, setting = set_precision(torch, dev, precision, graph=peer == "torch-graph")
    batches = np.load(spec["batches"])
    z = np.load(spec["params"])
    m = build(torch, torch.float32, dev, {k: z[k] for k in PARAM_SHAPES})
    assert all(p.dtype == torch.float32 for p in m.parameters()), "float32 expected"
    opt, adam = _optimizer(torch, m, dev, peer)
    xs = [torch.from_numpy(xb).to(dev) for xb in batches]
    W, S = spec["warmup"], spec["steps"]
    losses = torch.full((W + S,), float("nan"), dtype=torch.float32, device=dev)
    step = _step_fn(torch, spec, m, opt, dev, xs, losses, autocast)
    try:
        step(0)
    except Exception as err:
        if peer != "torch-eager":
            raise Skip(f"{'torch.compile' if peer == 'torch-compile' else 'the CUDA-graph capture'} failed: "
                       f"{_first_line(err)}") from None
        raise
    for i in range(1, W):
        step(i)
    assert losses.dtype == torch.float32 and all(p.dtype == torch.float32 for p in m.parameters())
    ms, wall, timer = _timed(torch, dev, step, W, S)
    host_losses = losses[W:].cpu().numpy() / B
    res = {"status": "ok", "peer": peer, "batch": B, "device": device,
           "ms_per_step": ms / S, "wall_ms_per_step": wall / S, "timer": timer,
           "steps": S, "warmup": W, "dtype": "float32", "optimizer": adam, "precision_setting": setting,
           "compile": _compile_desc(peer, dev),
           "loss_forced": "loss.detach() copied into a preallocated tensor per step (no .item())",
           "peak_rss_bytes": peak_rss_bytes(), "threads": thread_env(),
           "versions": _versions(torch, dev), **steps_summary(host_losses)}
    if dev.type == "cuda":
        res["peak_mem_bytes"] = int(torch.cuda.max_memory_allocated(dev))
        res["peak_mem_kind"] = "torch.cuda.max_memory_allocated"
    else:
        res["peak_mem_bytes"], res["peak_mem_kind"] = res["peak_rss_bytes"], "ru_maxrss"
    return res


def _compile_desc(peer, dev):
    if peer == "torch-graph":
        return "torch.cuda.graph around ε, forward, backward and Adam (3 side-stream warm-up steps first)"
    if peer == "torch-compile":
        return "torch.compile(mode='reduce-overhead')" if dev.type == "cuda" else "torch.compile() default mode"
    return None


TASKS = {"check": check, "time": time_peer}
