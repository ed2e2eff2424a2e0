"""Evaluation: importance-weighted log p(x), active units, the linear probe, whole runs and
the AE / KL-only / VAE comparison.

The IWAE estimator is checked where log p(x) is known exactly: a linear-Gaussian VAE
(``hidden=()``, Gaussian likelihood, float64). Its decoder x = z W + b + σ·n with z, n ~ N(0, I)
gives x ~ N(b, WᵀW + σ² I) (W: (L, D) rows). With W's rows orthogonal the true posterior is
diagonal, so the encoder can be set to it exactly, and then every importance weight equals
p(x): each estimate must equal the exact log p(x) to rounding. Perturbing that encoder
(mean shifted by half a posterior std, variance doubled) makes the ELBO exactly
log p(x) − KL(q ‖ posterior), also closed-form; the estimates must then rise with K from it
to log p(x), within a few standard errors.

All draws come from scratchvae's own streams under fixed seeds.
"""

import math
from pathlib import Path
import sys
import tracemalloc
import types

import numpy as np
import pytest

from scratchvae import VAE
from scratchvae.backend.random import Stream
from scratchvae.errors import InputError
from scratchvae.compare import compare_models
from scratchvae.evaluate import (
    active_units,
    evaluate_run,
    format_report,
    iwae_estimates,
    iwae_log_px,
    linear_probe,
    log_importance_weights,
)
from scratchvae.ops.gaussian import log_normal_rows, log_standard_normal_rows
from scratchvae.inputs import STATIC_TEST_STREAM, binarize_static, prepare_images, prepare_split
from scratchvae.ops.likelihoods import bernoulli_nll_rows, gaussian_nll_rows
from scratchvae.ops.reference import bernoulli_nll, gaussian_nll
from scratchvae.runs import write_config
from scratchvae.train import TrainConfig, fit, load_run

Z_MAX = 4.0  # standard errors
KS = (1, 10, 100, 1000)


def _host_normal(seed, shape):
    return Stream(seed, 7).normal(shape, "float64")


# -- the linear-Gaussian VAE with an exact log p(x) ----------------------------------------------
L, D, N_IMAGES = 2, 6, 400
SCALES = np.array([1.5, 0.8])


def linear_gaussian(backend, sigma, perturb):
    """A linear-Gaussian VAE, its data and the exact per-image log p(x) and ELBO (host).

    Decoder W = diag(SCALES) R with R's rows orthonormal, so WWᵀ = diag(a²) and the posterior
    is N(m, diag s), s = 1/(1 + a²/σ²), m = (x − b) Wᵀ diag(s)/σ². The encoder is set to it
    (``perturb=False``) or to N(m + ½√s, diag 2s).
    """
    model = VAE(input_dim=D, hidden=(), latent=L, likelihood="gaussian", sigma=sigma,
                dtype="float64", seed=11, backend=backend)
    Q, _ = np.linalg.qr(_host_normal(1, (D, L)))
    W = SCALES[:, None] * Q.T                                   # (L, D), orthogonal rows
    b = 0.5 * _host_normal(2, (D,))
    P = model.params
    if model.likelihood.learned:
        P["dec.logsigma"][...] = math.log(0.6)                 # raw s; log σ = soft floor of it
    log_sigma = float(model.backend.to_host(model.xp.asarray(model.log_sigma())).ravel()[0])
    var = math.exp(2 * log_sigma)
    s = 1.0 / (1.0 + SCALES ** 2 / var)                         # posterior variances (L,)
    A = W.T * s / var                                           # (D, L): m = (x − b) A
    enc_W = np.zeros((D, 2 * L))
    enc_W[:, :L] = A
    enc_b = np.concatenate([-b @ A, np.log(s)])
    shift, lv_add = (0.5 * np.sqrt(s), math.log(2.0)) if perturb else (0.0, 0.0)
    enc_b[:L] += shift
    enc_b[L:] += lv_add
    model.set_params({"enc.head.W": enc_W, "enc.head.b": enc_b, "dec.out.W": W, "dec.out.b": b,
                      **({"dec.logsigma": model.host_params()["dec.logsigma"]}
                         if model.likelihood.learned else {})})

    z = _host_normal(3, (N_IMAGES, L))
    x = z @ W + b + math.sqrt(var) * _host_normal(4, (N_IMAGES, D))
    C = W.T @ W + var * np.eye(D)
    chol = np.linalg.cholesky(C)
    r = np.linalg.solve(chol, (x - b).T)                        # (D, N)
    log_px = (-0.5 * np.sum(r * r, axis=0) - np.sum(np.log(np.diag(chol)))
              - 0.5 * D * math.log(2 * math.pi))
    # KL(q ‖ posterior) per image, diagonal Gaussians: ½ Σ (v_q/v_p + δ²/v_p − 1 − log(v_q/v_p))
    vq = s * math.exp(lv_add)
    kl = 0.5 * np.sum(vq / s + shift ** 2 / s - 1.0 - np.log(vq / s)) * np.ones(N_IMAGES)
    return model, model.backend.asarray(x), log_px, log_px - kl


