"""The ``scratchvae`` command end to end on the embedded data with tiny models (hidden 32).

Everything runs in a temporary folder; conftest.py sets MPLBACKEND=Agg, a temporary
MPLCONFIGDIR and SCRATCHVAE_OFFLINE.
"""

import argparse
import io
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from scratchvae import VAE, TrainConfig, __version__, cli, fit, load_run
from scratchvae.checkpoint import latest_checkpoint, load_checkpoint
from scratchvae.cli import build_parser, main
from scratchvae.errors import InputError

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


# ------------------------------------------------------------------------ help
def test_every_verb_has_a_one_line_description(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "``" not in out and "SCRATCHVAE_OFFLINE" in out and "SCRATCHVAE_CACHE_DIR" in out
    verbs = re.findall(r"^    (\w+) +(\S.*)$", out, flags=re.M)
    assert [v for v, _ in verbs] == ["train", "evaluate", "sample", "plot", "encode", "decode", "compare"]
    assert len({text for _, text in verbs}) == 7


def test_every_flag_has_help_showing_its_default():
    parser = build_parser()
    (verbs,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    for verb, sub in verbs.choices.items():
        text = " ".join(sub.format_help().split())
        for action in sub._actions:
            if action.dest == "help":
                continue
            assert action.help, f"{verb} {action.option_strings or action.dest} has no help"
            if action.option_strings and action.default is not None and action.default is not False:
                shown = ",".join(map(str, action.default)) if isinstance(action.default, tuple) else action.default
                assert f"(default: {shown})" in text, (verb, action.dest)
    assert "(default: 400)" in " ".join(verbs.choices["train"].format_help().split())


# ------------------------------------------------------------------------ progress
class Tty(io.StringIO):
    def isatty(self):
        return True


def test_progress_bar_from_step_0_with_rate_and_eta_cleared_before_each_line(monkeypatch):
    """On a terminal: one bar per epoch from its first step, with rate and ETA, cleared
    before the epoch's line; fit's callback at batch 0 comes before any step."""
    import tqdm

    class EveryUpdate(tqdm.tqdm):   # draw every update the loop reports, however fast they come
        def __init__(self, *args, **kwargs):   # (not TQDM_* variables: tqdm reads them once, at import)
            super().__init__(*args, mininterval=0, miniters=1, **kwargs)

    monkeypatch.setattr(tqdm, "tqdm", EveryUpdate)
    screen = Tty()
    m = VAE(input_dim=10, hidden=(4,), latent=2, seed=1)
    x = np.random.default_rng(0).random((400, 10)).astype(np.float32)
    with cli._Progress(quiet=False, err=screen, out=screen) as progress:
        fit(m, x, x[:50], config=TrainConfig(epochs=2, batch_size=10), callback=progress, report_every=10)
    frames = screen.getvalue().split("\r")
    for epoch in (1, 2):
        bar = [f for f in frames if f.startswith(f"epoch {epoch}/2:")]
        assert [re.search(r"(\d+)/40", f).group(1) for f in bar] == ["0", "10", "20", "30", "40"]
        assert re.search(r"<\d\d:\d\d, +[\d.]+batch/s\]", bar[2]), bar[2]    # ETA and rate
        line = next(i for i, f in enumerate(frames) if f.startswith(f"epoch {epoch}/2  train"))
        assert frames[line - 1].strip() == "" and frames[line - 2] == bar[-1]   # the bar cleared first
    assert not screen.getvalue().rstrip("\n").endswith("/s]")


def test_progress_without_a_terminal_is_one_labelled_line_per_epoch():
    err, out = io.StringIO(), io.StringIO()
    m = VAE(input_dim=10, hidden=(4,), latent=2, seed=1)
    x = np.random.default_rng(0).random((100, 10)).astype(np.float32)
    with cli._Progress(quiet=False, err=err, out=out) as progress:
        fit(m, x, x[:20], config=TrainConfig(epochs=2, batch_size=10), callback=progress)
    number = r" +-?\d+\.\d{3}"
    lines = out.getvalue().splitlines()
    assert err.getvalue() == "" and len(lines) == 2
    for i, line in enumerate(lines, 1):
        assert re.fullmatch(rf"epoch {i}/2  train −ELBO{number} = recon{number} \+ KL{number}"
                            rf"  test −ELBO{number} = recon{number} \+ KL{number} +\d+\.\d s", line), line


def test_a_message_clears_the_bar_and_an_error_leaves_none(tmp_path):
    screen = Tty()
    with pytest.raises(RuntimeError):
        with cli._Progress(quiet=False, err=screen) as p:
            p("batch", {"epoch": 1, "epochs": 2, "batch": 0, "batches": 10, "step": 0})
            assert "0/10" in screen.getvalue()
            raise RuntimeError
    assert p.bar is None and screen.getvalue().split("\r")[-1].strip() == ""
    p("batch", {"epoch": 1, "epochs": 2, "batch": 3, "batches": 10, "step": 3})
    p.say("scratchvae: interrupted", err=True)
    assert screen.getvalue().split("\r")[-1].lstrip(" ") == "scratchvae: interrupted\n"


def test_evaluate_shows_importance_sampling_progress(trained, monkeypatch, capsys):
    screen = Tty()
    monkeypatch.setattr(sys, "stderr", screen)
    assert main(["evaluate", str(trained), "--limit", "30", "--ks", "1,10"]) == 0
    assert re.search(r"log p\(x\): +0%.* 0/30 ", screen.getvalue())
    assert "test −ELBO" in capsys.readouterr().out


# ------------------------------------------------------------------------ resume
def test_resume_takes_equal_values_and_records_itself(run_copy, capsys):
    cfg = json.loads((run_copy / "config.json").read_text())
    assert main(["train", "--resume", str(run_copy), "--epochs", "2", "--hidden", "32", "--latent", "2",
                 "--lr", "1e-3", "--sigma", "fixed:1", "--backend", "numpy", "--out", str(run_copy) + "/",
                 "--keep", "all", "--quiet"]) == 0
    (note,) = json.loads((run_copy / "config.json").read_text())["resumes"]
    assert note["from"] == "checkpoints/epoch-0001.npz" and note["epochs"] == 2 and note["keep"] == "all"
    assert note["command"].startswith("scratchvae train --resume") and cfg["train"]["epochs"] == 1
    assert note["provenance"]["backend"] == "numpy" and "fast_path" in note["provenance"]
    assert json.loads((run_copy / "config.json").read_text())["train"]["epochs"] == 2
    assert "resuming" in capsys.readouterr().out and [r["epoch"] for r in rows(run_copy)] == [1, 2]


def test_resume_refuses_every_differing_flag_by_name(run_copy, capsys):
    before = {p: p.read_bytes() for p in run_copy.rglob("*") if p.is_file()}
    assert main(["train", "--resume", str(run_copy), "--lr", "0.01", "--latent", "3", "--dataset", "mnist",
                 "--batch-size", "128", "--out", "elsewhere"]) == 2
    err = capsys.readouterr().err
    for words in ["--lr 0.01 (the run has 0.001)", "--latent 3 (the run has 2)",
                  "--dataset mnist (the run has embedded)", "--out elsewhere (the run is in"]:
        assert words in err, err
    assert "--batch-size" not in err and {p: p.read_bytes() for p in run_copy.rglob("*") if p.is_file()} == before


def test_an_interrupted_run_says_the_command_that_finishes_it(tmp_path, monkeypatch, capsys):
    """SIGINT inside epoch 2 of 3: the message's command alone finishes the run; the mid-epoch
    checkpoint goes once epoch 2's checkpoint exists; the result equals an uninterrupted run."""
    from scratchvae import faults

    monkeypatch.setattr(faults, "mid_epoch_step", lambda step: step == 70 and os.kill(os.getpid(), signal.SIGINT))
    run = tmp_path / "RUN"
    argv = ["train", "--epochs", "3", "--hidden", "8", "--latent", "2", "--batch-size", "100", "--out", str(run)]
    assert main(argv) == 130
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["epoch-0001.npz", "epoch-0002-batch-000020.npz"]
    command = re.search(r"^resume with: (.*)$", capsys.readouterr().err, flags=re.M).group(1)
    assert command == f"scratchvae train --resume {run}"
    assert main(shlex.split(command)[1:]) == 0
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [f"epoch-000{e}.npz" for e in (1, 2, 3)]
    monkeypatch.undo()
    assert main([*argv[:-1], str(tmp_path / "STRAIGHT")]) == 0
    (a, _), (b, _) = newest(run), newest(tmp_path / "STRAIGHT")
    assert all(np.array_equal(a[k], b[k]) for k in b if k.startswith("param/"))


def test_the_readers_take_the_newest_finished_epoch_and_a_mid_epoch_checkpoint_only_when_named(tmp_path, monkeypatch,
                                                                                                capsys):
    """After a SIGINT inside epoch 2, evaluate (and encode) score epoch 1's checkpoint, as their
    help says; the mid-epoch checkpoint is scored when named, labelled 'epoch 2, batch 20'."""
    from scratchvae import faults

    monkeypatch.setattr(faults, "mid_epoch_step", lambda step: step == 70 and os.kill(os.getpid(), signal.SIGINT))
    run = tmp_path / "RUN"
    assert main(["train", "--epochs", "3", *TINY, "--batch-size", "100", "--out", str(run)]) == 130
    capsys.readouterr()
    quick = ["--limit", "20", "--ks", "1", "--quiet"]
    assert main(["evaluate", str(run), *quick, "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["epoch"] == 1 and "batch" not in res and res["checkpoint"] == "epoch-0001.npz"
    assert main(["evaluate", str(run), *quick]) == 0
    assert capsys.readouterr().out.startswith("epoch 1 · vae")
    for named in ("epoch-0002-batch-000020.npz", str(run / "checkpoints" / "epoch-0002-batch-000020.npz")):
        assert main(["evaluate", str(run), *quick, "--json", "--checkpoint", named]) == 0
        res = json.loads(capsys.readouterr().out)
        assert (res["epoch"], res["batch"], res["checkpoint"]) == (2, 20, "epoch-0002-batch-000020.npz")
    assert main(["evaluate", str(run), *quick, "--checkpoint", "epoch-0002-batch-000020.npz"]) == 0
    assert capsys.readouterr().out.startswith("epoch 2, batch 20 · vae")
    assert main(["encode", str(run), "--limit", "5", "--out", str(tmp_path / "c.npz")]) == 0
    assert load_checkpoint(tmp_path / "c.npz")[1]["epoch"] == 1
    assert main(["evaluate", str(run), "--epoch", "1", "--checkpoint", "epoch-0001.npz"]) == 2
    assert "--checkpoint names a checkpoint itself; --epoch 1 does not apply with it" in capsys.readouterr().err


def test_a_run_without_a_finished_epoch_is_read_only_when_its_checkpoint_is_named(tmp_path, monkeypatch, capsys):
    from scratchvae import faults

    monkeypatch.setattr(faults, "mid_epoch_step", lambda step: step == 20 and os.kill(os.getpid(), signal.SIGINT))
    run = tmp_path / "RUN"
    assert main(["train", "--epochs", "2", *TINY, "--batch-size", "100", "--out", str(run)]) == 130
    capsys.readouterr()
    assert main(["sample", str(run)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"scratchvae: error: no end-of-epoch checkpoint in {run / 'checkpoints'} yet; the newest is "
        "epoch-0001-batch-000020.npz, inside epoch 1 (name it with --checkpoint to use it)")
    assert main(["sample", str(run), "--checkpoint", "epoch-0001-batch-000020.npz", "--n", "4"]) == 0


# ------------------------------------------------------------------------ --overwrite
def test_overwrite_replaces_the_run_only_once_the_new_one_completes(run_copy, monkeypatch, capsys):
    from scratchvae import faults

    old = {p.relative_to(run_copy): p.read_bytes() for p in run_copy.rglob("*") if p.is_file()}
    monkeypatch.setattr(faults, "mid_epoch_step", lambda step: step == 60 and os.kill(os.getpid(), signal.SIGINT))
    argv = ["train", *TINY, "--batch-size", "100", "--epochs", "2", "--seed", "9", "--out", str(run_copy), "--overwrite"]
    assert main(argv) == 130
    err = capsys.readouterr().err
    new = run_copy.with_name("RUN.new")
    assert f"the run in {run_copy} is untouched" in err and f"resume with: scratchvae train --resume {new}\n" in err
    assert {p.relative_to(run_copy): p.read_bytes() for p in run_copy.rglob("*") if p.is_file()} == old
    monkeypatch.undo()
    assert main(["train", "--resume", str(new), "--quiet"]) == 0
    assert f"replaced the old one in {run_copy}" in capsys.readouterr().out
    assert sorted(p.name for p in run_copy.parent.iterdir()) == ["RUN"]
    cfg = json.loads((run_copy / "config.json").read_text())
    assert cfg["model"]["seed"] == 9 and "replaces" not in cfg and [r["epoch"] for r in rows(run_copy)] == [1, 2]


def test_a_completed_overwrite_replaces_at_once(run_copy, capsys):
    assert main(["train", *TINY, "--epochs", "1", "--seed", "4", "--out", str(run_copy), "--overwrite"]) == 0
    assert sorted(p.name for p in run_copy.parent.iterdir()) == ["RUN"]
    assert json.loads((run_copy / "config.json").read_text())["model"]["seed"] == 4
    assert f"-> {run_copy}.new, to replace {run_copy} once complete" in capsys.readouterr().out


# ------------------------------------------------------------------------ outputs
@pytest.mark.parametrize("name, magic", [("x.pdf", b"%PDF"), ("x.svg", b"<?xml"), ("x.jpg", b"\xff\xd8\xff"),
                                         ("x.PNG", b"\x89PNG")])
def test_sample_writes_the_format_its_file_name_asks_for(trained, tmp_path, name, magic):
    out = tmp_path / name
    assert main(["sample", str(trained), "--out", str(out), "--n", "4"]) == 0
    assert out.read_bytes().startswith(magic)


def test_plot_format(trained, tmp_path):
    assert main(["plot", str(trained), "--out", str(tmp_path), "--format", "svg", "--n", "4"]) == 0
    files = sorted(p.name for p in tmp_path.iterdir())
    assert len(files) == 9 and all(f.endswith(".svg") for f in files)      # a 2-D latent: posteriors too
    assert all((tmp_path / f).read_bytes().startswith(b"<?xml") for f in files)


def test_compare_writes_a_run_like_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["compare", "--epochs", "2", "--hidden", "8", "--batch-size", "100", "--quiet"]) == 0
    (out,) = (tmp_path / "runs").iterdir()
    assert out.name.startswith("compare-") and str(out.relative_to(tmp_path) / "compare.png") in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["AE", "KL-only", "VAE", "compare-posteriors.png", "compare.json",
                                                      "compare.png"]
    summary = json.loads((out / "compare.json").read_text())
    assert summary["runs"] == ["AE", "KL-only", "VAE"] and summary["figure"] == "compare.png"
    assert summary["command"].startswith("scratchvae compare")
    for name in summary["runs"]:
        assert [p.name for p in (out / name / "checkpoints").iterdir()] == ["epoch-0002.npz"]
        assert [r["epoch"] for r in rows(out / name)] == [1, 2] and all("test_loss" in r for r in rows(out / name))
        assert load_run(out / name).model.mode == {"AE": "ae", "KL-only": "kl-only", "VAE": "vae"}[name]


def test_compare_overwrite_replaces_a_comparison_once_the_new_one_completes(tmp_path, monkeypatch, capsys):
    out = tmp_path / "cmp"
    flags = ["compare", "--hidden", "8", "--batch-size", "100", "--quiet", "--out", str(out)]
    assert main([*flags, "--epochs", "1"]) == 0
    assert json.loads((out / "compare.json").read_text())["figures"] == ["compare.png", "compare-posteriors.png"]
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    capsys.readouterr()
    assert main([*flags, "--epochs", "2"]) == 2
    assert "already holds a comparison: pass --overwrite to replace it" in capsys.readouterr().err
    import scratchvae.compare

    def failing(*a, **k):
        raise InputError("the figure failed")
    monkeypatch.setattr(scratchvae.compare, "compare_models", failing)      # a failed replacement: the old stays
    assert main([*flags, "--epochs", "2", "--overwrite"]) == 2
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before and len(list(tmp_path.iterdir())) == 1
    monkeypatch.undo()
    monkeypatch.chdir(tmp_path)
    assert main([*flags, "--epochs", "2", "--overwrite"]) == 0
    assert json.loads((out / "compare.json").read_text())["command"].endswith("--epochs 2 --overwrite")
    assert [r["epoch"] for r in rows(out / "VAE")] == [1, 2] and sorted(p.name for p in tmp_path.iterdir()) == ["cmp"]
