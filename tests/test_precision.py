"""A model's precision (fp32, tf32, bf16), everywhere a CPU can check it.

(The bfloat16 conversions and the bf16 product are tests/test_bf16.py; the cuBLAS binding's
calls tests/test_cublas_binding.py.)

* the model's bf16 path, run through the NumPy bodies on a backend that claims the reduced
  precisions (``Emulating``; the real NumPy backend refuses them): every product reads exactly
  the bfloat16 words of its operands, the step allocates nothing after its first call and asks
  only for kernels the CUDA module has, evaluation runs in the model's precision;
* the setting's boundaries: refusals, config.json, checkpoints, saved models, resume.

What only a GPU can check (cuBLAS's TF32 and BF16 products themselves, graph capture of the
bf16 step, speed) is in tests/test_cupy.py and tests/test_gpu_graph.py.
"""

import json

import numpy as np
import pytest

import scratchvae.ops.dense as dense_module
import scratchvae.ops.precision as precision_module
from scratchvae import VAE, Adam, fit, load_run
from scratchvae.backend import NUMPY, Backend, _cupy_kernels, body_of
from scratchvae.backend.random import Stream
from scratchvae.cli import main
from scratchvae.errors import CheckpointError, InputError
from scratchvae.evaluate import evaluate_run, format_report
from scratchvae.ops.bf16 import from_bf16, to_bf16
from scratchvae.ops.dense import matmul
from scratchvae.config import TrainConfig
from scratchvae.step import TrainState
from scratchvae.step import Schedule, TrainStep

from _cuda_host import HostCupy


class Emulating(Backend):
    """NumPy arrays, and the reduced precisions claimed: their products run the NumPy bodies
    (bf16: the products of the operands' exact bfloat16 values, accumulated in float32)."""

    name = "numpy-emulating"
    precisions = ("fp32", "tf32", "bf16")


EMU = Emulating()


# -- the model ----------------------------------------------------------------------------------------
def small(precision="bf16", backend=EMU, **kw):
    return VAE(input_dim=30, hidden=kw.pop("hidden", (12,)), latent=4, backend=backend, precision=precision,
               seed=1, **kw)


def rounding_matmul(a, b, out=None, precision="fp32"):
    """A float64 product of the operands rounded to bfloat16 (the reference's GEMM)."""
    def q(m):
        return from_bf16(to_bf16(np.asarray(m, dtype=np.float32))).astype(np.float64)
    return np.matmul(q(a), q(b), out=out)


CASES = {"elbo": {}, "two layers": {"hidden": (12, 8)}, "iwae": {"objective": "iwae", "iw_samples": 3},
         "full": {"posterior": "full"}, "ae": {"mode": "ae"}, "kl-only": {"mode": "kl-only"}}


@pytest.mark.parametrize("case", list(CASES))
def test_every_bf16_product_reads_the_words_of_its_operands(case, monkeypatch):
    """The bf16 model against the same model in float64 whose every product (not the bias sums)
    rounds its operands to bfloat16: they agree to float32's noise, where plain FP32 products
    miss by the bfloat16 rounding. The weights' words are refreshed after set_params."""
    kw = CASES[case]
    r = np.random.default_rng(3)
    x = r.uniform(size=(9, 30)).astype(np.float32)
    m = small(**kw)
    eps = r.standard_normal(m.eps_shape(9)).astype(np.float32)
    m.loss_and_grads(x, eps=eps)                         # words of the first weights
    params = {k: (v + 0.1 * r.standard_normal(v.shape)).astype(np.float32) for k, v in m.host_params().items()}
    m.set_params(params)
    got = m.loss_and_grads(x, eps=eps)
    got_loss, got_grads = float(got.loss), {k: v.copy() for k, v in got.grads.items()}

    def reference():
        ref = small("fp32", NUMPY, dtype="float64", **kw)
        ref.set_params({k: v.astype(np.float64) for k, v in params.items()})
        res = ref.loss_and_grads(x.astype(np.float64), eps=eps.astype(np.float64))
        return float(res.loss), {k: v.copy() for k, v in res.grads.items()}

    plain_loss, plain = reference()
    monkeypatch.setattr(precision_module, "matmul", rounding_matmul)
    monkeypatch.setattr(dense_module, "matmul", rounding_matmul)
    want_loss, want = reference()

    def err(g, w):
        return max(np.linalg.norm(g[k] - w[k]) / max(np.linalg.norm(w[k]), 1e-30) for k in w if np.any(w[k]))

    assert abs(got_loss - want_loss) <= 1e-6 * abs(want_loss)
    assert err(got_grads, want) <= 5e-5
    assert err(got_grads, plain) > 1e-3 and got_loss != plain_loss


