"""The run directory's housekeeping: pruning, temporary files of killed writers, the metrics
rows rebuilt from checkpoints, and a new run's folder appearing only with its first checkpoint.

Library-level and tiny (D = 10); the command line's side is in test_cli.py, kills in
test_faults.py.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from scratchvae import VAE
from scratchvae.checkpoint import checkpoint_name, list_checkpoints, remove_stale_temps
from scratchvae.errors import InputError, NonFiniteError
from scratchvae.folders import LOCK, staged_dir, writing
from scratchvae.history import METRICS
from scratchvae.runs import best_epoch, load_run, prune_checkpoints
from scratchvae.train import TrainConfig, fit, resume

D = 10


def data(n=40):
    return np.random.default_rng(0).random((n, D)).astype(np.float32)


def model():
    return VAE(input_dim=D, hidden=(4,), latent=2, seed=1)


def names(folder):
    return sorted(p.name for p in folder.iterdir())


def dead_pid():
    """The id of a process that has exited (and been reaped)."""
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(proc.stdout)


# ------------------------------------------------------------------------ pruning
def test_prune_keeps_the_newest_and_the_best_and_drops_finished_mid_epoch_checkpoints(tmp_path):
    for epoch, batch in [(1, None), (2, 7), (2, None), (3, None), (4, None), (5, 3), (5, None), (6, 2)]:
        (tmp_path / checkpoint_name(epoch, batch)).write_bytes(b"x")
    removed = prune_checkpoints(tmp_path, keep=2, best=1)
    assert names(tmp_path) == ["epoch-0001.npz", "epoch-0004.npz", "epoch-0005.npz",
                               "epoch-0006-batch-000002.npz"]   # epoch 6 is unfinished: its checkpoint stays
    assert sorted(p.name for p in removed) == ["epoch-0002-batch-000007.npz", "epoch-0002.npz",
                                               "epoch-0003.npz", "epoch-0005-batch-000003.npz"]
    assert prune_checkpoints(tmp_path, keep=None) == [] and len(names(tmp_path)) == 4
    prune_checkpoints(tmp_path, keep=1)
    assert names(tmp_path) == ["epoch-0005.npz", "epoch-0006-batch-000002.npz"]


def test_best_epoch_is_the_lowest_finite_test_loss():
    rows = [{"epoch": 1, "test_loss": 5.0}, {"epoch": 2, "test_loss": float("nan")},
            {"epoch": 3, "test_loss": 4.0}, {"epoch": 4, "test_loss": 4.0}, {"epoch": 5}]
    assert best_epoch(rows) == 3
    assert best_epoch([{"epoch": 1}]) is None


def test_fit_keeps_what_it_is_told(tmp_path):
    hist = fit(model(), data(), data(20), config=TrainConfig(epochs=5, batch_size=8), run_dir=tmp_path / "A",
               keep=2)
    best = min(hist, key=lambda r: r["test_loss"])["epoch"]
    assert [p.name for p in list_checkpoints(tmp_path / "A" / "checkpoints")] == \
        [checkpoint_name(e) for e in sorted({4, 5, best})]
    fit(model(), data(), config=TrainConfig(epochs=3, batch_size=8), run_dir=tmp_path / "B", keep=None)
    assert names(tmp_path / "B" / "checkpoints") == [checkpoint_name(e) for e in (1, 2, 3)]
    assert json.loads((tmp_path / "B" / "config.json").read_text())["keep"] == "all"
    with pytest.raises(InputError, match="keep must be a positive integer or None"):
        fit(model(), data(), config=TrainConfig(epochs=1, batch_size=8), run_dir=tmp_path / "C", keep=0)
    assert not (tmp_path / "C").exists()


# ------------------------------------------------------------------------ temporary files
def test_opening_a_run_removes_only_the_temporary_files_of_dead_writers(tmp_path):
    fit(model(), data(), config=TrainConfig(epochs=1, batch_size=8), run_dir=tmp_path)
    ck = tmp_path / "checkpoints"
    dead, alive = dead_pid(), os.getpid()
    for folder, name in [(ck, f".epoch-0002.npz.tmp-{dead}"), (tmp_path, f".metrics.jsonl.tmp-{dead}"),
                         (ck, f".epoch-0002.npz.tmp-{alive}"), (ck, "notes.tmp-1")]:
        (folder / name).write_bytes(b"partial")
    load_run(tmp_path)
    assert names(ck) == [f".epoch-0002.npz.tmp-{alive}", "epoch-0001.npz", "notes.tmp-1"]
    assert names(tmp_path) == ["checkpoints", "config.json", "metrics.jsonl"]


def test_staged_folder_appears_whole_or_not_at_all(tmp_path):
    target = tmp_path / "a" / "RUN"
    with pytest.raises(RuntimeError):
        with staged_dir(target) as tmp:
            (tmp / "config.json").write_text("{}")
            raise RuntimeError("failed half way")
    assert names(tmp_path / "a") == []
    leftover = tmp_path / "a" / f".RUN.tmp-{dead_pid()}"       # a killed process's staging
    leftover.mkdir()
    with staged_dir(target) as tmp:
        (tmp / "x").write_text("1")
    assert names(tmp_path / "a") == ["RUN"] and names(target) == ["x"]
    assert remove_stale_temps(tmp_path / "a") == []


def test_a_dead_writers_staging_folders_go_when_their_folder_is_next_written(tmp_path):
    """Whatever name they staged: the next folder staged beside them removes them (a live
    writer's stays)."""
    dead, alive = dead_pid(), os.getpid()
    for name in (f".A.tmp-{dead}", f".B.new.tmp-{dead}", f".C.tmp-{alive}"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "checkpoints").mkdir()
    with staged_dir(tmp_path / "D") as tmp:
        (tmp / "x").write_text("1")
    assert names(tmp_path) == [f".C.tmp-{alive}", "D"]


# ------------------------------------------------------------------------ nothing before the first checkpoint
def test_a_run_that_fails_before_its_first_checkpoint_leaves_no_folder(tmp_path):
    m = model()

    def poison(event, info):
        if event == "batch" and info["step"] == 3:
            m.params["dec.out.b"][0] = np.nan
    with pytest.raises(NonFiniteError, match="nothing was written"):
        fit(m, data(), config=TrainConfig(epochs=2, batch_size=8), run_dir=tmp_path / "runs" / "R", callback=poison,
            report_every=1)
    assert names(tmp_path) == []


# ------------------------------------------------------------------------ metrics rebuilt from checkpoints
def test_lost_and_torn_metrics_rows_are_rebuilt_from_the_checkpoints(tmp_path):
    hist = fit(model(), data(), data(20), config=TrainConfig(epochs=3, batch_size=8), run_dir=tmp_path, keep=None)
    path = tmp_path / METRICS
    lines = path.read_text().splitlines(keepends=True)
    path.write_text(lines[0] + lines[2][:40])          # row 2 lost, row 3 cut short by a kill
    before = path.read_bytes()
    run = load_run(tmp_path)
    assert run.history == hist and path.read_bytes() == before     # rebuilt in memory only
    assert [r["epoch"] for r in load_run(tmp_path, epoch=2).history] == [1, 2]
    resume(run, data(), data(20), epochs=4)
    rows = [json.loads(s) for s in path.read_text().splitlines()]
    assert rows[:3] == hist and [r["epoch"] for r in rows] == [1, 2, 3, 4]
    (note,) = json.loads((tmp_path / "config.json").read_text())["resumes"]
    assert note["from"] == "checkpoints/epoch-0003.npz" and note["epochs"] == 4 and note["keep"] == "all"


# ------------------------------------------------------------------------ one writer at a time
HOLD = ("import sys, time; from scratchvae.folders import writing\n"
        "with writing(sys.argv[1]):\n    print('held', flush=True)\n    time.sleep(600)")


def _holder(folder):
    """A process that holds ``folder``'s writer lock (until it is killed), once it says so."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]),
                                                                             os.environ.get("PYTHONPATH", "")])})
    assert proc.stdout.readline() == "held\n"
    return proc


def test_a_second_writer_is_refused_naming_the_first_and_a_dead_ones_lock_never_blocks(tmp_path):
    fit(model(), data(), config=TrainConfig(epochs=1, batch_size=8), run_dir=tmp_path)
    assert LOCK not in names(tmp_path)                       # released and removed once the run is written
    proc = _holder(tmp_path)
    try:
        with pytest.raises(InputError, match=f"{tmp_path} is being written by another process \\(PID {proc.pid}\\)"):
            resume(load_run(tmp_path), data(), epochs=2)
        with pytest.raises(InputError, match=f"PID {proc.pid}"):
            with writing(tmp_path):
                pass
    finally:
        proc.kill()
        proc.wait()
    assert LOCK in names(tmp_path)                           # the killed holder's file stays ...
    resume(load_run(tmp_path), data(), epochs=2)              # ... and blocks nothing
    assert [r["epoch"] for r in load_run(tmp_path).history] == [1, 2] and LOCK not in names(tmp_path)


def test_a_lock_file_naming_a_live_process_that_holds_no_lock_blocks_nothing(tmp_path):
    """A dead writer's PID reused by another process: the file names a live process, but no
    process holds the lock, so the run is written."""
    fit(model(), data(), config=TrainConfig(epochs=1, batch_size=8), run_dir=tmp_path)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        (tmp_path / LOCK).write_text(f"{sleeper.pid}\n")
        resume(load_run(tmp_path), data(), epochs=2)
    finally:
        sleeper.kill()
        sleeper.wait()
    assert [r["epoch"] for r in load_run(tmp_path).history] == [1, 2]


def test_the_lock_is_one_per_process_and_nests(tmp_path):
    with writing(tmp_path):
        with writing(tmp_path):                               # the same process: no second lock
            assert (tmp_path / LOCK).read_text() == f"{os.getpid()}\n"
        assert LOCK in names(tmp_path)
    assert names(tmp_path) == []


def test_a_new_run_never_writes_into_a_run_another_process_created_meanwhile(tmp_path):
    """Two new runs into one folder: the one that checkpoints second finds the folder taken and
    stops, writing nothing there."""
    other = tmp_path / "other"
    fit(model(), data(), config=TrainConfig(epochs=1, batch_size=8), run_dir=other)
    run = tmp_path / "RUN"

    def meanwhile(event, info):
        if event == "batch" and info["step"] == 2 and not run.exists():
            shutil.copytree(other, run)                       # another process's first checkpoint
    before = None
    with pytest.raises(InputError, match=f"{run} appeared while this run trained .*nothing of this run was written"):
        fit(model(), data(), config=TrainConfig(epochs=2, batch_size=8), run_dir=run, callback=meanwhile,
            report_every=1)
    before = {p.name: p.read_bytes() for p in other.rglob("*") if p.is_file()}
    assert {p.name: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before
    assert names(tmp_path) == ["RUN", "other"]
