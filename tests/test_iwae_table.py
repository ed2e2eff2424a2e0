"""tools/iwae_table.py: the stage ends it evaluates, its results cache, its table and plot.

K is patched down from 5000 so that a tiny run on the embedded data evaluates in moments; what
is checked is which checkpoints get evaluated on how many images, and what the table says.
"""

import argparse
import importlib.util
import json
from pathlib import Path

import pytest

from scratchvae.cli import main

TOOL = Path(__file__).resolve().parents[1] / "tools" / "iwae_table.py"


@pytest.fixture(scope="module")
def tool():
    spec = importlib.util.spec_from_file_location("iwae_table", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("iwae") / "vae-s3"
    main(["train", "--hidden", "8", "--latent", "2", "--epochs", "5", "--batch-size", "500", "--seed", "3",
          "--lr-schedule", "iwae", "--keep", "all", "--out", str(out), "--quiet"])
    return out


def test_stage_ends_are_the_last_epochs_of_each_stage_and_the_last(tool):
    assert tool.stage_ends(121) == [1, 4, 13, 40, 121]
    assert tool.stage_ends(5) == [1, 4, 5]
    assert tool.stage_ends(3280)[-3:] == [364, 1093, 3280]


def test_model_names(tool):
    assert tool.model_name({"model": {}}) == "VAE"
    full = {"posterior": "full", "latent": 50}
    assert tool.model_name({"model": {**full, "offdiag_scale": 50 ** -0.5}}) == "VAE, full covariance"
    assert tool.model_name({"model": {**full, "offdiag_scale": 1.0}}) == "VAE, full covariance, c = 1"
    assert tool.model_name({"model": {**full, "offdiag_scale": 0.1}}) == "VAE, full covariance, c = 0.1"
    assert tool.model_name({"model": {"objective": "iwae", "iw_samples": 50}}) == "IWAE k=50"
    two = {"latent": [100, 50], "hidden": [[200, 200], [100, 100]]}
    assert tool.model_name({"model": two}) == "VAE, two layers"
    assert tool.model_name({"model": {**two, "objective": "iwae", "iw_samples": 5}}) == "IWAE k=5, two layers"
    assert tool.PUBLISHED["VAE, two layers"] == 85.33 and tool.PUBLISHED["IWAE k=50, two layers"] == 82.90


def test_a_run_is_evaluated_once_and_tabled(tool, run, tmp_path, monkeypatch):
    monkeypatch.setattr(tool, "K", 3)
    args = argparse.Namespace(results=str(tmp_path / "results"), curve_limit=40, data_dir=None)
    r = tool.results_for(run, args)
    done = json.loads((tmp_path / "results" / "vae-s3.json").read_text())
    assert sorted(done) == ["1/40", "4/40", "5/40", "5/all"]
    assert done["5/all"]["n_test"] == 1000 and done["1/40"]["n_test"] == 40
    assert [e for e, _, _ in r["curve"]] == [1, 4, 5] and r["passes"] == 5 and r["seed"] == 3

    def again(*a):
        raise AssertionError("evaluated again")
    monkeypatch.setattr(tool, "evaluate", again)
    assert tool.results_for(run, argparse.Namespace(**{**vars(args), "curve_limit": 0})) == r

    row = tool.table([r]).splitlines()[2]
    assert row.startswith("| VAE | 5 | seed 3: ") and row.endswith("| 86.76 |")
    assert f"{r['final']['nll']:.2f} ± {r['final']['se']:.2f}" in row
    tool.plot([r], tmp_path / "nll.png")
    assert (tmp_path / "nll.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_run_at_an_earlier_epoch_is_a_row_of_its_own(tool, run, tmp_path, monkeypatch):
    monkeypatch.setattr(tool, "K", 3)
    args = argparse.Namespace(results=str(tmp_path), curve_limit=40, data_dir=None)
    assert tool.split_epoch(f"{run}@4") == (run, 4) and tool.split_epoch("a@b/run") == (Path("a@b/run"), None)
    early, last = tool.results_for(f"{run}@4", args), tool.results_for(run, args)
    assert early["passes"] == 4 and [e for e, _, _ in early["curve"]] == [1, 4]
    assert last["passes"] == 5 and [e for e, _, _ in last["curve"]] == [1, 4, 5]
    assert sorted(json.loads((tmp_path / "vae-s3.json").read_text())) == ["1/40", "4/40", "4/all", "5/40", "5/all"]
    assert [row.split(" | ")[1] for row in tool.table([last, early]).splitlines()[2:]] == ["4", "5"]
    tool.plot([last, early], tmp_path / "nll.png")            # one line, two filled points
    assert (tmp_path / "nll.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(SystemExit, match="iwae_table: no end-of-epoch checkpoint for epoch 7"):
        tool.main([f"{run}@7", "--results", str(tmp_path)])
    with pytest.raises(SystemExit, match="iwae_table: .*nothing-here.* is not a scratchvae run"):
        tool.main([str(tmp_path / "nothing-here"), "--results", str(tmp_path)])


def test_wildcards_are_expanded_with_an_epoch_kept(tool, tmp_path):
    for name in ("vae-s2", "vae-s1", "iwae5-s1"):
        (tmp_path / name).mkdir()
    got = tool.expand([f"{tmp_path}/vae-s?@364", f"{tmp_path}/iwae5-s1", "plain@7"])
    assert got == [f"{tmp_path}/vae-s1@364", f"{tmp_path}/vae-s2@364", f"{tmp_path}/iwae5-s1", "plain@7"]
    with pytest.raises(SystemExit, match="no run matches"):
        tool.expand([f"{tmp_path}/full-s?@121"])


def test_the_plot_draws_the_longest_run_of_each_model_and_seed(tool):
    r = {"model": "VAE", "seed": 1, "passes": 121}
    longer, other = {**r, "passes": 364}, {**r, "seed": 2}
    assert tool.longest([r, longer, other, {**r, "model": "IWAE k=5"}]) == [{**r, "model": "IWAE k=5"}, longer, other]
