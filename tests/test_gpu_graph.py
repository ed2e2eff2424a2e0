"""The training step (scratchvae.step) captured and replayed against the same step uncaptured.

``fit(graph=True)`` and ``fit(graph=False)`` run the one step body; NumPy has no capture, so
there the two must agree bit for bit. CuPy captures and replays it as CUDA graphs: the same
parameters to float tolerance (the arithmetic is the same, so in practice bit for bit), the
partial last batch on a graph of its own, the non-finite flag, exact resume, and the
benchmark entry point ``make_graph_step``.
"""

import numpy as np
import pytest

from scratchvae import VAE
from scratchvae.errors import NonFiniteError
from scratchvae.optim import Adam
from scratchvae.train import Interrupted, TrainConfig, fit, load_run, resume
from scratchvae.data import load_dataset
import scratchvae.step as tg

N_TRAIN, BATCH = 530, 64          # 8 full batches and a partial one of 18


@pytest.fixture(scope="module")
def data():
    train, test = load_dataset("embedded")
    return train.images[:N_TRAIN], test.images[:200]


@pytest.fixture
def graphs_made(monkeypatch):
    """Every StepGraphs fit creates, so a test can count the captured graphs."""
    made = []

    class Recording(tg.StepGraphs):
        def __init__(self, backend, capture=True):
            super().__init__(backend, capture)
            made.append(self)

    monkeypatch.setattr(tg, "StepGraphs", Recording)
    return made


def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300))


def train(backend, data, graph, dtype="float32", epochs=2, model_kw=None, events=None, **cfg):
    m = VAE(hidden=(32,), latent=4, seed=3, dtype=dtype, backend=backend, **(model_kw or {}))
    cb = (lambda e, i: events.append((e, i))) if events is not None else None
    h = fit(m, data[0], data[1], config=TrainConfig(epochs=epochs, batch_size=BATCH, **cfg),
            graph=graph, callback=cb)
    return m, h


