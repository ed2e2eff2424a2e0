"""Two stochastic layers through every verb: train's epoch lines and metrics, evaluate (the
importance-sampled log p(x) through the chunks, each layer's KL and active units), encode and
decode per layer, ancestral samples, the figures that apply, save/load, resume, compare's
refusal. Small shapes; the model's own math is tests/test_hierarchy.py's."""

import json

import numpy as np
import pytest

from scratchvae import VAE
from scratchvae.cli import main
from scratchvae.codes import decode_codes, encode_images, read_codes
from scratchvae.evaluate import (active_units, active_units_per_layer, evaluate_elbo, iwae_estimates,
                                 rows_per_chunk)
from scratchvae.errors import InputError
from scratchvae.runs import load_run

from test_hierarchy import _exact_log_px, _linear_model
from test_own_data_cli import run_cli

SMALL = ["--hidden", "16/8", "--latent", "4,2", "--batch-size", "250", "--quiet", "--seed", "3"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One epoch of a two-layer VAE on the embedded data (5000 + 1000 images)."""
    out = tmp_path_factory.mktemp("layers") / "run"
    assert main(["train", "--epochs", "1", "--out", str(out), *SMALL]) == 0
    return out


def _model(objective="elbo", **kw):
    extra = dict(objective="iwae", iw_samples=3) if objective == "iwae" else {}
    m = VAE(input_dim=12, hidden=((10,), (6,)), latent=(3, 2), seed=1, dtype="float64", **extra, **kw)
    x = (np.random.default_rng(0).random((23, 12)) < 0.4).astype(np.float64)
    return m, x


# -- evaluate -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("objective", ["elbo", "iwae"])
def test_each_layers_kl_adds_up_to_the_tests_kl(objective):
    m, x = _model(objective)
    e = evaluate_elbo(m, x, batch=7)
    assert len(e["kl_layers"]) == 2 and all(v > 0 for v in e["kl_layers"])
    assert sum(e["kl_layers"]) == pytest.approx(e["kl"], rel=1e-12)


def test_importance_sampling_through_the_chunks_gives_exact_log_px(backend):
    """q set to the exact posteriors of a linear-Gaussian model: every weight is log p(x), so
    each L_K evaluation gives is the closed-form log p(x), whatever the chunks (each layer's ε
    drawn per chunk, bottom first)."""
    m, maps = _linear_model(backend, exact=True, seed=11)
    x = np.random.default_rng(12).normal(size=(9, 5)) * 1.5
    want = _exact_log_px(x, *maps)
    for batch in (7, 40, 10_000):                 # several images per chunk, and samples split into chunks
        est = iwae_estimates(m, backend.asarray(x), ks=(1, 4, 20), batch=batch)
        for K in (1, 4, 20):
            np.testing.assert_allclose(est[K], want, rtol=0, atol=1e-10, err_msg=f"K={K} batch={batch}")


def test_chunks_hold_the_chain_too():
    one, _ = _model()
    m = VAE(input_dim=12, hidden=((10,), (60, 60)), latent=(3, 40), seed=1, dtype="float64")
    assert rows_per_chunk(m) < rows_per_chunk(one)


def test_active_units_per_layer_are_the_papers():
    """Layer 1's are active_units'; with q(h_1|x) nearly a point (log σ² = −30), E_q[h_2|x] is
    μ_2(μ_1(x)), the means' path, whatever the number of chains."""
    m, x = _model()
    m.params["enc.head.b"][3:] = -30.0
    m.params["enc.head.W"][:, 3:] = 0.0
    (c1, v1), (c2, v2) = active_units_per_layer(m, x, samples=5, threshold=1e-6)
    c, v = active_units(m, x, threshold=1e-6)
    np.testing.assert_array_equal(v1, v)
    assert c1 == c
    params, _ = m.chain.encode_layers(m, x)
    np.testing.assert_allclose(v2, np.var(params[1][0], axis=0), rtol=1e-4)     # h_1 moves by σ_1 ≈ 3e-7
    assert c2 == np.count_nonzero(np.var(params[1][0], axis=0) > 1e-6)


def test_evaluate_reports_each_layer(trained, capsys):
    assert main(["evaluate", str(trained), "--limit", "40", "--ks", "1,10", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "kl by layer: h1 " in out and " + h2 " in out
    assert "active units h1" in out and "active units h2" in out and "E_q over 100 draws of h1 ~ q" in out
    assert main(["evaluate", str(trained), "--limit", "40", "--ks", "1,10", "--quiet", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    au = res["active_units"]
    assert [a["of"] for a in au["layers"]] == [4, 2] and au["samples"] == 100
    assert sum(res["test_elbo"]["kl_layers"]) == pytest.approx(res["test_elbo"]["kl"], rel=1e-6)
    lp = res["log_px"]
    assert lp["10"]["mean"] >= lp["1"]["mean"] - 3 * lp["1"]["se"]


# -- train ---------------------------------------------------------------------------------------------
def test_train_prints_and_records_each_layers_kl(trained, tmp_path, capsys):
    row = json.loads((trained / "metrics.jsonl").read_text().splitlines()[-1])
    assert sum(row["test_kl_layers"]) == pytest.approx(row["test_kl"], rel=1e-6)
    assert main(["train", "--epochs", "1", "--out", str(tmp_path / "r"), *SMALL[:-3]]) == 0
    line = [s for s in capsys.readouterr().out.splitlines() if s.startswith("epoch")][0]
    assert " (h1 " in line and " + h2 " in line


def test_resume_continues_as_if_never_stopped(trained, tmp_path):
    cont = tmp_path / "cont"
    assert main(["train", "--epochs", "1", "--out", str(cont), *SMALL]) == 0
    assert main(["train", "--resume", str(cont), "--epochs", "2", "--quiet"]) == 0
    whole = tmp_path / "whole"
    assert main(["train", "--epochs", "2", "--out", str(whole), *SMALL]) == 0
    np.testing.assert_array_equal(load_run(cont).model.theta, load_run(whole).model.theta)


def test_save_and_load_keep_the_chain(tmp_path):
    m, x = _model("iwae")
    m.save(tmp_path / "m.npz")
    back = VAE.load(tmp_path / "m.npz")
    eps = m.noise(x.shape[0], m.rng["eval"])
    assert back.chain is not None and back.chain.latents == (3, 2)
    assert back.loss_and_grads(x, eps=eps, need_grads=False).loss == m.loss_and_grads(x, eps=eps, need_grads=False).loss


# -- encode, decode, sample --------------------------------------------------------------------------
def test_codes_are_named_per_layer_and_decode_from_either():
    m, x = _model()
    codes = encode_images(m, x)
    assert sorted(codes) == ["logvar1", "logvar2", "mu1", "mu2"]
    params, _ = m.chain.encode_layers(m, x)                    # the means' path
    np.testing.assert_array_equal(codes["mu2"], params[1][0])
    drawn = encode_images(m, x, sample=True)
    assert {"z1", "z2"} <= set(drawn) and drawn["z2"].shape == (23, 2)
    pixels, which = decode_codes(m, codes)
    assert which == "mu1"
    np.testing.assert_array_equal(pixels, m.decode_mean(codes["mu1"]))
    pixels, which = decode_codes(m, codes, layer=2)
    assert which.startswith("mu2") and "conditional priors' means" in which
    prior = m.chain.layers[0].prior
    h1 = (prior.forward(codes["mu2"]) + prior.last.b)[:, :3]   # p(h1 | h2)'s mean
    np.testing.assert_allclose(pixels, m.decode_mean(h1), rtol=1e-12)
    for bad in (0, 3, True):
        with pytest.raises(InputError, match="layer must be a stochastic layer, 1 to 2"):
            decode_codes(m, codes, layer=bad)
    with pytest.raises(InputError, match="z2 or mu2"):
        decode_codes(m, {"mu1": codes["mu1"]}, layer=2)


def test_samples_are_ancestral():
    """h_2 given, h_1 drawn from p(h_1|h_2) with the 'eval' stream: the model's samples are the
    decodes of the prior's mean plus its σ times that stream's next normals."""
    m, _ = _model()
    h2 = np.random.default_rng(5).normal(size=(6, 2))
    state = m.rng["eval"].state()
    got = m.sample(6, eps=h2)
    m.rng["eval"].set_state(state)
    noise = m.rng["eval"].normal((6, 3), "float64")
    prior = m.chain.layers[0].prior
    out = prior.forward(h2) + prior.last.b
    h1 = out[:, :3] + np.exp(0.5 * out[:, 3:]) * noise
    np.testing.assert_allclose(got, m.decode_mean(h1), rtol=1e-12)


def test_encode_decode_sample_plot_on_the_command_line(trained, tmp_path, capsys):
    codes = tmp_path / "codes.npz"
    assert main(["encode", str(trained), "--limit", "30", "--out", str(codes)]) == 0
    assert sorted(read_codes(codes)) == ["logvar1", "logvar2", "mu1", "mu2", "y"]
    assert main(["decode", str(trained), str(codes), "--layer", "2", "--out", str(tmp_path / "d.npz")]) == 0
    assert "decoded mu2 (down to h1 through the conditional priors' means) of 30 codes" in capsys.readouterr().out
    assert read_codes(tmp_path / "d.npz")["x"].shape == (30, 784)
    assert run_cli(["decode", str(trained), str(codes), "--layer", "3", "--out", str(tmp_path / "e.png")]) == 2
    assert "--layer: expected a stochastic layer of the run's model, 1 to 2, got 3" in capsys.readouterr().err
    assert not (tmp_path / "e.png").exists()
    assert main(["sample", str(trained), "--n", "4", "--out", str(tmp_path / "s.png")]) == 0
    assert main(["plot", str(trained), "--out", str(tmp_path / "figs"), "--n", "4"]) == 0
    drawn = sorted(p.stem for p in (tmp_path / "figs").iterdir())
    assert drawn == ["abstraction", "arithmetic", "interpolation", "latent", "losses", "reconstructions", "samples"]
    err = capsys.readouterr().err
    assert "skipped manifold.png: it walks z through N(0, I)'s quantiles, and h1's prior is p(h1|h2)" in err
    assert "skipped posteriors.png: it draws 2-D latents" in err


def test_compare_refuses_several_layers(tmp_path, capsys):
    assert run_cli(["compare", "--hidden", "16/8", "--epochs", "1", "--out", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err
    assert "--hidden: the comparison's models have one stochastic layer" in err and "got 16/8" in err
    assert not (tmp_path / "c").exists()
