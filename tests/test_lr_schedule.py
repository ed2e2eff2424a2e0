"""The IWAE paper's training setup: its learning-rate schedule, Adam's ε, the output bias started
at the data's mean, and ``train --preset iwae-paper`` that sets them all."""

import json

import numpy as np
import pytest

from scratchvae import VAE, SGD, Adam, TrainConfig, fit, load_run
from scratchvae.cli import main
from scratchvae.errors import InputError
from scratchvae.likelihoods import LIKELIHOODS
from scratchvae.config import PRESETS
from scratchvae.optim import iwae_lr, iwae_stage
from scratchvae.step import Schedule
from scratchvae.train import resume

RNG = np.random.default_rng(0)
X = (RNG.random((24, 6)) < np.linspace(0.05, 0.9, 6)).astype(np.float32)   # 0/1 pixels, means 0.05 … 0.9


def test_stage_i_runs_3_to_the_i_epochs():
    ends = [(3 ** (i + 1) - 1) // 2 for i in range(8)]
    assert ends == [1, 4, 13, 40, 121, 364, 1093, 3280]
    for i, end in enumerate(ends):
        assert iwae_stage(end) == i and iwae_stage(end + 1) == i + 1
    assert [iwae_stage(e) for e in range(1, 15)] == [0, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 2, 3]


def test_the_learning_rate_falls_by_a_seventh_decade_per_stage():
    lr = iwae_lr(1e-3, steps_per_epoch=10)
    assert lr(1) == lr(10) == 1e-3                                 # epoch 1: stage 0
    assert lr(11) == lr(40) == pytest.approx(1e-3 * 10 ** (-1 / 7), rel=1e-15)
    assert lr(41) == pytest.approx(1e-3 * 10 ** (-2 / 7), rel=1e-15)
    assert lr(3280 * 10) == pytest.approx(1e-4, rel=1e-12)        # the last stage: a decade down


def test_the_schedule_gives_adam_its_step_size_at_each_steps_learning_rate():
    m = VAE(input_dim=6, hidden=(4,), latent=2)
    opt = Adam(m.theta, lr=1e-3)
    at = iwae_lr(1e-3, steps_per_epoch=2)
    rows = Schedule(opt, 1.0, lr_at=at).rows(step=1, t=1, count=4)
    b1 = opt.betas[0]
    expected = [at(s) / (1 - b1 ** s) for s in range(1, 5)]
    np.testing.assert_allclose(rows[:, 0], expected, rtol=1e-15)
    assert rows[2, 0] < rows[1, 0] * 10 ** (-1 / 7) * 1.01       # the drop at epoch 2's first step


def test_sgd_refuses_a_learning_rate_other_than_its_own():
    m = VAE(input_dim=6, hidden=(4,), latent=2)
    sgd = SGD(m.theta, lr=0.1)
    assert sgd.coefficients(3, lr=0.1) == ()
    with pytest.raises(InputError, match="fixed lr 0.1.*needs Adam"):
        sgd.coefficients(3, lr=0.05)


def _theta(lr_schedule, epochs, **kw):
    m = VAE(input_dim=6, hidden=(4,), latent=2, seed=3)
    fit(m, X, config=TrainConfig(epochs=epochs, batch_size=8, lr=1e-2, lr_schedule=lr_schedule, **kw))
    return np.array(m.theta)


def test_the_iwae_schedule_changes_training_from_the_second_epoch_on():
    assert np.array_equal(_theta("iwae", 1), _theta(None, 1))
    assert not np.array_equal(_theta("iwae", 2), _theta(None, 2))


def test_a_scheduled_run_resumed_across_a_stage_boundary_is_bit_identical(tmp_path):
    cfg = dict(batch_size=8, lr=1e-2, lr_schedule="iwae", adam_eps=1e-4, output_bias="data-mean")
    whole = VAE(input_dim=6, hidden=(4,), latent=2, seed=3)
    fit(whole, X, config=TrainConfig(epochs=5, **cfg))
    part = VAE(input_dim=6, hidden=(4,), latent=2, seed=3)
    fit(part, X, config=TrainConfig(epochs=2, **cfg), run_dir=tmp_path / "run")
    run = load_run(tmp_path / "run")
    assert run.train_config.lr_schedule == "iwae" and run.train_config.adam_eps == 1e-4
    resume(run, X, epochs=5)
    assert np.array_equal(np.array(load_run(tmp_path / "run").model.theta), np.array(whole.theta))


def test_adams_eps_is_the_configured_one():
    with_eps = _theta(None, 1, adam_eps=1.0)                       # ε 1 damps every step
    assert not np.array_equal(with_eps, _theta(None, 1))
    start = np.array(VAE(input_dim=6, hidden=(4,), latent=2, seed=3).theta)
    assert np.abs(with_eps - start).max() < np.abs(_theta(None, 1) - start).max()


@pytest.mark.parametrize("name", ["bernoulli", "gaussian"])
def test_output_for_mean_is_the_output_whose_mean_is_m(name):
    lik = LIKELIHOODS[name]()
    m = np.array([0.002, 0.1, 0.5, 0.93])
    y = lik.output_for_mean(m)
    np.testing.assert_allclose(lik.mean(y, None), m, rtol=1e-12)
    if name == "bernoulli":   # a pixel never (or always) lit gets the finite logit of 1e-3 (1 − 1e-3)
        np.testing.assert_allclose(lik.output_for_mean(np.array([0.0, 1.0])), [-6.906755, 6.906755], rtol=1e-6)


def test_the_output_bias_starts_at_the_logit_of_the_training_mean():
    m = VAE(input_dim=6, hidden=(4,), latent=2, seed=3)
    fit(m, X, config=TrainConfig(epochs=1, batch_size=8, lr=1e-9, output_bias="data-mean"))
    mean = X.mean(axis=0)
    np.testing.assert_allclose(m.params["dec.out.b"], np.log(mean / (1 - mean)), atol=1e-5)
    plain = VAE(input_dim=6, hidden=(4,), latent=2, seed=3)
    start = np.array(plain.params["dec.out.b"])
    fit(plain, X, config=TrainConfig(epochs=1, batch_size=8, lr=1e-9))
    np.testing.assert_allclose(plain.params["dec.out.b"], start, atol=1e-6)      # the initialiser's


@pytest.mark.parametrize("field, value, words", [
    ("lr_schedule", "cosine", "lr_schedule must be one of constant, iwae, got 'cosine'"),
    ("adam_eps", 0.0, "adam_eps must be a finite number > 0, got 0.0"),
    ("output_bias", "zero-ish", "output_bias must be one of zero, data-mean, got 'zero-ish'"),
])
def test_train_config_refuses_bad_settings(field, value, words):
    with pytest.raises(InputError, match=words):
        TrainConfig(**{field: value}).validate()


def test_sgd_with_adams_settings_is_refused():
    """The rule the command line gives, in Python's names (the configuration's own words)."""
    with pytest.raises(InputError, match=r"adam_eps applies to optimizer adam only, got optimizer sgd \(given: "):
        TrainConfig(optimizer="sgd", adam_eps=1e-4)
    with pytest.raises(InputError, match="lr_schedule iwae applies to optimizer adam only, got optimizer sgd"):
        TrainConfig(optimizer="sgd", lr_schedule="iwae")


def test_a_default_run_records_none_of_the_new_fields():
    assert not {"lr_schedule", "adam_eps", "output_bias"} & TrainConfig().to_json().keys()


SMALL = ["--dataset", "embedded", "--hidden", "8", "--latent", "2", "--epochs", "1", "--quiet"]


def test_the_preset_sets_the_papers_settings_and_given_flags_win(tmp_path):
    assert main(["train", "--preset", "iwae-paper", *SMALL, "--out", str(tmp_path / "r")]) == 0
    cfg = json.loads((tmp_path / "r" / "config.json").read_text())
    preset = PRESETS["iwae-paper"]
    assert cfg["model"]["hidden"] == [8] and cfg["model"]["latent"] == 2        # given
    assert cfg["model"]["activation"] == preset["activation"] == "tanh"
    train = cfg["train"]
    assert (train["epochs"], train["dataset"]) == (1, "embedded")                # given
    assert {k: train[k] for k in ("batch_size", "binarize", "lr", "adam_eps", "lr_schedule", "output_bias")} == {
        "batch_size": 20, "binarize": "dynamic", "lr": 1e-3, "adam_eps": 1e-4, "lr_schedule": "iwae",
        "output_bias": "data-mean"}
    assert "--preset iwae-paper" in cfg["command"]


@pytest.mark.parametrize("flags, words", [
    (["--preset", "iwae-paper", "--optimizer", "sgd"],
     "--adam-eps applies to --optimizer adam only, got --optimizer sgd (--preset iwae-paper sets --adam-eps)"),
    (["--optimizer", "sgd", "--adam-eps", "1e-4"], "--adam-eps applies to --optimizer adam only"),
    (["--optimizer", "sgd", "--lr-schedule", "iwae"], "--lr-schedule iwae applies to --optimizer adam only"),
    (["--adam-eps", "0"], "argument --adam-eps: expected a finite number > 0, got '0'"),
])
def test_flags_that_do_not_apply_are_refused_by_name(tmp_path, capsys, flags, words):
    try:
        code = main(["train", *SMALL, *flags, "--out", str(tmp_path / "r")])
    except SystemExit as e:
        code = e.code
    assert code == 2 and words in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_resume_refuses_the_preset_and_a_different_schedule(tmp_path, capsys):
    run = str(tmp_path / "r")
    assert main(["train", *SMALL, "--out", run]) == 0
    capsys.readouterr()
    assert main(["train", "--resume", run, "--epochs", "2", "--preset", "iwae-paper"]) == 2
    assert "--preset does not apply to --resume" in capsys.readouterr().err
    assert main(["train", "--resume", run, "--epochs", "2", "--lr-schedule", "iwae"]) == 2
    assert "--lr-schedule iwae (the run has constant)" in capsys.readouterr().err
    assert main(["train", "--resume", run, "--epochs", "2", "--lr-schedule", "constant", "--adam-eps", "1e-8",
                 "--output-bias", "zero", "--quiet"]) == 0      # what the run has, as the flags say it