SIGMAS = ["fixed:0.5", "shared"]


def _paired(a, b):
    d = np.asarray(a) - np.asarray(b)
    return d.mean(), d.std(ddof=1) / math.sqrt(d.size)


@pytest.mark.parametrize("sigma", SIGMAS)
def test_iwae_is_exact_when_q_is_the_true_posterior(backend, sigma):
    model, x, log_px, _ = linear_gaussian(backend, sigma, perturb=False)
    est = iwae_estimates(model, x, ks=(1, 10, 100))
    for K, v in est.items():
        np.testing.assert_allclose(v, log_px, rtol=1e-11, atol=1e-11, err_msg=f"K={K}")
    # not vacuous: the weights are constant only because q is exact; a q with the std where
    # the variance belongs (logvar = log √s) gives weights that vary from sample to sample
    model.params["enc.head.b"][L:] *= 0.5
    w = model.backend.to_host(log_importance_weights(model, x[:20], 50))
    assert np.ptp(w, axis=1).min() > 1e-2
    assert np.abs(iwae_estimates(model, x, ks=(1,))[1] - log_px).max() > 1e-2


@pytest.mark.parametrize("sigma", SIGMAS)
def test_iwae_rises_from_the_elbo_to_the_exact_log_px(backend, sigma):
    model, x, log_px, elbo = linear_gaussian(backend, sigma, perturb=True)
    est = iwae_estimates(model, x, ks=KS)
    gaps = {}
    for K in KS:
        gaps[K] = _paired(est[K], log_px)
    # K = 1 is the ELBO: log p(x) − KL(q ‖ posterior), 0.56 nats below log p(x) here
    d, se = _paired(est[1], elbo)
    assert abs(d) < Z_MAX * se, (d, se)
    assert -gaps[1][0] > 0.5 and -gaps[1][0] > 50 * gaps[1][1], gaps[1]
    # K = 1000 reaches log p(x) (the remaining bias, ≈ Var(w/p)/2K ≈ 3e-4 nats, is below the noise)
    d, se = gaps[1000]
    assert abs(d) < Z_MAX * se and abs(d) < 0.01, (d, se)
    # the estimates rise with K: each step up is positive or within noise of zero
    for K0, K1 in zip(KS, KS[1:]):
        step, se = _paired(est[K1], est[K0])
        assert step > -Z_MAX * se, (K0, K1, step, se)
    assert _paired(est[10], est[1])[0] > 0.3
    # the summary: the K = 1000 mean within a few of its (between-image) SEs of the exact mean
    summary = iwae_log_px(model, x, ks=(1, 1000))
    mean, se = summary[1000]
    assert abs(mean - log_px.mean()) < 3 * se
    assert summary[1][0] < summary[1000][0]
    # ... and a deliberately wrong density (σ doubled in the exact formula) is far outside
    wrong = _wrong_log_px(model, x, factor=2.0)
    assert abs(mean - wrong.mean()) > 10 * se


def _wrong_log_px(model, x, factor):
    W = model.host_params()["dec.out.W"]
    b = model.host_params()["dec.out.b"]
    ls = float(np.ravel(model.backend.to_host(model.xp.asarray(model.log_sigma())))[0])
    C = W.T @ W + (factor * math.exp(ls)) ** 2 * np.eye(D)
    xh = model.backend.to_host(x)
    sign, logdet = np.linalg.slogdet(C)
    r = np.linalg.solve(C, (xh - b).T)
    return -0.5 * (np.sum((xh - b).T * r, axis=0) + logdet + D * math.log(2 * math.pi))


