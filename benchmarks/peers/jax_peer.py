"""The JAX peer ``jax-jit``: value_and_grad and a hand-written Adam with PyTorch's rule, one jit.

Parameters are a dict under scratchvae's names and layouts (``x @ W + b``), so no mapping is
needed. The jitted step takes ``(params, m, v, t, key, x)``, donates the first five
(``donate_argnums=(0, 1, 2, 3, 4)``) and returns them updated with the step's loss:

    key, sub = split(key); ε = normal(sub, (B, 20))                      draw ε
    loss, g = value_and_grad(loss_fn)(params, x, ε)                      forward + loss + backward
    m ← β₁m + (1−β₁)g;  v ← β₂v + (1−β₂)g²
    p ← p − lr/(1−β₁ᵗ) · m / (√v/√(1−β₂ᵗ) + ε_adam)                       PyTorch's Adam

The loss of every step is an output of the jit (computed anyway) and kept in a list; the
loop is timed with ``block_until_ready`` on the state before it and on the state and all
losses after it (wall clock; on a GPU that brackets the device work). float32, x64 off
(asserted). XLA's threading is left at its default. The same-work check enables x64 in its own
process.

Precision (``spec['precision']``), JAX's own settings: fp32, ``jax_default_matmul_precision =
"float32"`` (true FP32 on a GPU); tf32, ``"tensorfloat32"``; bf16, each product's operands cast
to bfloat16 with ``preferred_element_type=float32`` (FP32 accumulation and output; autodiff
carries the casts into the backward's products), master weights and Adam in float32.
"""

from __future__ import annotations

import time
import warnings

import numpy as np

from ..common import (ADAM_EPS, BETAS, L, LR, PARAM_SHAPES, Skip, peak_rss_bytes, steps_summary,
                      thread_env)


def _jax(device, x64=False, precision="fp32"):
    try:
        import jax
    except ImportError:
        raise Skip("JAX is not installed (the bench extra pins jax[cpu])") from None
    jax.config.update("jax_enable_x64", bool(x64))
    if device == "gpu":
        if jax.default_backend() != "gpu":
            raise Skip(f"jax {jax.__version__} has no GPU backend here ({jax.default_backend()} only)")
        jax.config.update("jax_default_matmul_precision", "tensorfloat32" if precision == "tf32" else "float32")
    elif jax.default_backend() != "cpu":
        raise Skip(f"jax's default backend is {jax.default_backend()}, not the CPU (set JAX_PLATFORMS=cpu)")
    warnings.filterwarnings("ignore", message="Some donated buffers were not usable")
    return jax


def loss_fn(jax, p, x, eps, precision="fp32"):
    """The summed −ELBO: Bernoulli NLL on logits (softplus(y) − x·y) + ½Σ(e^lv − 1 − lv + μ²)."""
    jnp = jax.numpy
    mm = _products(jax, precision)
    h = jax.nn.relu(mm(x, p["enc.0.W"]) + p["enc.0.b"])
    ml = mm(h, p["enc.head.W"]) + p["enc.head.b"]
    mu, lv = ml[:, :L], ml[:, L:]
    z = mu + jnp.exp(0.5 * lv) * eps
    g = jax.nn.relu(mm(z, p["dec.0.W"]) + p["dec.0.b"])
    y = mm(g, p["dec.out.W"]) + p["dec.out.b"]
    recon = jnp.sum(jax.nn.softplus(y) - x * y)
    kl = 0.5 * jnp.sum(jnp.expm1(lv) - lv + mu * mu)
    return recon + kl


def _products(jax, precision):
    """a @ W as the precision has it: bf16, bfloat16 operands accumulated into float32."""
    jnp = jax.numpy
    if precision != "bf16":
        return jnp.matmul
    return lambda a, w: jnp.matmul(a.astype(jnp.bfloat16), w.astype(jnp.bfloat16),
                                   preferred_element_type=jnp.float32)


SETTINGS = {"fp32": "jax_default_matmul_precision='float32'", "tf32": "jax_default_matmul_precision='tensorfloat32'",
            "bf16": "operands cast to bfloat16, matmul(preferred_element_type=float32); precision 'float32'"}


def _versions(jax):
    import jaxlib

    d = jax.devices()[0]
    return {"jax": jax.__version__, "jaxlib": jaxlib.__version__, "jax_backend": jax.default_backend(),
            "jax_device": getattr(d, "device_kind", str(d)), "jax_x64": bool(jax.config.jax_enable_x64),
            "jax_matmul_precision": str(jax.config.jax_default_matmul_precision)}