def test_the_products_of_each_precision(monkeypatch):
    """fp32 and tf32 products read the float32 arrays, bf16 products uint16 words; bias
    gradients are summed in float32 in every precision."""
    seen, sums = [], []

    def spy(block):
        def call(a, b, out=None, precision="fp32"):
            seen.append((precision, a.dtype.name, b.dtype.name))
            return block(a, b, out=out, precision=precision)
        return call

    real_sum_rows = dense_module.sum_rows
    monkeypatch.setattr(precision_module, "matmul", spy(matmul))
    monkeypatch.setattr(dense_module, "matmul", spy(matmul))
    monkeypatch.setattr(dense_module, "sum_rows", lambda a, out=None: (sums.append(a.dtype.name),
                                                                       real_sum_rows(a, out=out))[1])
    x = np.random.default_rng(4).uniform(size=(5, 30)).astype(np.float32)
    for name, dtype in (("fp32", "float32"), ("tf32", "float32"), ("bf16", "uint16")):
        seen.clear()
        sums.clear()
        res = small(name).loss_and_grads(x)
        assert len(seen) == 2 + 2 + 3 + 4 and set(seen) == {(name, dtype, dtype)}
        assert sums == ["float32"] * 4                        # the four bias gradients
        assert all(g.dtype == np.float32 for g in res.grads.values()) and res.recon.dtype == np.float32


def test_fp32_reads_the_arrays_themselves_and_is_not_recorded():
    """fp32 keeps no copies and no config key (a 0.1.0 run's exact resume: tests/test_compat.py)."""
    x = np.random.default_rng(5).uniform(size=(6, 30)).astype(np.float32)
    a, b = small("fp32", NUMPY), small("fp32", EMU)
    ra, rb = a.loss_and_grads(x), b.loss_and_grads(x)
    assert float(ra.loss) == float(rb.loss) and a.theta_lo is None and a.params_lo is a.params
    np.testing.assert_array_equal(a.grad, b.grad)
    assert "precision" not in a.config() and "precision" not in repr(a)


B, L = 64, 64


def bf16_step(**kw):
    m = VAE(hidden=(64,), latent=L, seed=3, backend=EMU, precision="bf16", **kw)
    data = Stream(1, 0).uniform((3 * B, 784), "float32")
    o = Adam(m.theta)
    state = TrainState.start(m)
    s = TrainStep(m, o, data, B, Schedule(o, m.beta), streams=state.streams)
    s.begin(0, 0, state.streams["shuffle"].permutation(data.shape[0]))
    return m, s


def test_a_bf16_step_writes_its_words_and_products_into_the_same_buffers_each_step(monkeypatch):
    """What a captured bf16 step needs: after its first call, every conversion and product of a
    step writes into an ``out`` buffer, the same ones at every step (the NumPy bodies' own
    temporaries are not the GPU's: its kernels write straight into ``out``)."""
    from scratchvae.backend import DECLARED

    outs = []

    def kernel(name):
        if name not in ("to_bf16", "matmul"):
            return None
        body = DECLARED[name].body
        return lambda *args: (outs.append((name, args[2 if name == "matmul" else 1])), body(*args))[1]

    m, s = bf16_step()
    s(0)
    monkeypatch.setattr(NUMPY, "kernel", kernel)
    words = m.theta_lo.copy()
    steps = []
    for i in (1, 2):
        outs.clear()
        s(i)
        assert all(out is not None for _, out in outs), [n for n, out in outs if out is None]
        steps.append([(n, out.__array_interface__["data"][0]) for n, out in outs])
    assert len(steps[0]) == 11 + 9 and steps[0] == steps[1]        # 11 products; θ, 4 inputs, 4 gradients
    assert not np.array_equal(m.theta_lo, words)                       # the words follow the weights


@pytest.mark.parametrize("kw", [{}, {"objective": "iwae", "iw_samples": 2}])
def test_a_bf16_step_asks_only_for_kernels_the_cuda_module_has(monkeypatch, kw):
    names = []
    monkeypatch.setattr(NUMPY, "kernel", lambda name: names.append(name))
    m, s = bf16_step(**kw)
    names.clear()
    s(0)
    assert {"to_bf16", "matmul", "sum_rows", "adam_from"} <= set(names) and "from_bf16" not in names
    kernels = _cupy_kernels.Kernels(HostCupy(), body_of)
    assert [n for n in set(names) if kernels.get(n) is None] == []