@pytest.mark.parametrize("sigma", SIGMAS)
def test_iwae_k1_matches_the_elbo_of_loss_and_grads(backend, sigma):
    model, x, _, elbo = linear_gaussian(backend, sigma, perturb=True)
    n, reps = x.shape[0], 64
    stream = Stream(5, 3, xp=model.xp)
    vals = np.array([-float(model.loss_and_grads(x, eps=stream.normal((n, L), "float64"),
                                                 need_grads=False).neg_elbo) / n
                     for _ in range(reps)])
    mc, mc_se = vals.mean(), vals.std(ddof=1) / math.sqrt(reps)
    assert abs(mc - elbo.mean()) < Z_MAX * mc_se, (mc, elbo.mean(), mc_se)
    k1 = iwae_estimates(model, x, ks=(1,))[1]
    d, se = _paired(k1, elbo)
    assert abs(k1.mean() - mc) < Z_MAX * math.hypot(se, mc_se)


def test_iwae_chunking_bounds_memory_and_keeps_every_row():
    model = VAE(input_dim=784, hidden=(64,), latent=8, seed=0)
    x = prepare_images(np.full((4, 784), 128, np.uint8), model)
    tracemalloc.start()
    try:
        w = log_importance_weights(model, x, 1000, batch=256)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert w.shape == (4, 1000) and np.isfinite(w).all()
    # 256 rows × 784 pixels × 4 bytes ≈ 0.8 MB per buffer; decoding all 4000 rows at once
    # would hold ≥ 3 × 12.5 MB
    assert peak < 8 * 2**20, peak
    # the odd cut (7 rows: one image of 7 samples at a time) covers every (image, sample)
    w7 = log_importance_weights(model, x[:3], 10, batch=7)
    assert w7.shape == (3, 10) and np.isfinite(w7).all()


def test_iwae_refuses_an_autoencoder():
    model = VAE(input_dim=10, hidden=(4,), latent=2, mode="ae", dtype="float64")
    x = model.backend.asarray(np.full((3, 10), 0.5))
    with pytest.raises(InputError, match="IWAE needs a VAE"):
        iwae_log_px(model, x)
    with pytest.raises(InputError, match="ks"):
        iwae_log_px(VAE(input_dim=10, hidden=(4,), latent=2, dtype="float64"), x, ks=(0, 10))


def test_row_helpers_sum_to_the_batch_losses():
    m = _host_normal(8, (5, 7))
    x = Stream(8, 9).uniform((5, 7), "float64")
    np.testing.assert_allclose(bernoulli_nll_rows(m, x).sum(), bernoulli_nll(m, x), rtol=1e-13)
    for ls in (-0.3, np.array([0.2]), 0.1 * _host_normal(9, (7,))):
        np.testing.assert_allclose(gaussian_nll_rows(m, x, ls).sum(), gaussian_nll(m, x, ls),
                                   rtol=1e-13)
    # log N(z; μ, e^lv) = log N(ε; 0, I) − ½ Σ lv  at z = μ + e^{½lv} ε; and one hand value
    mu, lv, eps = _host_normal(10, (4, 3)), _host_normal(11, (4, 3)), _host_normal(12, (4, 3))
    z = mu + np.exp(0.5 * lv) * eps
    np.testing.assert_allclose(log_normal_rows(z, mu, lv),
                               log_standard_normal_rows(eps) - 0.5 * lv.sum(axis=1), rtol=1e-12)
    np.testing.assert_allclose(log_standard_normal_rows(np.array([[1.0, 2.0]])),
                               [-2.5 - math.log(2 * math.pi)], rtol=1e-15)


# -- active units ---------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["vae", "ae"])
def test_active_units_finds_the_units_the_encoder_ignores(backend, mode):
    model = VAE(input_dim=20, hidden=(16,), latent=5, mode=mode, dtype="float64", seed=4,
                backend=backend)
    W = model.params["enc.head.W"]
    W[:, [0, 2, 4]] *= 5.0
    W[:, [1, 3]] = 0.0                         # μ_1, μ_3 = their biases, whatever x is
    x = backend.asarray(Stream(6, 0).uniform((300, 20), "float64"))
    count, var = active_units(model, x)
    assert count == 3
    assert var[1] < 1e-20 and var[3] < 1e-20           # zero up to rounding of the mean
    assert (var[[0, 2, 4]] > 0.01).all()
    mu = backend.to_host(model.encode(x)[0])
    np.testing.assert_allclose(var, mu.var(axis=0), rtol=1e-12, atol=1e-25)
    # the threshold is what decides: above every variance, nothing is active
    assert active_units(model, x, threshold=float(var.max()) * 1.01)[0] == 0


