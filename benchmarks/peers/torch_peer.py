"""PyTorch peers: ``torch-eager`` and ``torch-compile``, on the CPU or CUDA.

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
"""

from __future__ import annotations

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
def time_peer(spec):
    torch = _torch()
    peer, B, device = spec["peer"], spec["batch"], spec["device"]
    dev = _device(torch, device)
    _set_tf32(torch, spec.get("tf32", False))
    batches = np.load(spec["batches"])
    z = np.load(spec["params"])
    m = build(torch, torch.float32, dev, {k: z[k] for k in PARAM_SHAPES})
    assert all(p.dtype == torch.float32 for p in m.parameters()), "float32 expected"
    if dev.type == "cuda":
        opt = torch.optim.Adam(m.parameters(), lr=LR, betas=BETAS, eps=ADAM_EPS, fused=True)
        adam = "Adam(fused=True)"
    else:
        opt = torch.optim.Adam(m.parameters(), lr=LR, betas=BETAS, eps=ADAM_EPS, foreach=True)
        adam = "Adam(foreach=True)"
    compiled = peer == "torch-compile"
    fn = _compile(torch, m, device) if compiled else m
    cudagraphs = compiled and dev.type == "cuda"
    xs = [torch.from_numpy(xb).to(dev) for xb in batches]
    W, S = spec["warmup"], spec["steps"]
    losses = torch.full((W + S,), float("nan"), dtype=torch.float32, device=dev)

    def step(i):
        if cudagraphs:
            torch.compiler.cudagraph_mark_step_begin()
        eps = torch.randn(B, L, device=dev)
        loss = fn(xs[i % len(xs)], eps)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses[i] = loss.detach()

    try:
        step(0)
    except Exception as err:
        if compiled:
            raise Skip(f"torch.compile failed: {_first_line(err)}") from None
        raise
    for i in range(1, W):
        step(i)
    assert losses.dtype == torch.float32 and all(p.dtype == torch.float32 for p in m.parameters())
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
        ms = e0.elapsed_time(e1)
        timer = "CUDA events (torch.cuda.Event) around the loop, synchronized after"
    else:
        t0 = time.perf_counter()
        for i in range(W, W + S):
            step(i)
        ms = wall = (time.perf_counter() - t0) * 1e3
        timer = "wall clock (time.perf_counter) around the loop"
    host_losses = losses[W:].cpu().numpy() / B
    res = {"status": "ok", "peer": peer, "batch": B, "device": device,
           "ms_per_step": ms / S, "wall_ms_per_step": wall / S, "timer": timer,
           "steps": S, "warmup": W, "dtype": "float32", "optimizer": adam,
           "compile": ("torch.compile(mode='reduce-overhead')" if cudagraphs else
                       "torch.compile() default mode") if compiled else None,
           "loss_forced": "loss.detach() copied into a preallocated tensor per step (no .item())",
           "peak_rss_bytes": peak_rss_bytes(), "threads": thread_env(),
           "versions": _versions(torch, dev), **steps_summary(host_losses)}
    if dev.type == "cuda":
        res["peak_mem_bytes"] = int(torch.cuda.max_memory_allocated(dev))
        res["peak_mem_kind"] = "torch.cuda.max_memory_allocated"
    else:
        res["peak_mem_bytes"], res["peak_mem_kind"] = res["peak_rss_bytes"], "ru_maxrss"
    return res


TASKS = {"check": check, "time": time_peer}