# -- refusals and records -------------------------------------------------------------------------
def test_reduced_precisions_are_refused_where_they_cannot_run():
    with pytest.raises(InputError, match=r"precision 'bf16' needs the cupy backend \(a CUDA GPU\): the "
                                         r"numpy backend computes its matrix products in fp32 only"):
        VAE(precision="bf16")
    with pytest.raises(InputError, match="precision 'tf32' needs the cupy backend"):
        VAE(precision="tf32", backend="numpy")
    with pytest.raises(InputError, match=r"precision tf32 applies to dtype float32 \(it rounds float32 products\), "
                                         "got dtype float64"):
        VAE(precision="tf32", backend=EMU, dtype="float64")
    with pytest.raises(InputError, match="precision must be one of fp32, tf32, bf16, got 'fp16'"):
        VAE(precision="fp16")


def test_the_precision_is_in_the_config_only_when_not_fp32(tmp_path):
    m = small("tf32")
    assert m.config()["precision"] == "tf32" and "precision=tf32" in repr(m)
    assert VAE(**small("fp32").config()).config() == small("fp32").config()
    m.save(tmp_path / "m.npz")
    assert VAE.load(tmp_path / "m.npz", backend=EMU).precision.name == "tf32"
    with pytest.raises(InputError, match="precision 'tf32' needs the cupy backend"):
        VAE.load(tmp_path / "m.npz")


@pytest.fixture(scope="module")
def bf16_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("bf16run") / "run"
    images = Stream(7, 0).uniform((40, 30), "float32")
    fit(small("bf16"), images[:32], images[32:], config=TrainConfig(epochs=1, batch_size=16), run_dir=d)
    return d, images


def test_a_bf16_run_records_its_precision_and_resumes_in_it(bf16_run, tmp_path):
    import shutil

    from scratchvae.train import resume

    d, images = tmp_path / "run", bf16_run[1]
    shutil.copytree(bf16_run[0], d)
    assert json.loads((d / "config.json").read_text())["model"]["precision"] == "bf16"
    run = load_run(d, backend=EMU)
    assert run.model.precision.name == "bf16" and run.meta["config"]["model"]["precision"] == "bf16"
    with pytest.raises(InputError, match="precision 'bf16' needs the cupy backend"):
        load_run(d, backend="numpy")
    resume(run, images[:32], images[32:], epochs=2)
    assert load_run(d, backend=EMU).meta["epoch"] == 2


def test_a_checkpoint_of_another_precision_than_its_run_is_refused(bf16_run, tmp_path):
    import shutil

    d = tmp_path / "run"
    shutil.copytree(bf16_run[0], d)
    doc = json.loads((d / "config.json").read_text())
    del doc["model"]["precision"]                                   # config.json now says fp32
    (d / "config.json").write_text(json.dumps(doc))
    with pytest.raises(CheckpointError, match="precision"):
        load_run(d, backend=EMU)


def test_evaluation_runs_in_the_models_precision_and_says_so(bf16_run, monkeypatch):
    from scratchvae.data.dataset import Dataset

    d, images = bf16_run
    run = load_run(d, backend=EMU)
    labels = np.arange(40) % 2
    train = Dataset((images[:32] * 255).astype(np.uint8), labels[:32], "tiny")
    test = Dataset((images[32:] * 255).astype(np.uint8), labels[32:], "tiny")
    used = set()
    real = precision_module.matmul
    monkeypatch.setattr(precision_module, "matmul", lambda a, b, out=None, precision="fp32":
                        (used.add((precision, a.dtype.name)), real(a, b, out=out, precision=precision))[1])
    res = evaluate_run(run, train, test, ks=(1, 4))
    assert used == {("bf16", "uint16")} and res["precision"] == "bf16"
    assert "products in bf16" in format_report(res)


# -- the command line -----------------------------------------------------------------------------------
def test_the_cli_refuses_a_reduced_precision_it_cannot_run_by_name(tmp_path, capsys):
    assert main(["train", "--precision", "bf16", "--out", str(tmp_path / "a"), "--quiet"]) == 2
    assert "--precision bf16 needs the cupy backend (a CUDA GPU)" in capsys.readouterr().err
    assert main(["train", "--precision", "tf32", "--dtype", "float64", "--out", str(tmp_path / "b")]) == 2
    assert "--precision tf32 applies to --dtype float32" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_resuming_with_another_precision_is_refused_by_name(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--epochs", "1", "--hidden", "8", "--latent", "2", "--quiet", "--out", str(run)]) == 0
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    assert main(["train", "--resume", str(run), "--epochs", "2", "--precision", "bf16"]) == 2
    assert "--precision bf16 (the run has fp32)" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before
    assert main(["train", "--resume", str(run), "--epochs", "2", "--precision", "fp32", "--quiet"]) == 0
