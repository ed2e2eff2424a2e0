"""Data-parallel training and evaluation on MPI ranks (``mpiexec``, the ``dist`` extra).

The bound: two ranks step as one process up to the order of the gradient's sum (each rank's
float32 sum over its rows, then the ranks' sum), so after two epochs every parameter is within
RANKS_ATOL of the one-process run's and the recorded losses within RANKS_RTOL; the ranks hold
bit-identical parameters, and every random stream is where one process's is. Evaluation on
ranks gives one process's numbers exactly. Skipped where mpi4py or mpiexec is missing.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import _ranks_job
from scratchvae.comm import SOLO, share
from scratchvae.runs import load_run

pytest.importorskip("mpi4py")
REPO = Path(__file__).resolve().parents[1]
MPIEXEC = shutil.which("mpiexec", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
pytestmark = pytest.mark.skipif(MPIEXEC is None, reason="no mpiexec (the mpich wheel of the 'dist' extra brings one)")
RANKS_ATOL, RANKS_RTOL = 1e-5, 1e-6
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests"), os.environ.get("PYTHONPATH", "")])}
MODEL = ["--hidden", "32", "--latent", "4", "--seed", "3"]
SMALL = [*MODEL, "--batch-size", "250", "--quiet"]


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """One's own data: 1000 + 200 of the embedded MNIST images (batches of 50: 20 steps an epoch)."""
    from scratchvae.data import load_dataset

    train, test = load_dataset("embedded")
    path = tmp_path_factory.mktemp("data") / "small.npz"
    np.savez(path, x_train=train.images[:1000], x_test=test.images[:200])
    return ["--dataset", str(path), *MODEL, "--batch-size", "50", "--quiet"]


@pytest.fixture(scope="module")
def whole(tmp_path_factory, small):
    """The uninterrupted one-process run of 3 epochs on ``small``, to continue interrupted runs to."""
    out = tmp_path_factory.mktemp("whole") / "run"
    assert subprocess.run(scratchvae("train", "--epochs", "3", "--out", str(out), *small), env=ENV).returncode == 0
    return load_run(out)


def mpiexec(n, *args, **kw):
    return subprocess.run([MPIEXEC, "-n", str(n), *args], env=ENV, capture_output=True, text=True, timeout=120, **kw)


def scratchvae(*args):
    return [sys.executable, "-m", "scratchvae", *args]


def test_rows_are_shared_contiguously_the_first_ranks_one_more():
    assert [share(10, 3, r) for r in range(3)] == [(0, 4), (4, 7), (7, 10)]
    assert [share(1, 2, r) for r in range(2)] == [(0, 1), (1, 1)]          # a rank with no rows
    assert SOLO.rows(7) == (0, 7) and SOLO.size == 1 and SOLO.writer


def test_two_ranks_step_as_one_process_for_every_kind_and_stop_together_on_a_fault(tmp_path):
    """ELBO with dynamic binarisation, corruption and warm-up; the bound with K = 3 samples and the
    full posterior (ε as K row ranges); two stochastic layers, ELBO and bound (every layer's ε
    a rank's rows); an autoencoder with batches of one (a rank with no rows);
    uneven last batches. A NaN on one rank stops both with the usual message, and θ changed on one
    rank alone stops both at the epoch's check."""
    r = mpiexec(2, sys.executable, str(REPO / "tests" / "_ranks_job.py"), str(tmp_path))
    assert r.returncode == 0, r.stderr[-3000:]
    for name in _ranks_job.CASES:
        one = _ranks_job.run(name, SOLO)
        ranks = [np.load(tmp_path / f"{name}-{k}.npz") for k in range(2)]
        np.testing.assert_array_equal(ranks[0]["theta"], ranks[1]["theta"], err_msg=name)
        np.testing.assert_allclose(ranks[0]["theta"], one["theta"], rtol=0, atol=RANKS_ATOL, err_msg=name)
        np.testing.assert_array_equal(ranks[0]["rng"], one["rng"], err_msg=name)
        for got, want in zip(json.loads(str(ranks[0]["history"])), json.loads(one["history"])):
            for key in ("train_loss", "train_recon", "train_kl", "test_loss"):
                assert got[key] == pytest.approx(want[key], rel=RANKS_RTOL), (name, key)
    for name, error in (("nan-on-the-last-rank", "NonFiniteError: the loss became non-finite at step 4"),
                        ("theta-differs-on-the-last-rank", "RanksDifferError: the ranks hold different parameters")):
        for k in range(2):
            assert str(np.load(tmp_path / f"{name}-{k}.npz")["error"]).startswith(error), name


