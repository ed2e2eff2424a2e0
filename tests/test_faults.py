"""Interrupted and killed training runs: nothing saved is lost, and resuming is exact.

Every run here is ``python -m scratchvae train`` in a subprocess on the embedded data with
a tiny model (hidden 8, latent 2, batch 50: 100 steps an epoch, ``--keep all``) and one BLAS
thread, so a resumed run can be compared bit for bit (``np.array_equal``) with one
uninterrupted run (``straight``, 8 epochs, every end-of-epoch checkpoint kept). Kills use
``SCRATCHVAE_FAULT`` (see :mod:`scratchvae.faults`): the process sends itself SIGKILL at a
named point. Checkpoint-level crash tests are in test_checkpoint.py.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from scratchvae import checkpoint as ckpt
from scratchvae.checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint
from scratchvae.cli import main
from scratchvae.runs import load_run

REPO = Path(__file__).resolve().parents[1]
TINY = ["--hidden", "8", "--latent", "2", "--batch-size", "50", "--seed", "3", "--keep", "all", "--quiet"]
STEPS_PER_EPOCH = 100
STRAIGHT_EPOCHS = 8
TIMING_KEYS = {"seconds", "eval_seconds"}


def _env(fault=None):
    env = {k: v for k, v in os.environ.items() if k != "SCRATCHVAE_FAULT"}
    env.update(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]))
    if fault:
        env["SCRATCHVAE_FAULT"] = fault
    return env


def _cli(*args, fault=None):
    return subprocess.run([sys.executable, "-m", "scratchvae", *args], env=_env(fault),
                          capture_output=True, text=True, timeout=120)


def train(run, epochs, fault=None):
    return _cli("train", *TINY, "--epochs", str(epochs), "--out", str(run), fault=fault)


def resume(run, epochs, fault=None):
    return _cli("train", "--resume", str(run), "--epochs", str(epochs), "--quiet", fault=fault)


def state(path):
    """Parameters, optimizer state, position and random streams of a checkpoint."""
    arrays, meta = load_checkpoint(path)
    return arrays, {k: meta[k] for k in ("epoch", "step", "rng")}


def assert_identical(a, b):
    (arr_a, meta_a), (arr_b, meta_b) = state(a), state(b)
    keys = sorted(k for k in arr_b if k.startswith(("param/", "optim/")))
    assert keys and sorted(k for k in arr_a if k.startswith(("param/", "optim/"))) == keys
    for k in keys:
        assert np.array_equal(arr_a[k], arr_b[k]), f"{k} differs: {a} vs {b}"
    assert meta_a == meta_b


def rows(run):
    out = [json.loads(s) for s in (Path(run) / "metrics.jsonl").read_text().splitlines() if s.strip()]
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in out]


def assert_all_checkpoints_load(run):
    found = list_checkpoints(Path(run) / "checkpoints")
    assert found
    for p in found:
        load_checkpoint(p)
    return found


def killed(proc):
    assert proc.returncode == -signal.SIGKILL, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr


def ok(proc):
    assert proc.returncode == 0, proc.stderr


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    run = tmp_path_factory.mktemp("faults") / "STRAIGHT"
    ok(train(run, STRAIGHT_EPOCHS))
    return run


def ckpt_of(run, epoch):
    return Path(run) / "checkpoints" / f"epoch-{epoch:04d}.npz"


# ------------------------------------------------------------------------ signals
@pytest.mark.parametrize("signals, kill_after", [
    ((signal.SIGINT,), True),
    ((signal.SIGTERM,), False),
    ((signal.SIGTERM, signal.SIGINT), False),   # a second signal right behind the first
])
def test_signal_writes_mid_epoch_checkpoint_and_resume_is_bit_identical(straight, tmp_path, signals, kill_after):
    run = tmp_path / "RUN"
    proc = subprocess.Popen([sys.executable, "-m", "scratchvae", "train", *TINY, "--epochs", "1000",
                             "--out", str(run)], env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        for line in proc.stdout:
            if line.startswith("epoch"):
                break
        for s in signals:
            proc.send_signal(s)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    # 128 + the signal handled first: 130 for SIGINT, 143 for SIGTERM (Python runs pending
    # handlers in signal-number order, so of two at once SIGINT may come first)
    assert proc.returncode in {128 + s for s in signals}, err
    assert "Traceback" not in err
    assert f"resume with: scratchvae train --resume {run}\n" in err
    newest = latest_checkpoint(run / "checkpoints")
    assert f"checkpoint {newest}" in err
    m = re.fullmatch(r"epoch-(\d{4})-batch-(\d{6})\.npz", newest.name)
    assert m, newest.name
    arrays, meta = load_checkpoint(newest)
    epoch, batch = int(m.group(1)), int(m.group(2))
    assert meta["epoch"] == epoch - 1 and meta["batch"] == batch and 0 < batch < STEPS_PER_EPOCH
    assert meta["step"] == (epoch - 1) * STEPS_PER_EPOCH + batch
    assert np.array_equal(np.sort(arrays["perm"]), np.arange(5000)) and arrays["acc"].shape == (3,)
    assert_all_checkpoints_load(run)
    assert epoch <= STRAIGHT_EPOCHS, "the signal came later than this test allows for"

    if kill_after:   # killed again, 17 steps after resuming from the mid-epoch checkpoint
        killed(resume(run, epoch, fault=f"mid-epoch:{meta['step'] + 17}"))
        assert_all_checkpoints_load(run)
    ok(resume(run, epoch))
    assert_identical(ckpt_of(run, epoch), ckpt_of(straight, epoch))
    assert rows(run) == rows(straight)[:epoch]


def test_second_signal_during_the_write_is_ignored(tmp_path, monkeypatch, capsys):
    """In process, to hit the write exactly: SIGINT after step 150, then SIGINT and SIGTERM
    while the mid-epoch checkpoint's temporary file is open. The write completes; exit 130."""
    from scratchvae import faults

    def first_signal(step):
        if step == 150:
            os.kill(os.getpid(), signal.SIGINT)
    real, during = ckpt._write_npz, []

    def write(f, arrays, meta_text):
        if '"batch": 0' not in meta_text:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGTERM)
            during.append(meta_text)
        return real(f, arrays, meta_text)
    monkeypatch.setattr(faults, "mid_epoch_step", first_signal)
    monkeypatch.setattr(ckpt, "_write_npz", write)
    run = tmp_path / "RUN"
    assert main(["train", *TINY, "--epochs", "5", "--out", str(run)]) == 130
    assert len(during) == 1
    names = [p.name for p in assert_all_checkpoints_load(run)]
    assert names == ["epoch-0001.npz", "epoch-0002-batch-000050.npz"]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == names   # no temp file left
    assert "resume with:" in capsys.readouterr().err