# -- linear probe ---------------------------------------------------------------------------------
def test_linear_probe_hand_example():
    codes = np.array([[-1.0], [-0.8], [0.9], [1.1]])
    y = np.array([0, 0, 1, 1], np.uint8)
    assert linear_probe(codes, y, np.array([[-2.0], [0.5]]), np.array([0, 1])) == 1.0
    assert linear_probe(codes, y, np.array([[-2.0], [0.5]]), np.array([1, 0])) == 0.0


def test_linear_probe_separable_and_random_labels():
    C, n = 10, 3000
    y = (np.arange(2 * n) % C).astype(np.uint8)
    centers = 4.0 * _host_normal(20, (C, 6))
    codes = centers[y] + 0.3 * _host_normal(21, (2 * n, 6))
    assert linear_probe(codes[:n], y[:n], codes[n:], y[n:]) >= 0.99
    # labels independent of the codes: chance (0.1 ± 0.005 sd over 3000 test codes)
    noise = _host_normal(22, (2 * n, 6))
    y_rand = (Stream(23, 0).uint32(2 * n) % C).astype(np.uint8)
    acc = linear_probe(noise[:n], y_rand[:n], noise[n:], y_rand[n:])
    assert 0.08 < acc < 0.125, acc
    with pytest.raises(InputError, match="same L"):
        linear_probe(codes[:n], y[:n], codes[n:, :3], y[n:])


# -- whole runs -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def embedded():
    from scratchvae.data import load_dataset

    return load_dataset("embedded")


def _slice(ds, n):
    from scratchvae.data import Dataset

    return Dataset(ds.images[:n], ds.labels[:n], ds.name)


@pytest.fixture(scope="module")
def small_run(tmp_path_factory, embedded):
    train, test = _slice(embedded[0], 300), _slice(embedded[1], 100)
    model = VAE(hidden=(16,), latent=4, seed=1)
    cfg = TrainConfig(epochs=1, batch_size=50, lr=3e-3, binarize="static")
    run_dir = tmp_path_factory.mktemp("run")
    write_config(run_dir, model, cfg)
    fit(model, train.images, test.images, config=cfg, run_dir=run_dir)
    return load_run(run_dir), train, test


def test_evaluate_run_binarizes_like_fit_and_reports(small_run):
    run, train, test = small_run
    res = evaluate_run(run, train, test, ks=(1, 10), limit=60)
    assert res["n_test"] == 60 and res["epoch"] == 1
    assert set(res) >= {"test_elbo", "log_px", "active_units", "probe_accuracy", "n_test", "epoch"}
    assert set(res["log_px"]) == {1, 10}
    lp = res["log_px"]
    assert lp[10]["gain"] > 0 and lp[10]["gain"] > 3 * lp[10]["gain_se"]
    assert lp[10]["mean"] > lp[1]["mean"]
    # K = 1 is the ELBO: the single-z test −ELBO agrees within noise (a few nats on 60 images)
    assert abs(lp[1]["mean"] + res["test_elbo"]["loss"]) < 3.0
    assert 0 <= res["active_units"]["count"] <= res["active_units"]["of"] == 4
    assert 0.0 <= res["probe_accuracy"] <= 1.0
    # the test images are fit's static binarisation: the first rows of the whole split's draw
    model = run.model
    full = binarize_static(prepare_images(test.images, model), model, STATIC_TEST_STREAM)
    part = prepare_split(test.images[:60], model, run.train_config.binarize, "test")
    np.testing.assert_array_equal(part, full[:60])
    assert set(np.unique(part)) == {0.0, 1.0}
    text = format_report(res)
    assert "active units" in text and "linear probe" in text
    assert text.count("\n") >= 7 and f"{lp[10]['mean']:11.3f}" in text


def test_evaluate_run_on_an_autoencoder_skips_iwae(tmp_path, embedded):
    train, test = _slice(embedded[0], 200), _slice(embedded[1], 50)
    model = VAE(hidden=(8,), latent=3, mode="ae", seed=2)
    cfg = TrainConfig(epochs=1, batch_size=50)
    write_config(tmp_path, model, cfg)
    fit(model, train.images, None, config=cfg, run_dir=tmp_path)
    res = evaluate_run(load_run(tmp_path), train, test, ks=(1, 10))
    assert res["log_px"] is None and "IWAE needs a VAE" in res["log_px_note"]
    assert res["test_elbo"]["kl"] == 0.0
    assert "n/a" in format_report(res)