def test_a_two_rank_run_equals_one_process_and_evaluates_as_one(tmp_path):
    """The command line: `mpiexec -n 2 scratchvae train` on the embedded data, 2 epochs, against one
    process; rank 0 alone writes and prints; `mpiexec -n 2 scratchvae evaluate` gives one process's
    report exactly (on as many BLAS threads per process: OpenBLAS's bits may depend on them)."""
    one, two = tmp_path / "one", tmp_path / "two"
    assert subprocess.run(scratchvae("train", "--epochs", "2", "--out", str(one), *SMALL), env=ENV).returncode == 0
    r = mpiexec(2, *scratchvae("train", "--epochs", "2", "--out", str(two), *SMALL))
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("training VAE") == 1 and "on 2 ranks" in r.stdout
    a, b = load_run(one), load_run(two)
    assert b.config["provenance"]["ranks"] == 2 and b.config["provenance"]["blas_threads"]
    for k in a.model.params:
        np.testing.assert_allclose(b.model.params[k], a.model.params[k], rtol=0, atol=RANKS_ATOL, err_msg=k)
    for x, y in zip(a.history, b.history):
        assert y["train_loss"] == pytest.approx(x["train_loss"], rel=RANKS_RTOL)
    ev = ["evaluate", str(two), "--json", "--ks", "1,10", "--limit", "200"]
    alone = subprocess.run(scratchvae(*ev), env={**ENV, "OPENBLAS_NUM_THREADS": "1"}, capture_output=True, text=True)
    shared = mpiexec(2, "-env", "OPENBLAS_NUM_THREADS", "1", *scratchvae(*ev))
    assert alone.returncode == shared.returncode == 0, shared.stderr[-3000:]
    assert json.loads(shared.stdout) == json.loads(alone.stdout)
    r = mpiexec(2, *scratchvae("sample", str(two), "--n", "4", "--out", str(tmp_path / "s.png")))
    assert r.returncode == 0 and r.stderr.count("sample does not use ranks: rank 0 runs it alone") == 1
    assert r.stdout.strip() == str(tmp_path / "s.png") and (tmp_path / "s.png").exists()


def test_a_killed_rank_ends_the_job_and_the_run_resumes_on_one_process(tmp_path, small, whole):
    """SIGKILL on rank 1 in epoch 2: the job ends (the launcher ends rank 0), the newest checkpoint
    is intact, and one process continues it to the uninterrupted run's parameters (within the bound)."""
    run = tmp_path / "run"
    train = scratchvae("train", "--epochs", "3", "--out", str(run), *small)
    r = mpiexec(1, *train, ":", "-n", "1", "-env", "SCRATCHVAE_FAULT", "mid-epoch:30", *train)
    assert r.returncode != 0 and "signal 9" in r.stdout + r.stderr
    assert [p.name for p in sorted((run / "checkpoints").iterdir())] == ["epoch-0001.npz"]
    assert subprocess.run(scratchvae("train", "--resume", str(run), "--quiet"), env=ENV).returncode == 0
    b = load_run(run)
    assert b.meta["epoch"] == 3 and b.config["resumes"][0]["provenance"]["ranks"] == 1
    for k in whole.model.params:
        np.testing.assert_allclose(b.model.params[k], whole.model.params[k], rtol=0, atol=RANKS_ATOL, err_msg=k)