# -- same work -----------------------------------------------------------------------------
def check(spec):
    jax = _jax(spec["device"], x64=True)
    jnp = jax.numpy
    z = np.load(spec["inputs"])
    p = {k: jnp.asarray(z[f"param/{k}"], dtype=jnp.float64) for k in PARAM_SHAPES}
    x = jnp.asarray(z["x"], dtype=jnp.float64)
    eps = jnp.asarray(z["eps"], dtype=jnp.float64)
    f = jax.jit(jax.value_and_grad(lambda p, x, e: loss_fn(jax, p, x, e)))
    loss, g = f(p, x, eps)
    assert loss.dtype == jnp.float64
    out = {"loss": np.asarray(loss)}
    out.update({f"grad/{k}": np.asarray(v) for k, v in g.items()})
    np.savez(spec["grads_out"], **out)
    return {"status": "ok", "dtype": "float64", "versions": _versions(jax)}


# -- timing --------------------------------------------------------------------------------
def make_step(jax, B, lr=LR, betas=BETAS, adam_eps=ADAM_EPS, precision="fp32"):
    jnp = jax.numpy
    b1, b2 = betas
    tree_map = jax.tree_util.tree_map

    def step(params, m, v, t, key, x):
        key, sub = jax.random.split(key)
        eps = jax.random.normal(sub, (B, L), dtype=jnp.float32)
        loss, g = jax.value_and_grad(lambda p: loss_fn(jax, p, x, eps, precision))(params)
        t = t + 1
        tf = t.astype(jnp.float32)
        step_size = lr / (1 - b1 ** tf)
        sqrt_bc2 = jnp.sqrt(1 - b2 ** tf)
        m = tree_map(lambda m, g: b1 * m + (1 - b1) * g, m, g)
        v = tree_map(lambda v, g: b2 * v + (1 - b2) * (g * g), v, g)
        params = tree_map(lambda p, m, v: p - step_size * (m / (jnp.sqrt(v) / sqrt_bc2 + adam_eps)),
                          params, m, v)
        return params, m, v, t, key, loss

    return jax.jit(step, donate_argnums=(0, 1, 2, 3, 4))


def time_peer(spec):
    B, device = spec["batch"], spec["device"]
    precision = spec.get("precision", "fp32")
    jax = _jax(device, x64=False, precision=precision)
    jnp = jax.numpy
    assert not jax.config.jax_enable_x64, "JAX must run without x64"
    batches = np.load(spec["batches"])
    z = np.load(spec["params"])
    params = {k: jnp.asarray(z[k], dtype=jnp.float32) for k in PARAM_SHAPES}
    m = {k: jnp.zeros_like(v) for k, v in params.items()}
    v = {k: jnp.zeros_like(p) for k, p in params.items()}
    t = jnp.zeros((), dtype=jnp.int32)
    key = jax.random.key(0)
    xs = [jax.device_put(xb) for xb in batches]
    assert all(x.dtype == jnp.float32 for x in xs)
    step = make_step(jax, B, precision=precision)
    W, S = spec["warmup"], spec["steps"]
    losses = []
    state = (params, m, v, t, key)
    for i in range(W):
        *state, loss = step(*state, xs[i % len(xs)])
        losses.append(loss)
    jax.block_until_ready((state, losses))
    assert loss.dtype == jnp.float32 and all(a.dtype == jnp.float32 for a in state[0].values())
    t0 = time.perf_counter()
    for i in range(W, W + S):
        *state, loss = step(*state, xs[i % len(xs)])
        losses.append(loss)
    jax.block_until_ready((state, losses))
    ms = (time.perf_counter() - t0) * 1e3
    host_losses = np.array([np.asarray(x) for x in losses[W:]], dtype=np.float32) / B
    res = {"status": "ok", "peer": "jax-jit", "batch": B, "device": device,
           "ms_per_step": ms / S, "wall_ms_per_step": ms / S,
           "timer": "wall clock around the loop, block_until_ready on state and losses before/after",
           "steps": S, "warmup": W, "dtype": "float32", "optimizer": "hand-written Adam (PyTorch's rule)",
           "precision_setting": SETTINGS[precision],
           "loss_forced": "each step's loss is a jit output, kept; all blocked on after the loop",
           "peak_rss_bytes": peak_rss_bytes(), "threads": thread_env(),
           "versions": _versions(jax), **steps_summary(host_losses)}
    stats = None
    try:
        stats = jax.devices()[0].memory_stats()
    except Exception:
        pass
    if stats and "peak_bytes_in_use" in stats:
        res["peak_mem_bytes"] = int(stats["peak_bytes_in_use"])
        res["peak_mem_kind"] = "jax device memory_stats peak_bytes_in_use"
    else:
        res["peak_mem_bytes"], res["peak_mem_kind"] = res["peak_rss_bytes"], "ru_maxrss"
    return res


TASKS = {"check": check, "time": time_peer}