CASES = {
    "plain": ({}, {}),
    "dynamic+warmup": ({}, {"binarize": "dynamic", "kl_warmup": 1.5}),
    "mask+sgd": ({}, {"corrupt": "mask:0.3", "optimizer": "sgd", "momentum": 0.9, "lr": 1e-5}),
    "gaussian-corrupt": ({}, {"corrupt": "gaussian:0.1"}),
    "gaussian-shared": ({"likelihood": "gaussian", "sigma": "shared"}, {}),
    "ae": ({"mode": "ae"}, {}),
    "kl-only": ({"mode": "kl-only"}, {}),
    "tanh-2layer": ({"hidden": (24, 12), "activation": "tanh"}, {}),
    "full-iwae": ({"posterior": "full", "objective": "iwae", "iw_samples": 3}, {"binarize": "dynamic"}),
    "bf16": ({"precision": "bf16"}, {"binarize": "dynamic"}),
    "bf16-iwae-2layer": ({"precision": "bf16", "objective": "iwae", "iw_samples": 2, "hidden": (24, 12)}, {}),
    "tf32": ({"precision": "tf32"}, {"kl_warmup": 1.5}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_graph_step_matches_eager_fit(case, backend, data, graphs_made):
    model_kw, cfg = CASES[case]
    if model_kw.get("precision", "fp32") != "fp32" and backend.name == "numpy":
        pytest.skip("tf32 and bf16 need the cupy backend (numpy's refusal: tests/test_precision.py)")
    if "hidden" in model_kw:
        model_kw = dict(model_kw)
    events = []
    runs = []
    for graph in (False, True):
        kw = dict(model_kw)
        hidden = kw.pop("hidden", (32,))
        m = VAE(hidden=hidden, latent=4, seed=3, backend=backend, **kw)
        h = fit(m, data[0], data[1], config=TrainConfig(epochs=2, batch_size=BATCH, **cfg),
                graph=graph, callback=(lambda e, i: events.append((e, i))) if graph else None)
        runs.append((backend.to_host(m.theta), h, m.rng.state(), m.beta))
    (t0, h0, r0, b0), (t1, h1, r1, b1) = runs
    assert not [i for e, i in events if e == "graph"], "the graph fell back to eager"
    assert len(graphs_made) == 2 and len(graphs_made[0]) == 0     # one step each; uncaptured
    assert len(graphs_made[1]) == (2 if backend.name == "cupy" else 0)   # full and partial batch
    for k in r0:
        np.testing.assert_array_equal(r0[k], r1[k])    # every RNG stream advanced alike
    assert [r["beta"] for r in h0] == [r["beta"] for r in h1] and b0 == b1
    if backend.name == "numpy":
        np.testing.assert_array_equal(t0, t1)
        assert [r["train_loss"] for r in h0] == [r["train_loss"] for r in h1]
    else:
        assert rel(t1, t0) <= 1e-6, rel(t1, t0)
        for a, b in zip(h0, h1):
            assert abs(a["train_loss"] - b["train_loss"]) <= 1e-5 * abs(a["train_loss"])


def test_graph_step_float64(backend, data):
    m0, h0 = train(backend, data, False, dtype="float64", epochs=1)
    m1, h1 = train(backend, data, True, dtype="float64", epochs=1)
    assert rel(backend.to_host(m1.theta), backend.to_host(m0.theta)) <= 1e-12
    assert abs(h0[0]["train_loss"] - h1[0]["train_loss"]) <= 1e-12 * abs(h0[0]["train_loss"])


def test_graph_counts_every_batch_including_the_partial_one(backend, data):
    m, h = train(backend, data, True, epochs=1)
    assert h[0]["step"] == -(-N_TRAIN // BATCH)
    assert np.isfinite(h[0]["train_loss"]) and h[0]["train_loss"] > 0


@pytest.mark.parametrize("when", ["first", "later"])
def test_non_finite_loss_raises_the_same_error(when, backend, data):
    """NaN parameters (step 1), or one image whose Gaussian loss overflows (a random batch of
    67, so the flag read every NONFINITE_CHECK_EVERY steps or the epoch-end check finds it)."""
    msgs = []
    for graph in (False, True):
        if when == "first":
            m = VAE(hidden=(32,), latent=4, seed=3, backend=backend)
            m.params["dec.out.b"][3] = np.nan
            x, cfg = data[0], TrainConfig(epochs=2, batch_size=BATCH)
        else:
            m = VAE(hidden=(32,), latent=4, seed=3, backend=backend, likelihood="gaussian")
            x = data[0].astype(np.float32) / np.float32(255)
            x[7, :] = 1e30                                  # (x − m)² overflows float32
            cfg = TrainConfig(epochs=2, batch_size=8)
        with pytest.raises(NonFiniteError) as err:
            fit(m, x, config=cfg, graph=graph)
        msgs.append(str(err.value))
    assert msgs[0] == msgs[1]


def test_graph_resume_is_exact(backend, data, tmp_path):
    full, _ = train(backend, data, True, epochs=2)
    part = VAE(hidden=(32,), latent=4, seed=3, backend=backend)
    calls = []

    def stop():
        calls.append(1)
        return len(calls) == 5          # interrupt mid-epoch 1

    with pytest.raises(Interrupted):
        fit(part, data[0], data[1], config=TrainConfig(epochs=2, batch_size=BATCH),
            run_dir=tmp_path / "run", should_stop=stop, graph=True)
    run = load_run(tmp_path / "run", backend=backend)
    resume(run, data[0], data[1], graph=True)
    np.testing.assert_array_equal(backend.to_host(run.model.theta), backend.to_host(full.theta))


def test_make_graph_step_matches_eager_steps(backend, data):
    x = backend.asarray(data[0][:BATCH].astype(np.float32) / np.float32(255))
    ref = VAE(hidden=(32,), latent=4, seed=3, backend=backend)
    m = VAE(hidden=(32,), latent=4, seed=3, backend=backend)
    opt_ref, opt = Adam(ref.theta), Adam(m.theta)
    step = tg.make_graph_step(m, opt, x)
    for _ in range(5):
        r = ref.loss_and_grads(x)
        opt_ref.step(ref.grad)
        loss = step(x)
    backend.synchronize()
    assert opt.t == opt_ref.t == 5
    assert rel(backend.to_host(m.theta), backend.to_host(ref.theta)) <= 1e-6
    assert rel(backend.to_host(loss), backend.to_host(r.neg_elbo)) <= 1e-6