# ------------------------------------------------------------------------ SIGKILL
@pytest.fixture(scope="module")
def one_epoch(tmp_path_factory, straight):
    run = tmp_path_factory.mktemp("faults") / "ONE"
    ok(train(run, 1))
    assert_identical(ckpt_of(run, 1), ckpt_of(straight, 1))
    return run


@pytest.mark.parametrize("fault", ["after-temp-write", "before-rename"])
def test_sigkill_while_writing_keeps_the_previous_checkpoint(straight, one_epoch, tmp_path, fault):
    run = tmp_path / "RUN"
    shutil.copytree(one_epoch, run)
    before = ckpt_of(run, 1).read_bytes()
    killed(resume(run, 3, fault=fault))
    assert [p.name for p in assert_all_checkpoints_load(run)] == ["epoch-0001.npz"]
    assert ckpt_of(run, 1).read_bytes() == before
    leftovers = [p.name for p in (run / "checkpoints").iterdir() if p.name.startswith(".")]
    assert len(leftovers) == 1 and leftovers[0].startswith(".epoch-0002.npz.tmp-")
    ok(resume(run, 3))
    assert_identical(ckpt_of(run, 3), ckpt_of(straight, 3))
    assert rows(run) == rows(straight)[:3]
    assert not [p for p in run.rglob(".*")], "the killed writer's temporary file was removed"


