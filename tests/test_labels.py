"""Every line says what it is: the epoch lines, the training header and evaluate's report are
labelled by the run's objective (asked, not named): the ELBO's equation, the importance-weighted
bound's −L_K with no equation, a plain autoencoder's reconstruction without KL, β or q."""

import io
import re

import numpy as np
import pytest

from scratchvae import VAE, TrainConfig, cli, fit
from scratchvae.cli import main
from scratchvae.errors import InputError
from scratchvae.evaluate import format_report

NUMBER = r" +-?\d+\.\d{3}"


def epoch_lines(**settings):
    """The lines the command line's renderer prints for 2 epochs of a tiny model."""
    out = io.StringIO()
    m = VAE(input_dim=10, hidden=(4,), latent=2, seed=1, **settings)
    x = np.random.default_rng(0).random((100, 10)).astype(np.float32)
    with cli.Progress(quiet=True, err=io.StringIO(), out=out) as progress:
        fit(m, x, x[:20], config=TrainConfig(epochs=2, batch_size=10), callback=progress)
    return out.getvalue().splitlines()


def test_the_elbo_writes_its_equation():
    for line in epoch_lines():
        assert re.fullmatch(rf"epoch \d/2  train −ELBO{NUMBER} = recon{NUMBER} \+ KL{NUMBER}"
                            rf"  test −ELBO{NUMBER} = recon{NUMBER} \+ KL{NUMBER} +\d+\.\d s", line), line


def test_the_bound_is_labelled_minus_l_k_with_no_equation():
    lines = epoch_lines(objective="iwae", iw_samples=3)
    for line in lines:
        assert re.fullmatch(rf"epoch \d/2  train −L_3{NUMBER} \(one z's recon{NUMBER}, KL{NUMBER}\)"
                            rf"  test −L_3{NUMBER} \(one z's recon{NUMBER}, KL{NUMBER}\) +\d+\.\d s", line), line
        assert "=" not in line and "ELBO" not in line


def test_an_autoencoder_reports_its_reconstruction_alone():
    for line in epoch_lines(mode="ae"):
        assert re.fullmatch(rf"epoch \d/2  train reconstruction{NUMBER}  test reconstruction{NUMBER} +\d+\.\d s",
                            line), line


@pytest.mark.parametrize("settings, shown, hidden", [
    ({}, ["relu", "bernoulli,", "β=1.0"], ["σ"]),
    ({"mode": "ae"}, ["mode=ae"], ["β"]),
    ({"objective": "iwae"}, ["objective=iwae", "iw_samples=5"], ["β"]),
    ({"hidden": (), "likelihood": "gaussian"}, ["hidden=(), L=20, linear,", "gaussian σ=fixed:1.0,"], ["relu"]),
    ({"likelihood": "gaussian", "sigma": "per-pixel", "activation": "tanh"}, ["tanh", "gaussian σ=per-pixel"], []),
])
def test_the_model_describes_the_settings_that_shape_it(settings, shown, hidden):
    text = repr(VAE(**settings))
    assert all(s in text for s in shown) and not any(s in text for s in hidden), text


def test_the_training_header_is_the_models_description(tmp_path, capsys):
    assert main(["train", "--epochs", "1", "--hidden", "", "--latent", "2", "--likelihood", "gaussian", "--sigma",
                 "shared", "--quiet", "--out", str(tmp_path / "run")]) == 0
    header = capsys.readouterr().out.splitlines()[0]
    assert header.startswith("training VAE(D=784, hidden=(), L=2, linear, gaussian σ=shared, mode=vae, β=1.0,"), header


def report(**over):
    """format_report of a result as evaluate_run makes it (the fields it reads)."""
    res = {"epoch": 3, "checkpoint": "epoch-0003.npz", "mode": "vae", "likelihood": "bernoulli", "binarize": "none",
           "n_test": 10, "precision": "fp32", "test_elbo": {"loss": 100.0, "recon": 90.0, "kl": 10.0},
           "loss_label": "−ELBO", "loss_adds_up": True, "loss_has_kl": True, "sampled": True,
           "log_px": {1: {"mean": -99.0, "se": 1.0, "gain": 0.0, "gain_se": 0.0}},
           "active_units": {"count": 2, "of": 2, "threshold": 0.01, "variances": [1.0, 1.0]},
           "probe_accuracy": None, "n_probe_train": 0}
    return format_report({**res, **over})


