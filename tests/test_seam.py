"""The fused-block seam: every block declares its kernel, every declared kernel exists and takes
its block's arguments, and a device array never falls back to a NumPy body.

Runs without a GPU: the CUDA module's launchers (``backend/_cupy_kernels.Kernels``) are built
over the host stand-in for CuPy (``tests/_cuda_host.HostCupy``), and the kernels' compiled
names are read from the CUDA source.
"""

import inspect
import re

import numpy as np
import pytest

import scratchvae.backend as backend
import scratchvae.step  # noqa: F401  (declares record_losses)
from scratchvae import ops
from scratchvae.backend import DECLARED, Backend, _cupy_kernels, body_of
from scratchvae.errors import BackendError

from _cuda_host import HostCupy


@pytest.fixture(scope="module")
def kernels():
    return _cupy_kernels.Kernels(HostCupy(), body_of)


def test_every_declared_kernel_exists_and_takes_its_blocks_arguments(kernels):
    assert len(DECLARED) >= 12
    for name, block in DECLARED.items():
        launcher = kernels.get(name)
        assert launcher is not None, f"{block.__qualname__} declares kernel {name!r}; the CUDA module has none"
        want = list(inspect.signature(block.body).parameters)
        got = list(inspect.signature(launcher).parameters)
        assert got == want, f"kernel {name!r} takes {got}, its block {block.__qualname__} {want}"


def test_every_kernel_belongs_to_a_block(kernels):
    assert set(kernels.names()) == set(DECLARED)


def test_the_row_wise_bernoulli_launcher_runs_its_blocks_body(kernels):
    # CuPy has no kernel of its own for it: the launcher hands its arguments to the body,
    # which here (host arrays) runs on NumPy, so it must give the body's bits.
    r = np.random.default_rng(3)
    y = r.standard_normal((2, 3, 7)).astype(np.float32)
    x = (r.uniform(size=(2, 1, 7)) < 0.5).astype(np.float32)
    body = DECLARED["bernoulli_nll_rows"].body
    for dtype in (None, np.float64):
        got, want = kernels.get("bernoulli_nll_rows")(y, x, dtype, None, None), body(y, x, dtype)
        assert got.dtype == want.dtype and np.array_equal(got, want)
        out, buffers = np.empty(y.shape[:2], want.dtype), (np.empty_like(y), np.empty_like(y))
        got = kernels.get("bernoulli_nll_rows")(y, x, dtype, out, buffers)
        assert got is out and np.array_equal(out, want)


def test_every_activation_and_every_typed_kernel_is_in_the_cuda_source():
    src = _cupy_kernels.CUDA_SRC
    compiled = {name: int(code) for name, code in re.findall(r"ACT_KERNELS\((\w+), (\d+), T, SUF\)", src)}
    assert compiled == _cupy_kernels.ACTIVATIONS and set(compiled) == set(ops.ACTIVATIONS)
    typed = set(re.findall(r"__global__ void (\w+)_##SUF\(", src))
    assert typed == {"finish_sum", "reparam_kl_forward", "reparam_kl_backward", "bernoulli_nll", "adam",
                     "adam_from", "gather_rows", "record_losses", "fullcov_reparam_kl_forward",
                     "fullcov_reparam_kl_backward", "cond_prior_forward", "cond_prior_backward"}
    for name in ("load_row", "to_bf16", "from_bf16"):
        assert re.search(rf'extern "C" __global__ void {name}\(', src), name
    assert src.startswith(f"#define SV_THREADS {_cupy_kernels.THREADS}\n")


class DeviceArray:
    """Stands for an array of a GPU backend: not a NumPy array, owned by the fake backend."""

    __module__ = "fakegpu"

    def __init__(self, a):
        self.a = a


class FakeGPU(Backend):
    name = "fakegpu"

    def __init__(self, kernels):
        super().__init__()
        self.kernels = kernels

    def kernel(self, name):
        return self.kernels.get(name)


def test_a_device_array_goes_to_the_kernel_or_raises(monkeypatch):
    calls = []

    def launcher(pre, b, name, out, scratch, slope):
        calls.append((pre, b, name, out, scratch, slope))
        return "from the kernel"

    fake = FakeGPU({"bias_act": launcher})
    monkeypatch.setattr(backend, "backend_of", lambda a: fake)
    x = DeviceArray(np.zeros((2, 3), np.float32))
    assert ops.bias_act_forward(x, None, "relu", scratch=7) == "from the kernel"
    assert calls == [(x, None, "relu", None, 7, ops.LEAKY_SLOPE)]      # every argument, in order
    with pytest.raises(TypeError):
        ops.bias_act_forward(x, None)                                  # as Python would say
    with pytest.raises(TypeError):
        ops.bias_act_forward(x, None, "relu", nonsense=1)
    with pytest.raises(BackendError, match=r"reparam_kl_forward: the fakegpu backend has no kernel "
                                           r"'reparam_kl_forward'; refusing to run the NumPy body"):
        ops.reparam_kl_forward(x, None, None, None, None)


def test_the_constants_reach_the_kernel_as_arguments(monkeypatch):
    seen = {}
    fake = FakeGPU({"act_backward": lambda name, da, a, out, mask, slope: seen.update(slope=slope),
                    "reparam_kl_backward": lambda dz, eps, std, ml, beta, dml, limit: seen.update(limit=limit)})
    monkeypatch.setattr(backend, "backend_of", lambda a: fake)
    x = DeviceArray(None)
    ops.activation_backward("leaky_relu", x, x)
    assert seen["slope"] == ops.LEAKY_SLOPE
    ops.reparam_kl_backward(None, x, x, x, 1.0, x)
    assert seen["limit"] == ops.LOGVAR_LIMIT


def test_a_block_cannot_be_declared_twice():
    with pytest.raises(BackendError, match="declared twice"):
        backend.fused("bias_act")(lambda pre: pre)