def test_killed_before_the_first_checkpoint_leaves_no_folder(tmp_path):
    run = tmp_path / "runs" / "RUN"
    killed(train(run, 3, fault="mid-epoch:40"))
    assert list(tmp_path.iterdir()) == []
    r = resume(run, 3)
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        f"scratchvae: error: {run} is not a scratchvae run: there is no such folder"]


def test_killed_while_writing_the_first_checkpoint_leaves_no_run(straight, tmp_path):
    """The folder appears with its first checkpoint, in one rename: a kill before that leaves
    only the staged folder, hidden, which the next run written beside it removes, whatever its
    name."""
    run = tmp_path / "RUN"
    killed(train(run, 1, fault="before-rename"))
    staged = [p.name for p in tmp_path.iterdir()]
    assert not run.exists() and len(staged) == 1 and staged[0].startswith(".RUN.tmp-")
    ok(train(tmp_path / "OTHER", 1))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["OTHER"]
    ok(train(run, 1))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["OTHER", "RUN"]
    assert_identical(ckpt_of(run, 1), ckpt_of(straight, 1))


def test_killed_between_checkpoint_and_metrics_row_loses_no_row(straight, one_epoch, tmp_path):
    """SIGKILL after epoch 2's checkpoint, before its metrics row: load_run rebuilds the row from
    the checkpoint (without writing), resume writes it back, and the run ends as the straight one."""
    run = tmp_path / "RUN"
    shutil.copytree(one_epoch, run)
    killed(resume(run, 3, fault="before-metrics:2"))
    assert ckpt_of(run, 2).exists() and [r["epoch"] for r in rows(run)] == [1]
    from scratchvae.runs import load_run

    history = [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in load_run(run).history]
    assert history == rows(straight)[:2] and [r["epoch"] for r in rows(run)] == [1]
    ok(resume(run, 3))
    assert rows(run) == rows(straight)[:3]
    assert_identical(ckpt_of(run, 3), ckpt_of(straight, 3))


KILL_SEED = 20240613


def test_seeded_random_kills_then_resume_is_bit_identical(straight, tmp_path):
    """Four SIGKILLs at steps drawn from a seeded RNG (in epochs 2–6), each followed by a
    resume; the run that finally completes equals the straight one bit for bit."""
    kills = sorted(int(k) for k in np.random.default_rng(KILL_SEED).choice(
        np.arange(STEPS_PER_EPOCH + 1, 6 * STEPS_PER_EPOCH), size=4, replace=False))
    run = tmp_path / "RUN"
    killed(train(run, 6, fault=f"mid-epoch:{kills[0]}"))
    for k in kills[1:]:
        before = load_checkpoint(assert_all_checkpoints_load(run)[-1])[1]["step"]
        killed(resume(run, 6, fault=f"mid-epoch:{k}"))
        assert load_checkpoint(assert_all_checkpoints_load(run)[-1])[1]["step"] >= before
    ok(resume(run, 6))
    assert_identical(ckpt_of(run, 6), ckpt_of(straight, 6))
    assert rows(run) == rows(straight)[:6]


def test_killed_before_an_overwrite_swaps_keeps_both_runs(one_epoch, tmp_path):
    """--overwrite killed once the new run is complete but before it replaced the old one: the
    old run is intact; resuming the new one only completes the swap."""
    run = tmp_path / "RUN"
    shutil.copytree(one_epoch, run)
    old = {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file()}
    killed(_cli("train", *TINY, "--epochs", "1", "--seed", "8", "--out", str(run), "--overwrite", fault="before-swap"))
    assert (run / ".lock").read_text().strip().isdigit()     # the killed writer's lock file: it blocks nothing
    assert {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != ".lock"} == old
    new = tmp_path / "RUN.new"
    assert json.loads((new / "config.json").read_text())["replaces"] == "RUN"
    r = _cli("train", "--resume", str(new), "--quiet")
    ok(r)
    assert f"the new run replaced the old one in {run}" in r.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["RUN"] and not (run / ".lock").exists()
    assert json.loads((run / "config.json").read_text())["model"]["seed"] == 8


