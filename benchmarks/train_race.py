"""The training race: ``scratchvae train`` against the same loop in PyTorch, whole commands.

    python -m benchmarks.train_race            # 10 epochs, 3 alternations (~15+ minutes on 2 cores)
    python -m benchmarks.train_race --epochs 1 --repeats 1   # a quick try

Runs, alternately and ``--repeats`` times, the whole commands (process start, imports,
data loading, every epoch with its test evaluation and checkpoint)::

    python -m scratchvae train --dataset mnist --data-dir D --epochs 10 --batch-size 128 \\
        --hidden 400 --latent 20 --lr 1e-3 --out TMP --quiet
    python -m benchmarks.torch_train --data-dir D --epochs 10 --batch-size 128 \\
        --hidden 400 --latent 20 --lr 1e-3 --out TMP

the first twice: as ``scratchvae-numpy`` with ``SCRATCHVAE_NUMBA=0`` (the NumPy bodies) and, where
Numba imports, as ``scratchvae-numba`` with ``SCRATCHVAE_NUMBA=1`` (the fused blocks' Numba twins;
the first run may compile them, later ones load them from Numba's cache). All with
OMP/OPENBLAS/MKL_NUM_THREADS=2 (D is ``--data-dir``, else ``$SCRATCHVAE_MNIST_DIR``; with
neither, the commands go without ``--data-dir`` to scratchvae's cache, which is filled, with
checksums, before the first timed run). Reports each wall time, the medians, the ratios
(torch / scratchvae: > 1 means scratchvae is faster) and each run's final test loss.
Writes ``train-race-<timestamp>.md`` / ``.json`` under ``--out`` (default benchmarks/results).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .common import REPO, child_env, cpu_model, load_mnist, mnist_source, write_json


def commands(data_dir, epochs, out):
    """The commands by name; without ``data_dir`` they read MNIST from scratchvae's cache."""
    data = ["--data-dir", str(data_dir)] if data_dir is not None else []
    common = ["--epochs", str(epochs), "--batch-size", "128", "--hidden", "400", "--latent", "20",
              "--lr", "1e-3"]
    scratchvae = [sys.executable, "-m", "scratchvae", "train", "--dataset", "mnist", *data, *common]
    return {
        "scratchvae-numpy": [*scratchvae, "--out", str(out / "scratchvae-numpy"), "--quiet"],
        "scratchvae-numba": [*scratchvae, "--out", str(out / "scratchvae-numba"), "--quiet"],
        "torch": [sys.executable, "-m", "benchmarks.torch_train", *data,
                  *common, "--out", str(out / "torch")],
    }


FAST_PATH = {"scratchvae-numpy": "0", "scratchvae-numba": "1"}
"""SCRATCHVAE_NUMBA for the scratchvae commands: the NumPy bodies, or the fused blocks' Numba twins."""


def racers():
    """The commands this machine runs: scratchvae-numba only where Numba imports."""
    numba = importlib.util.find_spec("numba") is not None
    return [n for n in ("scratchvae-numpy", "scratchvae-numba", "torch") if numba or n != "scratchvae-numba"]


def run_one(name, cmd, env, run_dir):
    """Run one command: (wall seconds, final test loss); SystemExit if it fails."""
    env = dict(env, SCRATCHVAE_NUMBA=FAST_PATH[name]) if name in FAST_PATH else env
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"train_race: {name} failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
    return wall, last_test_loss(run_dir / name)


def last_test_loss(run_dir):
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return None
    rows = [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]
    return rows[-1].get("test_loss") if rows else None


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.train_race", description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", help="folder holding the four MNIST IDX files (default "
                                      "$SCRATCHVAE_MNIST_DIR, else scratchvae's cache, filled by a "
                                      "checksummed download)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", help="folder for the .md and .json (default benchmarks/results)")
    a = p.parse_args(argv)
    folder, shown_dir = mnist_source(a.data_dir)
    load_mnist(a.data_dir)  # a wrong folder stops here, and no timed run includes a download
    run_dir_arg = folder.resolve() if folder is not None else None  # the children run in REPO
    env = child_env("cpu")
    started = _dt.datetime.now(_dt.timezone.utc)
    names = racers()
    results = {name: [] for name in names}
    tmp = Path(tempfile.mkdtemp(prefix="train-race-"))
    try:
        for rep in range(a.repeats):
            for name in names:
                run_dir = tmp / f"{name}-{rep}"
                wall, loss = run_one(name, commands(run_dir_arg, a.epochs, run_dir)[name], env, run_dir)
                results[name].append({"wall_s": wall, "test_loss": loss, "load_after": os.getloadavg()[0]})
                print(f"run {rep + 1}/{a.repeats} {name}: {wall:.1f} s, final test loss {loss}",
                      file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    med = {k: statistics.median(r["wall_s"] for r in v) for k, v in results.items()}
    ratios = {n: [t["wall_s"] / r["wall_s"] for r, t in zip(results[n], results["torch"])]
              for n in names if n != "torch"}
    shown = {k: c for k, c in commands(shown_dir, a.epochs, Path("OUT")).items() if k in names}
    md = report(a, started, " ".join(argv if argv is not None else sys.argv[1:]), results, med, ratios, shown)
    out_dir = Path(a.out) if a.out else REPO / "benchmarks" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"train-race-{started.strftime('%Y%m%d-%H%M%S')}"
    (out_dir / f"{stem}.md").write_text(md)
    write_json(out_dir / f"{stem}.json", {"epochs": a.epochs, "repeats": a.repeats, "results": results,
                                           "median_s": med, "ratio_runs": ratios, "fast_path": FAST_PATH,
                                           "commands": {k: c[1:] for k, c in shown.items()}})
    print(md)
    return 0


def report(a, started, argv_line, results, med, ratios, shown):
    """The race's markdown: a row per command, then torch / scratchvae per run and its median."""
    lines = [f"# Training race: {a.epochs} epochs of MNIST, {started.strftime('%Y-%m-%d %H:%M UTC')}", "",
             f"`python -m benchmarks.train_race {argv_line}` on {cpu_model()} ({os.cpu_count()} CPUs), "
             f"2 BLAS/torch threads, commands alternated {a.repeats}×; ratio = torch / scratchvae wall "
             f"time (> 1: scratchvae faster); scratchvae-numpy runs with SCRATCHVAE_NUMBA=0 (the NumPy "
             f"bodies), scratchvae-numba with SCRATCHVAE_NUMBA=1 (the Numba twins).", "",
             "| command | wall s per run | median s | final test loss per run |", "|---|---|---:|---|"]
    for name, rs in results.items():
        walls = " / ".join(f"{r['wall_s']:.1f}" for r in rs)
        losses = " / ".join("–" if r["test_loss"] is None else f"{r['test_loss']:.2f}" for r in rs)
        lines.append(f"| {name} | {walls} | {med[name]:.1f} | {losses} |")
    lines.append("")
    for name, rs in ratios.items():
        lines.append(f"- torch / {name} per run: {' / '.join(f'{x:.2f}' for x in rs)}; median "
                     f"{statistics.median(rs):.2f}")
    loads = [r["load_after"] for rs in results.values() for r in rs]
    lines += ["", f"1-minute load average after each run: {min(loads):.1f}–{max(loads):.1f}.", "",
              "Commands (OUT a temporary folder):", ""]
    lines += [f"- {k}: `{' '.join(['python'] + c[1:])}`" for k, c in shown.items()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