def test_evaluate_says_its_z_are_not_the_training_lines():
    lines = report().splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("test −ELBO"))
    assert "recon 90.000 + kl 10.000" in lines[at]
    assert "training's last test line drew others" in lines[at + 1] and "sampling noise" in lines[at + 1]


def test_evaluate_of_an_autoencoder_has_no_kl_beta_or_q():
    text = report(mode="ae", loss_label="reconstruction", loss_has_kl=False, sampled=False,
                  test_elbo={"loss": 90.0, "recon": 90.0, "kl": 0.0}, log_px=None,
                  log_px_note="IWAE needs a VAE: a plain autoencoder ('ae') has no q(z|x) to draw codes from")
    loss, units = (next(line for line in text.splitlines() if line.startswith(w)) for w in ("test", "active"))
    assert re.fullmatch(r"test reconstruction +90\.000 nats/image  \(−log p\(x\|z\) at z = μ\(x\), as in "
                        r"training's test line\)", loss), loss
    assert units.endswith("(Var_x z_u > 0.01)"), units
    assert not re.search(r"kl|KL|β|E_q|drawn", text), text


def test_evaluate_of_the_bound_names_its_samples():
    text = report(loss_label="−L_5", loss_adds_up=False, iw_samples=5, objective="iwae")
    (loss,) = [line for line in text.splitlines() if line.startswith("test")]
    assert "test −L_5" in loss and "its bound, 5 z per image; one z's recon 90.000, kl 10.000" in loss
    assert "=" not in loss and " + " not in loss


# -- help and messages ---------------------------------------------------------------------------
@pytest.mark.parametrize("argv, flag", [
    (["train", "--epoch", "3"], "--epoch 3"),
    (["evaluate", "RUN", "--lim", "3"], "--lim 3"),
    (["plot", "RUN", "--form", "pdf"], "--form pdf"),
    (["compare", "--epoch", "2"], "--epoch 2"),
])
def test_no_flag_is_read_from_an_abbreviation(argv, flag, capsys):
    """argparse's prefix matching is off for every verb: ``train --epoch 3`` is refused, not read
    as --epochs."""
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"scratchvae: error: unrecognized arguments: {flag}"), line


def test_every_parser_refuses_abbreviations():
    parser = cli.build_parser()
    (verbs,) = [a for a in parser._actions if a.choices and "train" in a.choices]
    assert not parser.allow_abbrev and not any(p.allow_abbrev for p in verbs.choices.values())


def test_help_states_sigmas_spellings_and_the_numba_switch(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    assert re.search(r"SCRATCHVAE_NUMBA +0: run the NumPy bodies", capsys.readouterr().out)
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--sigma V|fixed:V|shared|per-pixel" in text and "written fixed:V or as the number V alone" in text
    with pytest.raises(SystemExit):
        main(["compare", "--help"])
    assert "--overwrite replace the comparison in --out" in " ".join(capsys.readouterr().out.split())


def test_sgd_diverging_is_told_that_gradients_are_batch_sums():
    from scratchvae.data import load_dataset
    from scratchvae.errors import NonFiniteError

    train, _ = load_dataset("embedded")
    with pytest.raises(NonFiniteError, match=r"the gradients are sums over a batch's 128 images, so SGD's step is 128 "
                                             r"times a mean's: try --lr 0\.00039 \(--lr 0\.05 / 128\)"):
        fit(VAE(seed=0), train.images[:1280], config=TrainConfig(epochs=1, optimizer="sgd", lr=0.05))


def test_decodes_dtype_hint_names_z():
    with pytest.raises(InputError, match=r"z must have dtype float32 .* got float64; "
                                         r"convert with z.astype\('float32'\)$"):
        VAE(input_dim=6, hidden=(3,), latent=2).decode(np.zeros((1, 2)))


def test_pytest_reports_no_skip_reasons_by_default():
    """``pytest -q`` ends with a summary line, not a line per skipped test (the cupy tests skip
    on a machine without a GPU)."""
    from configparser import ConfigParser
    from pathlib import Path

    cfg = ConfigParser()
    cfg.read(Path(__file__).resolve().parents[1] / "setup.cfg")
    opts = cfg["tool:pytest"]["addopts"].split()
    assert all(not o.startswith("-r") or not set(o[2:]) & set("sa") for o in opts), opts
