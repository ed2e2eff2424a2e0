"""The one training step (scratchvae.step) and its schedule, on NumPy.

What a captured step may not do is checked where a CPU can check it: after its first call at
a batch shape it allocates no batch-sized buffer; the eager warm-up, the call a CUDA-graph
capture records and every later step ask the backend for the same fused kernels in the same
order, and the CUDA module has each of them, so on a GPU nothing falls back to a NumPy body.
β comes from the schedule: nothing writes ``model.beta``, even when training is interrupted.
"""

import numpy as np
import pytest

import scratchvae.step as step_module
from scratchvae import VAE, Adam, SGD
from scratchvae.backend import NUMPY
from scratchvae.backend import _cupy_kernels, body_of
from scratchvae.backend.random import Stream
from scratchvae.errors import InputError
from scratchvae.step import BETA, Schedule, TrainStep, make_graph_step
from scratchvae.train import Interrupted, TrainConfig, fit

from _alloc import peak_bytes, threshold
from _cuda_host import HostCupy

B, L, H = 64, 64, 64          # the smallest buffer of the step, (B, L) float32, is 16 KiB


def setup(model_kw=None, corrupt=("none", 0.0), binarize=False, warmup=0.0, opt="adam"):
    m = VAE(hidden=(H,), latent=L, seed=3, **(model_kw or {}))
    data = Stream(1, 0).uniform((6 * B + 10, 784), "float32")     # six full batches, a partial one
    o = Adam(m.theta) if opt == "adam" else SGD(m.theta, lr=1e-3, momentum=0.9)
    from scratchvae.step import TrainState

    state = TrainState.start(m)
    s = TrainStep(m, o, data, B, Schedule(o, m.beta, warmup), streams=state.streams, binarize=binarize,
                  corrupt=corrupt)
    s.begin(0, 0, state.streams["shuffle"].permutation(data.shape[0]))
    return m, o, s


