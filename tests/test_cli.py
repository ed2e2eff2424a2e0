"""The ``scratchvae`` command end to end on the embedded data with tiny models (hidden 32).

Everything runs in a temporary folder; conftest.py sets MPLBACKEND=Agg, a temporary
MPLCONFIGDIR and SCRATCHVAE_OFFLINE.
"""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from scratchvae import __version__
from scratchvae.checkpoint import latest_checkpoint, load_checkpoint
from scratchvae.cli import main

TINY = ["--hidden", "32", "--latent", "2", "--quiet"]
ROW_KEYS = {"epoch", "train_loss", "test_loss", "test_recon", "test_kl", "seconds", "eval_seconds"}
TIMING_KEYS = {"seconds", "eval_seconds"}


def rows(run):
    return [json.loads(line) for line in (Path(run) / "metrics.jsonl").read_text().splitlines() if line.strip()]


def newest(run):
    return load_checkpoint(latest_checkpoint(Path(run) / "checkpoints"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A run of one epoch, trained once for the module (tests that change it copy it first)."""
    d = tmp_path_factory.mktemp("cli")
    run = d / "RUN"
    assert main(["train", "--epochs", "1", *TINY, "--out", str(run)]) == 0
    return run


@pytest.fixture
def run_copy(trained, tmp_path):
    dst = tmp_path / "RUN"
    shutil.copytree(trained, dst)
    return dst


def test_train_writes_a_run(trained):
    cfg = json.loads((trained / "config.json").read_text())
    assert cfg["model"]["hidden"] == [32] and cfg["model"]["latent"] == 2
    assert cfg["train"]["epochs"] == 1 and cfg["train"]["dataset"] == "embedded"
    (row,) = rows(trained)
    assert ROW_KEYS <= set(row), sorted(row)
    assert row["epoch"] == 1 and np.isfinite(row["test_loss"])
    assert (trained / "checkpoints" / "epoch-0001.npz").is_file()


def test_train_refuses_an_existing_run(run_copy, capsys):
    capsys.readouterr()
    assert main(["train", "--epochs", "1", *TINY, "--out", str(run_copy)]) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("scratchvae: error:"), err
    assert "--resume" in lines[0] and "Traceback" not in err
    assert len(rows(run_copy)) == 1


def test_resume_appends_one_epoch(run_copy):
    assert main(["train", "--resume", str(run_copy), "--epochs", "2", "--quiet"]) == 0
    assert [r["epoch"] for r in rows(run_copy)] == [1, 2]
    assert (run_copy / "checkpoints" / "epoch-0002.npz").is_file()


def test_sample_and_plot(trained, tmp_path, capsys):
    import matplotlib.image as mpimg

    out = tmp_path / "x.png"
    assert main(["sample", str(trained), "--out", str(out), "--n", "16"]) == 0
    assert mpimg.imread(out).std() > 0.05
    figs = tmp_path / "figs"
    capsys.readouterr()
    assert main(["plot", str(trained), "--out", str(figs)]) == 0
    printed = capsys.readouterr().out.split()
    pngs = sorted(figs.glob("*.png"))
    assert len(pngs) == 9 and sorted(printed) == sorted(str(p) for p in pngs)   # latent 2: posteriors too
    for p in pngs:
        assert mpimg.imread(p).std() > 0.05, p


@pytest.mark.parametrize("flags", [["--hidden", "abc"], ["--latent", "0"], ["--sigma", "bogus"]])
def test_bad_flags_exit_2(tmp_path, capsys, flags):
    with pytest.raises(SystemExit) as e:
        main(["train", "--epochs", "1", "--out", str(tmp_path / "R"), *flags])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flags[0]}" in err and "Traceback" not in err
    assert not (tmp_path / "R").exists()


def test_evaluate(trained, capsys):
    pytest.importorskip("scratchvae.evaluate")
    capsys.readouterr()
    assert main(["evaluate", str(trained), "--limit", "50", "--ks", "1,10"]) == 0
    assert capsys.readouterr().out.strip()


def test_version_via_python_m():
    r = subprocess.run([sys.executable, "-m", "scratchvae", "--version"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"scratchvae {__version__}"


def test_resume_is_bit_identical(tmp_path):
    a, b = tmp_path / "A", tmp_path / "B"
    assert main(["train", "--epochs", "2", *TINY, "--seed", "5", "--out", str(a)]) == 0
    assert main(["train", "--resume", str(a), "--epochs", "3", "--quiet"]) == 0
    assert main(["train", "--epochs", "3", *TINY, "--seed", "5", "--out", str(b)]) == 0
    (arr_a, meta_a), (arr_b, meta_b) = newest(a), newest(b)
    assert meta_a["epoch"] == meta_b["epoch"] == 3
    params = sorted(k for k in arr_b if k.startswith("param/"))
    assert params and sorted(k for k in arr_a if k.startswith("param/")) == params
    for k in params:
        assert np.array_equal(arr_a[k], arr_b[k]), k
    strip = lambda rs: [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in rs]  # noqa: E731
    assert strip(rows(a)) == strip(rows(b))
    assert len(rows(a)) == 3