# ------------------------------------------------------------------------ a closed output
@pytest.mark.parametrize("closed, lines_read", [
    (("stdout",), 1),                 # scratchvae train --epochs 5 | head -1
    (("stdout",), 0),                 # ... | head -0: closed before the first line
    (("stdout", "stderr"), 0),        # ... 2>&1 | head -0
])
def test_a_closed_output_neither_stops_the_run_nor_prints_a_traceback(straight, tmp_path, closed, lines_read):
    """The reader of standard output (and error) goes away: the run trains all its epochs,
    exactly as one that printed everything, and exits 0 without a word about the pipe."""
    run = tmp_path / "RUN"
    proc = subprocess.Popen([sys.executable, "-m", "scratchvae", "train", *TINY, "--epochs", "5", "--out", str(run)],
                            env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = [proc.stdout.readline() for _ in range(lines_read)]
    for name in closed:
        getattr(proc, name).close()
    err = "" if "stderr" in closed else proc.stderr.read()
    assert proc.wait(timeout=120) == 0, err
    assert all(line.startswith("training VAE") for line in first)
    assert err == ""
    assert rows(run) == rows(straight)[:5]
    assert_identical(ckpt_of(run, 5), ckpt_of(straight, 5))


# ------------------------------------------------------------------------ one writer per run
def _until_it_trains(proc):
    """Wait for a `train` subprocess's first line (its lock is taken before it)."""
    line = proc.stdout.readline()
    assert line.startswith(("training", "resuming")), line
    return proc


def test_a_second_writer_of_a_run_is_refused_naming_the_first(one_epoch, tmp_path):
    """`train --resume R` twice at once: the second is refused, naming the first's PID, and so are
    --overwrite and plot's figures; the readers read on. Once the first is killed, its lock blocks
    nothing: R resumes, and every epoch has one metrics row."""
    run = tmp_path / "RUN"
    shutil.copytree(one_epoch, run)
    first = _until_it_trains(subprocess.Popen(
        [sys.executable, "-m", "scratchvae", "train", "--resume", str(run), "--epochs", "1000", "--quiet"],
        env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    try:
        for argv in (["train", "--resume", str(run), "--epochs", "3", "--quiet"],
                     ["train", *TINY, "--epochs", "1", "--out", str(run), "--overwrite"],
                     ["plot", str(run)]):
            r = _cli(*argv)
            assert r.returncode == 2 and r.stderr.splitlines() == [
                f"scratchvae: error: {run} is being written by another process (PID {first.pid}): wait for it "
                f"to end or stop it (one process writes a run at a time)"], (argv, r.stderr)
        assert not run.with_name("RUN.new").exists() and not (run / "figures").exists()
        for argv in (["evaluate", str(run), "--limit", "10", "--ks", "1", "--quiet"],
                     ["sample", str(run), "--out", str(tmp_path / "s.png"), "--n", "4"],
                     ["encode", str(run), "--out", str(tmp_path / "c.npz"), "--limit", "10"]):
            ok(_cli(*argv))
    finally:
        first.kill()
        first.wait()
    done = load_run(run).meta["epoch"]
    ok(resume(run, done + 1))
    assert [r["epoch"] for r in rows(run)] == list(range(1, done + 2))
    assert not (run / ".lock").exists()


def test_an_overwrite_holds_the_old_run_and_the_new(one_epoch, tmp_path, monkeypatch):
    """While --overwrite trains RUN.new to replace RUN, neither can be resumed by another process."""
    from scratchvae import faults

    run = tmp_path / "RUN"
    shutil.copytree(one_epoch, run)
    refused = {}

    def meanwhile(step):          # inside the new run's epoch 2: RUN.new has its first checkpoint
        if step == 150:
            for target in (run, run.with_name("RUN.new")):
                refused[target.name] = _cli("train", "--resume", str(target), "--epochs", "9", "--quiet")
    monkeypatch.setattr(faults, "mid_epoch_step", meanwhile)
    assert main(["train", *TINY, "--epochs", "2", "--out", str(run), "--overwrite"]) == 0
    assert sorted(refused) == ["RUN", "RUN.new"]
    for name, r in refused.items():
        assert r.returncode == 2 and f"is being written by another process (PID {os.getpid()})" in r.stderr, name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["RUN"] and not (run / ".lock").exists()
    assert [r["epoch"] for r in rows(run)] == [1, 2]
