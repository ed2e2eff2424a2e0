"""Settings defined once (scratchvae.config): the configurations own their rules, the command line
derives its train flags from their fields, and a run's config.json reads back as it was written."""

import argparse
import json
from dataclasses import fields

import numpy as np
import pytest

from scratchvae import VAE
from scratchvae.cli import build_parser, main
from scratchvae.cli.parser import NOT_SETTINGS
from scratchvae.config import PRESETS, ModelConfig, SettingError, TrainConfig
from scratchvae.errors import InputError
from scratchvae.runs import load_run, read_config


def train_flags():
    parser = build_parser()
    (verbs,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return {a.dest: a for a in verbs.choices["train"]._actions if a.option_strings and a.dest != "help"}


def test_every_setting_has_a_flag_and_every_flag_is_a_setting():
    """train's flags are the configurations' fields (input_dim, the data's width, has none), plus
    the flags that are no setting, each listed with its reason in cli.parser.NOT_SETTINGS."""
    flags = train_flags()
    settings = {f.name: f for cls in (ModelConfig, TrainConfig) for f in fields(cls) if f.metadata["flag"]}
    assert set(flags) == set(settings) | set(NOT_SETTINGS), set(flags) ^ (set(settings) | set(NOT_SETTINGS))
    assert not set(settings) & set(NOT_SETTINGS) and all(NOT_SETTINGS.values())
    assert [f.name for cls in (ModelConfig, TrainConfig) for f in fields(cls) if not f.metadata["flag"]] == ["input_dim"]
    for name, f in settings.items():       # the flag's default, help and choices are the field's
        action, kind = flags[name], f.metadata["kind"]
        assert action.default == f.default and action.help == f.metadata["help"], name
        assert action.option_strings == ["--" + name.replace("_", "-")], name
        assert (action.choices is None) == (kind.choices is None) and action.shown_default == kind.show(f.default)


@pytest.mark.parametrize("settings, reason, flags", [
    (dict(mode="ae", beta=0.5), "weighs the KL term, which {mode} ae does not have", ["--mode", "ae", "--beta", "0.5"]),
    (dict(likelihood="bernoulli", sigma="shared"), "applies to {likelihood} gaussian only, got {likelihood} bernoulli",
     ["--likelihood", "bernoulli", "--sigma", "shared"]),
])
def test_a_python_setting_that_does_not_apply_is_refused_with_the_reason_the_cli_gives(
        settings, reason, flags, tmp_path, capsys):
    """VAE(mode='ae', beta=0.5) and VAE(likelihood='bernoulli', sigma='shared') were accepted in
    Python while the command line refused them: the rule now lives in the configuration, which
    words it with the fields' names, and the command line words it with the flags'."""
    field = next(k for k in settings if k not in ("mode", "likelihood"))
    with pytest.raises(SettingError) as err:
        VAE(**settings)
    assert str(err.value).startswith(field + " " + reason.format(mode="mode", likelihood="likelihood"))
    assert main(["train", *flags, "--out", str(tmp_path / "r")]) == 2
    flag = "--" + field
    assert f"{flag} {reason.format(mode='--mode', likelihood='--likelihood')}" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_a_flag_typed_at_its_default_where_it_does_not_apply_is_refused_but_the_default_is_not(tmp_path, capsys):
    assert ModelConfig(mode="ae", beta=1.0).beta == 1.0                 # the default: no effect, no refusal
    assert main(["train", "--mode", "ae", "--beta", "1", "--out", str(tmp_path / "r")]) == 2
    assert "--beta weighs the KL term, which --mode ae does not have" in capsys.readouterr().err


def test_applies_says_which_settings_take_effect():
    ae, iw = ModelConfig(mode="ae"), ModelConfig(objective="iwae")
    assert ae.applies("latent") is None and iw.applies("iw_samples") is None
    assert "mode ae" in str(ae.applies("beta")) and "objective iwae" in str(iw.applies("beta"))
    assert "optimizer adam only, got optimizer sgd" in str(TrainConfig(optimizer="sgd").applies("adam_eps"))
    assert TrainConfig().applies("kl_warmup", iw) is not None and TrainConfig().applies("kl_warmup", ae) is not None
    assert TrainConfig().applies("kl_warmup", ModelConfig(mode="kl-only")) is None
    with pytest.raises(SettingError, match="kl_warmup does not apply to objective iwae"):
        TrainConfig(kl_warmup=1.0).check_model(iw)


def test_values_are_checked_and_kept_in_one_canonical_form():
    c = ModelConfig(hidden=[400], sigma=1, likelihood="gaussian", latent=np.int64(3))
    assert (c.hidden, c.sigma, c.latent, type(c.latent)) == ((400,), "fixed:1.0", 3, int)
    assert ModelConfig(objective="iwae").iw_samples == 5 and ModelConfig(iw_samples=1).iw_samples is None
    assert ModelConfig(posterior="full", latent=4).offdiag_scale == 0.5
    for bad, words in ((dict(latent=0), "latent must be a positive integer"), (dict(beta=-1), "beta must be"),
                       (dict(activation="gelu"), "activation must be one of"), (dict(hidden="400"), "hidden must")):
        with pytest.raises(InputError, match=words):
            ModelConfig(**bad)
    with pytest.raises(InputError, match="epochs must be a positive integer, got 0"):
        TrainConfig(epochs=0)


def test_vae_takes_a_config_or_the_settings_and_keeps_it():
    cfg = ModelConfig(input_dim=12, hidden=(5,), latent=3, seed=4)
    a, b = VAE(cfg), VAE(input_dim=12, hidden=(5,), latent=3, seed=4)
    assert a.settings == b.settings == cfg and a.config() == b.config() == cfg.to_json()
    for k in a.params:
        np.testing.assert_array_equal(a.params[k], b.params[k])
    assert VAE(cfg, seed=5).settings == cfg.replace(seed=5)
    with pytest.raises(InputError, match="config must be a ModelConfig"):
        VAE({"latent": 3})


@pytest.mark.parametrize("settings", [dict(), dict(posterior="full"), dict(objective="iwae", iw_samples=3),
                                      dict(likelihood="gaussian", sigma="per-pixel", mode="kl-only", beta=2.0),
                                      dict(mode="ae", hidden=(7, 5)), dict(latent=(10, 4), hidden=((8,), (6,)))])
def test_the_json_reads_back_as_the_same_config(settings):
    cfg = ModelConfig(input_dim=12, **settings)
    doc = json.loads(json.dumps(cfg.to_json()))
    assert ModelConfig.from_json(doc) == cfg and ModelConfig.from_json(doc).to_json() == doc
    assert not {"posterior", "objective", "iw_samples", "precision", "offdiag_scale"} & (
        doc.keys() - settings.keys() - ({"offdiag_scale"} if "posterior" in settings else set()) -
        ({"iw_samples"} if "objective" in settings else set()))
    train = TrainConfig(optimizer="sgd", momentum=0.9, image_shape=(3, 4), dataset="x.npz", test_fraction=0.2)
    assert TrainConfig.from_json(json.loads(json.dumps(train.to_json()))) == train


def test_recorded_settings_read_as_they_were_meant():
    """Unknown keys are refused by name; a full posterior recorded before offdiag_scale existed is
    S = o, offdiag_scale 1 (the default 1/√L would change what its parameters mean)."""
    old_full = {k: v for k, v in ModelConfig(posterior="full").to_json().items() if k != "offdiag_scale"}
    assert ModelConfig.from_json(old_full).offdiag_scale == 1.0
    with pytest.raises(InputError, match="unknown model settings depth, wings"):
        ModelConfig.from_json({**ModelConfig().to_json(), "wings": 2, "depth": 3})
    with pytest.raises(InputError, match="unknown train settings warp"):
        TrainConfig.from_json({"warp": 9})


def test_a_run_reads_back_the_configs_it_was_trained_with(tmp_path):
    run = tmp_path / "r"
    assert main(["train", "--hidden", "6", "--latent", "2", "--epochs", "1", "--posterior", "full", "--quiet",
                 "--out", str(run)]) == 0
    config, model, train = read_config(run)
    loaded = load_run(run)
    assert loaded.model.settings == model and loaded.train_config == train
    assert model == ModelConfig(input_dim=784, hidden=(6,), latent=2, posterior="full")
    assert train == TrainConfig(epochs=1)


def test_the_preset_is_the_papers_settings():
    assert PRESETS["iwae-paper"] == dict(
        dataset="mnist", hidden=(200, 200), latent=50, activation="tanh", binarize="dynamic", batch_size=20,
        optimizer="adam", lr=1e-3, adam_eps=1e-4, lr_schedule="iwae", output_bias="data-mean", epochs=3280)
    names = {f.name for cls in (ModelConfig, TrainConfig) for f in fields(cls)}
    assert set(PRESETS["iwae-paper"]) <= names


def test_the_two_layer_preset_is_the_papers_two_layer_model():
    """iwae-paper-2: iwae-paper's schedule, optimizer and data handling, and the paper's two
    stochastic layers: q(h₁|x) 784-200-200-(2·100), q(h₂|h₁) 100-100-100-(2·50), p(h₁|h₂)
    50-100-100-(2·100), p(x|h₁) 100-200-200-784, tanh."""
    from scratchvae import VAE

    preset = PRESETS["iwae-paper-2"]
    assert {k: v for k, v in preset.items() if k not in ("hidden", "latent")} == {
        k: v for k, v in PRESETS["iwae-paper"].items() if k not in ("hidden", "latent")}
    model_fields = {f.name for f in fields(ModelConfig)}
    m = VAE(**{k: v for k, v in preset.items() if k in model_fields})
    sizes = {prefix: [m.shapes[n][0] for n in m.shapes if n.startswith(prefix + ".") and n.endswith(".W")]
             + [m.shapes[[n for n in m.shapes if n.startswith(prefix + ".") and n.endswith(".W")][-1]][1]]
             for prefix in ("enc", "enc2", "prior1", "dec")}
    assert sizes == {"enc": [784, 200, 200, 200], "enc2": [100, 100, 100, 100], "prior1": [50, 100, 100, 200],
                     "dec": [100, 200, 200, 784]}
    assert m.activation == "tanh" and m.chain.latents == (100, 50)