CASES = {
    "plain": {},
    "dynamic+mask+warmup": {"binarize": True, "corrupt": ("mask", 0.3), "warmup": 3.0},
    "gaussian-corrupt+sgd": {"corrupt": ("gaussian", 0.1), "opt": "sgd"},
    "gaussian-fixed": {"model_kw": {"likelihood": "gaussian"}},
    "ae": {"model_kw": {"mode": "ae"}},
    "kl-only": {"model_kw": {"mode": "kl-only"}},
    "full": {"model_kw": {"posterior": "full"}, "warmup": 2.0},
    "softplus": {"model_kw": {"activation": "softplus"}},
    "iwae-bernoulli": {"model_kw": {"objective": "iwae", "iw_samples": 3}, "binarize": True},
    "iwae-gaussian": {"model_kw": {"objective": "iwae", "iw_samples": 3, "likelihood": "gaussian",
                                   "sigma": "per-pixel"}},
    "iwae-full": {"model_kw": {"objective": "iwae", "iw_samples": 3, "posterior": "full"}},
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_step_after_the_first_allocates_no_batch_sized_buffer(case, fused_path):
    """With the twins and with the NumPy bodies: under one (B, L) array (tests/_alloc.py)."""
    m, o, s = setup(**CASES[case])
    s(0)                                     # the first call makes every buffer
    peak = peak_bytes(lambda: (s(1), s(2)))
    assert peak < threshold(m, B), f"two steps allocated {peak} bytes at their peak"
    assert o.t == 3 and int(s.bi[0]) == 3


def test_the_allocation_check_can_fail(monkeypatch):
    """A body that makes a fresh batch buffer each step is caught by the same measurement."""
    m, o, s = setup()
    body = s._body
    monkeypatch.setattr(s, "_body", lambda nb: (np.empty((nb, 784), np.float32).fill(0), body(nb))[1])
    s(0)
    assert peak_bytes(lambda: s(1)) >= B * 784 * 4


class RecordingGraphs(step_module.StepGraphs):
    """StepGraphs that, on NumPy, goes through the warm-up / capture / replay sequence of a GPU:
    the first call at a key is the eager warm-up, the second call of ``fn`` is what a capture
    would record, and later calls are replays (run eagerly here, so the state advances as on a GPU)."""

    phase = "off"

    def run(self, key, fn):
        if key not in self._graphs:
            RecordingGraphs.phase = "warm-up"
            out = fn()
            RecordingGraphs.phase = "capture"
            self._kept[key] = fn()
            self._graphs[key] = True
            return out
        RecordingGraphs.phase = "replay"
        return fn()


STEP_KERNELS = {"gather_rows", "load_row", "bias_act", "matmul", "bernoulli_nll", "act_backward", "sum_rows",
                "adam_from"}
KERNEL_CASES = {
    "elbo": ({"binarize": True, "corrupt": ("gaussian", 0.1), "warmup": 3.0},
             STEP_KERNELS | {"reparam_kl_forward", "reparam_kl_backward", "record_losses"}),
    "full-iwae": ({"model_kw": {"posterior": "full", "objective": "iwae", "iw_samples": 3}, "binarize": True,
                   "corrupt": ("gaussian", 0.1)},
                  STEP_KERNELS | {"fullcov_reparam_kl_forward", "fullcov_reparam_kl_backward", "record_losses"}),
}


@pytest.mark.parametrize("case", list(KERNEL_CASES))
def test_warm_up_capture_and_replay_ask_for_the_kernels_the_uncaptured_step_asks_for(monkeypatch, case):
    kw, expected = KERNEL_CASES[case]
    calls, steps = [], []

    def record(name):
        if steps:
            calls.append((RecordingGraphs.phase, name))

    monkeypatch.setattr(NUMPY, "kernel", lambda name: record(name))
    for name in ("draw_uniform_into", "draw_normal_into"):
        real = getattr(Stream, name)
        monkeypatch.setattr(Stream, name, lambda self, out, _r=real, _n=name: (record(_n), _r(self, out))[1])

    def run(s, batches):
        steps.append(1)
        for b in batches:
            s(b)
        steps.clear()

    run(setup(**kw)[2], [0])                                  # uncaptured (NumPy: no capture)
    eager = [n for _, n in calls]
    calls.clear()
    monkeypatch.setattr(step_module, "StepGraphs", RecordingGraphs)
    run(setup(**kw)[2], range(3))
    by_phase = {p: [n for q, n in calls if q == p] for p in ("warm-up", "capture", "replay")}
    assert eager and by_phase["warm-up"] == by_phase["capture"] == eager
    assert by_phase["replay"] == eager * 2
    assert eager[:3] == ["gather_rows", "draw_uniform_into", "draw_normal_into"]   # binarise, corrupt
    kernels = _cupy_kernels.Kernels(HostCupy(), body_of)
    fused = [n for n in eager if not n.startswith("draw_")]
    assert expected <= set(fused)
    assert [n for n in fused if kernels.get(n) is None] == []


def test_schedule_gives_the_optimizers_coefficients_and_the_warm_up():
    m = VAE(input_dim=6, hidden=(4,), latent=2)
    opt = Adam(m.theta, lr=2e-3)
    rows = Schedule(opt, 0.5, warmup_steps=4).rows(step=2, t=7, count=5)
    np.testing.assert_array_equal(rows[:, BETA], [0.25, 0.375, 0.5, 0.5, 0.5])
    for r in range(5):
        assert tuple(rows[r, :2]) == opt.coefficients(7 + r)
    assert Schedule(opt, 0.5).beta_at(1) == 0.5 == Schedule(opt, 0.5, 10).beta_at(10)
    sgd = Schedule(SGD(m.theta, lr=0.1), 1.0).rows(step=1, t=1, count=2)
    np.testing.assert_array_equal(sgd, [[0, 0, 1], [0, 0, 1]])


def test_an_optimizer_without_a_schedule_interface_is_refused():
    class Plain:
        def step(self, grads):
            pass

    m = VAE(input_dim=6, hidden=(4,), latent=2)
    with pytest.raises(InputError, match="optimizer must provide coefficients.*Plain has no coefficients"):
        fit(m, np.zeros((8, 6), np.uint8), config=TrainConfig(epochs=1, batch_size=4), optimizer=Plain())


def test_interrupted_training_with_warm_up_leaves_the_model_as_given(tmp_path):
    m = VAE(hidden=(8,), latent=2, beta=0.7, seed=1)
    x = Stream(2, 0).uniform((200, 784), "float32")
    seen = []

    def stop():
        seen.append(m.beta)
        return len(seen) == 3

    with pytest.raises(Interrupted):
        fit(m, x, config=TrainConfig(epochs=2, batch_size=20, kl_warmup=1.0), run_dir=tmp_path / "r",
            should_stop=stop)
    assert seen == [0.7] * 3 and m.beta == 0.7 and m.config()["beta"] == 0.7
    assert not [k for k in vars(m) if "beta" in k and k != "beta"]


def test_make_graph_step_is_the_train_step_on_a_supplied_batch():
    x = Stream(4, 0).uniform((B, 784), "float32")
    ref, m = VAE(hidden=(H,), latent=L, seed=3), VAE(hidden=(H,), latent=L, seed=3)
    opt_ref, opt = Adam(ref.theta), Adam(m.theta)
    step = make_graph_step(m, opt, x)
    for _ in range(3):
        r = ref.loss_and_grads(x)
        opt_ref.step(ref.grad)
        loss = step(x)
    np.testing.assert_array_equal(m.theta, ref.theta)
    assert float(loss) == float(r.neg_elbo) and opt.t == 3
    with pytest.raises(InputError, match=r"x must be float32 \(64, 784\), got float32 \(8, 784\)"):
        step(x[:8])
