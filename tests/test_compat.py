"""Runs written by earlier scratchvae versions still load, evaluate and resume, exactly as
those versions resumed them.

The fixtures (``tests/fixtures/run-0.1.0`` and ``run-0.2.0``, see their README) were written
by 0.1.0 and 0.2.0 and interrupted inside their second epoch. The expected numbers below are
what each version itself produced when it resumed its run to the end (its epoch-2 metrics row
and Σ|θ| per parameter; the two runs train the same model, so their parameters agree).
"""

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from scratchvae.cli import main
from scratchvae.data import load_dataset
from scratchvae.evaluate import evaluate_run
from scratchvae.runs import read_config
from scratchvae.train import load_run, resume

FIXTURES = Path(__file__).parent / "fixtures"
VERSIONS = ("0.1.0", "0.2.0")
TEST_IMAGES = {"0.1.0": 200, "0.2.0": 1000}    # the test images each run scored per epoch
EXPECTED_ROW = {
    "0.1.0": {"epoch": 2, "step": 20, "train_loss": 539.21619375, "train_recon": 538.97495625,
              "train_kl": 0.2412313690185547, "beta": 1.0, "test_loss": 532.416875,
              "test_recon": 532.20640625, "test_kl": 0.21047809600830078},
    "0.2.0": {"epoch": 2, "step": 20, "train_loss": 539.2162, "train_recon": 538.9749625,
              "train_kl": 0.24123137664794922, "beta": 1.0, "test_loss": 532.928125,
              "test_recon": 532.6904375, "test_kl": 0.23771604919433595},
}
EXPECTED_ABS_SUM = {"dec.0.W": 5.713385105133057, "dec.0.b": 2.989455223083496,
                    "dec.out.W": 1097.30224609375, "dec.out.b": 134.46714782714844,
                    "enc.0.W": 115.92137145996094, "enc.0.b": 0.1072096899151802,
                    "enc.head.W": 6.341430187225342, "enc.head.b": 0.40203577280044556}


@pytest.fixture(params=VERSIONS)
def version(request):
    return request.param


@pytest.fixture
def run_dir(tmp_path, version):
    return Path(shutil.copytree(FIXTURES / f"run-{version}", tmp_path / "run"))


@pytest.fixture(scope="module")
def embedded():
    return load_dataset("embedded")


def test_an_old_run_loads_with_its_position(run_dir, version):
    run = load_run(run_dir)
    config, model_cfg, tc = read_config(run_dir)
    assert config["provenance"]["scratchvae"] == version
    assert run.model.settings == model_cfg and run.model.config() == model_cfg.to_json() == config["model"]
    assert run.train_config == tc
    assert (run.meta["epoch"], run.meta["step"], run.meta["batch"]) == (1, 13, 3)
    assert (run.state.epoch, run.state.step, run.state.batch) == (1, 13, 3)
    assert run.state.perm.shape == (5000,) and run.state.acc.shape == (3,)
    assert [r["epoch"] for r in run.history] == [1] and run.history[0]["beta"] == pytest.approx(2 / 3)
    assert run.optimizer_state["t"] == 13


def test_an_old_run_evaluates(run_dir, embedded):
    train, test = embedded
    res = evaluate_run(load_run(run_dir, epoch=1), train, test, ks=(1, 10), limit=40, probe_limit=500)
    assert res["epoch"] == 1 and res["n_test"] == 40 and res["binarize"] == "dynamic"
    assert all(math.isfinite(v) for v in res["test_elbo"].values())
    assert res["log_px"][10]["gain"] >= 0.0          # log p(x) estimates rise with K


def test_an_old_run_resumes_as_its_version_resumed_it(run_dir, version, embedded):
    train, test = embedded
    run = load_run(run_dir)
    history = resume(run, train.images, test.images[:TEST_IMAGES[version]])
    row = {k: v for k, v in history[-1].items() if not k.endswith("seconds")}
    assert row.keys() == EXPECTED_ROW[version].keys() and row["epoch"] == 2 and row["step"] == 20
    for k, v in EXPECTED_ROW[version].items():
        assert row[k] == pytest.approx(v, rel=1e-6), k
    sums = {k: float(np.abs(v).sum()) for k, v in run.model.host_params().items()}
    assert sums == pytest.approx(EXPECTED_ABS_SUM, rel=1e-6)
    assert [r["epoch"] for r in load_run(run_dir).history] == [1, 2]


def test_an_old_run_evaluates_and_resumes_on_the_command_line(run_dir, capsys):
    """The verbs a user runs on an old run: evaluate (as JSON), then --resume to its end."""
    assert main(["evaluate", str(run_dir), "--limit", "20", "--ks", "1", "--json", "--quiet"]) == 0
    assert json.loads(capsys.readouterr().out)["n_test"] == 20
    assert main(["train", "--resume", str(run_dir), "--quiet"]) == 0
    assert "resuming" in capsys.readouterr().out
    assert [r["epoch"] for r in load_run(run_dir).history] == [1, 2]