# -- the comparison ------------------------------------------------------------------------------
def _fake_plots(monkeypatch):
    calls = []

    def comparison_figure(results, path):
        calls.append((results, path))
        return path

    def posterior_figure(models, test, path):
        calls.append(({k: m.mode for k, m in models.items()}, path))
        return path

    try:
        import scratchvae.plots as plots

        monkeypatch.setattr(plots, "comparison_figure", comparison_figure)
        monkeypatch.setattr(plots, "posterior_figure", posterior_figure)
    except ImportError:
        monkeypatch.setitem(sys.modules, "scratchvae.plots", types.SimpleNamespace(
            comparison_figure=comparison_figure, posterior_figure=posterior_figure))
    return calls


def test_compare_models_structure_and_probes(monkeypatch, tmp_path, embedded):
    calls = _fake_plots(monkeypatch)
    train, test = _slice(embedded[0], 500), _slice(embedded[1], 200)
    events = []
    out = tmp_path / "compare.png"
    res = compare_models(train, test, epochs=3, batch_size=50, hidden=(32,), lr=3e-3, seed=1,
                         backend="numpy", out=out, callback=lambda e, i: events.append((e, i)))
    assert res["figure"] == str(out)
    assert set(res["probe_accuracy"]) == {"AE", "KL-only", "VAE"}
    # chance is 0.1 (± 0.021 sd on 200 test images); a least-squares probe on 2-D codes is
    # weak even when trained (it reads 10 classes off 3 numbers per class), so the bar is low
    assert res["probe_accuracy"]["AE"] > 0.18 and res["probe_accuracy"]["VAE"] > 0.18, res
    assert {i["model"] for e, i in events if e == "epoch"} == {"AE", "KL-only", "VAE"}
    (results, path), (modes, posteriors) = calls
    assert path == out and posteriors == tmp_path / "compare-posteriors.png" == Path(res["posterior_figure"])
    assert modes == {"AE": "ae", "KL-only": "kl-only", "VAE": "vae"}
    for name, r in results.items():
        assert r["codes"].shape == (200, 2) and isinstance(r["codes"], np.ndarray)
        np.testing.assert_array_equal(r["labels"], test.labels)
        assert r["decodes"].shape == (100, 784)
        assert r["decodes"].min() >= 0.0 and r["decodes"].max() <= 1.0
        assert r["probe_accuracy"] == res["probe_accuracy"][name]
    # KL-only pulls every code onto the prior's mean; the AE and the VAE spread them out
    assert results["KL-only"]["codes"].std(axis=0).max() < 0.1
    assert results["AE"]["codes"].std(axis=0).max() > 0.5
    assert results["VAE"]["codes"].std(axis=0).max() > 0.5
    # the decodes are of z drawn once from the 'eval' stream under the seed: KL-only's decoder
    # gets zero gradients, so it is still the initial decoder of a VAE with that seed
    fresh = VAE(hidden=(32,), latent=2, seed=1)
    z = fresh.rng["eval"].normal((100, 2), "float32")
    np.testing.assert_allclose(results["KL-only"]["decodes"], fresh.decode_mean(z), rtol=1e-6)
    assert not np.allclose(results["AE"]["decodes"], results["VAE"]["decodes"], atol=1e-3)


def test_compare_models_draws_a_real_figure(tmp_path, embedded):
    plots = pytest.importorskip("scratchvae.plots")
    if not hasattr(plots, "comparison_figure"):
        pytest.skip("scratchvae.plots has no comparison_figure yet")
    train, test = _slice(embedded[0], 200), _slice(embedded[1], 100)
    out = tmp_path / "compare.png"
    res = compare_models(train, test, epochs=1, batch_size=50, hidden=(16,), lr=3e-3, seed=0,
                         backend="numpy", out=out)
    assert out.exists() and out.stat().st_size > 0 and res["figure"] == str(out)
    assert (tmp_path / "compare-posteriors.png").stat().st_size > 0


def test_softmax_probe_does_not_mask_classes():
    """Three classes in a row along one axis: least squares onto one-hot labels never predicts
    the middle class (masking); the softmax probe separates all three."""
    r = np.random.default_rng(0)
    y = np.repeat([0, 1, 2], 200)
    codes = (y * 3.0 + r.normal(scale=0.3, size=y.size))[:, None]
    yt = np.repeat([0, 1, 2], 50)
    ct = (yt * 3.0 + r.normal(scale=0.3, size=yt.size))[:, None]
    assert linear_probe(codes, y, ct, yt, method="lstsq") < 0.75
    assert linear_probe(codes, y, ct, yt) > 0.99