def test_ctrl_c_stops_every_rank_at_one_step_and_the_checkpoint_resumes_on_other_ranks(tmp_path, small, whole):
    """SIGINT to mpiexec (as Ctrl-C): every rank stops at the same step, one mid-epoch checkpoint, exit
    130; three ranks resume it and end where one process uninterrupted does (within the bound)."""
    run = tmp_path / "run"
    p = subprocess.Popen([MPIEXEC, "-n", "2", *scratchvae("train", "--epochs", "3", "--out", str(run), *small[:-1])],
                         env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in p.stdout:
        if line.startswith("epoch 1/3"):
            p.send_signal(signal.SIGINT)
            break
    _, err = p.communicate(timeout=60)
    assert p.returncode == 130, err[-3000:]
    assert err.count("scratchvae: interrupted:") == 1
    assert len([c.name for c in (run / "checkpoints").iterdir() if "batch" in c.name]) == 1
    r = mpiexec(3, *scratchvae("train", "--resume", str(run), "--quiet"))
    assert r.returncode == 0, r.stderr[-3000:]
    b = load_run(run)
    assert [n["provenance"]["ranks"] for n in b.config["resumes"]] == [3]
    for k in whole.model.params:
        np.testing.assert_allclose(b.model.params[k], whole.model.params[k], rtol=0, atol=RANKS_ATOL, err_msg=k)


def test_bad_input_is_refused_on_every_rank_before_anything_is_written(tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("1")
    r = mpiexec(2, *scratchvae("train", "--out", str(tmp_path / "full"), *SMALL))
    assert r.returncode == 2
    assert r.stderr.count("scratchvae: error:") == 1 and "is not empty and holds no run" in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full"]
    r = mpiexec(2, *scratchvae("train", "--lr", "-1", "--out", str(tmp_path / "new"), *SMALL))
    assert r.returncode == 2 and r.stderr.count("error:") == 1 and not (tmp_path / "new").exists()


def test_two_layers_evaluate_on_ranks_as_one_process(tmp_path, small):
    """Several stochastic layers: each layer's ε per chunk, skipped by the other rank as a whole
    (S draws per chunk), so the shared evaluation is one process's, every figure of it."""
    run = tmp_path / "two-layers"
    args = [a for a in small]
    args[args.index("--hidden") + 1], args[args.index("--latent") + 1] = "32/16", "4,2"
    assert subprocess.run(scratchvae("train", "--epochs", "1", "--out", str(run), *args), env=ENV).returncode == 0
    ev = ["evaluate", str(run), "--json", "--ks", "1,10", "--limit", "150"]
    alone = subprocess.run(scratchvae(*ev), env={**ENV, "OPENBLAS_NUM_THREADS": "1"}, capture_output=True, text=True)
    shared = mpiexec(2, "-env", "OPENBLAS_NUM_THREADS", "1", *scratchvae(*ev))
    assert alone.returncode == shared.returncode == 0, shared.stderr[-3000:]
    res = json.loads(alone.stdout)
    assert len(res["active_units"]["layers"]) == 2 and len(res["test_elbo"]["kl_layers"]) == 2
    assert json.loads(shared.stdout) == res
    # chunks of 3 images × 4 samples, shared out: the other rank's chunks skipped, S draws each
    job = ("import sys, numpy as np; from scratchvae.comm import world; from scratchvae.runs import load_run; "
           "from scratchvae.evaluate import iwae_estimates; m = load_run(sys.argv[1]).model; "
           "x = np.random.default_rng(0).random((17, 784)).round().astype(np.float32); "
           "c = world(); e = iwae_estimates(m, x, (1, 8), batch=12, comm=c); "
           "print(repr([e[1].tolist(), e[8].tolist(), m.rng['eval'].state().tolist()])) if c.rank == 0 else None")
    outs = [mpiexec(n, sys.executable, "-c", job, str(run)) for n in (1, 2)]
    assert all(o.returncode == 0 for o in outs), outs[1].stderr[-3000:]
    assert outs[1].stdout.strip() == outs[0].stdout.strip()
