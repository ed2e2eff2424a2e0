"""The training race: ``scratchvae train`` against the same loop in PyTorch, whole commands.

    python -m benchmarks.train_race            # 10 epochs, 3 alternations (~10+ minutes on 2 cores)
    python -m benchmarks.train_race --epochs 1 --repeats 1   # a quick try

Runs, alternately and ``--repeats`` times, the two whole commands (process start, imports,
data loading, every epoch with its test evaluation and checkpoint)::

    python -m scratchvae train --dataset mnist --data-dir D --epochs 10 --batch-size 128 \\
        --hidden 400 --latent 20 --lr 1e-3 --out TMP --quiet
    python -m benchmarks.torch_train --data-dir D --epochs 10 --batch-size 128 \\
        --hidden 400 --latent 20 --lr 1e-3 --out TMP

both with OMP/OPENBLAS/MKL_NUM_THREADS=2 (D is ``--data-dir``, else ``$SCRATCHVAE_MNIST_DIR``;
with neither, both commands go without ``--data-dir`` to scratchvae's cache, which is filled,
with checksums, before the first timed run), and reports each wall time, the medians, their
ratio (torch / scratchvae: > 1 means scratchvae is faster) and each run's final test loss.
Writes ``train-race-<timestamp>.md`` / ``.json`` under ``--out`` (default benchmarks/results).
"""

from __future__ import annotations

import argparse
import datetime as _dt
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
    """The two commands; without ``data_dir`` both read MNIST from scratchvae's cache."""
    data = ["--data-dir", str(data_dir)] if data_dir is not None else []
    common = ["--epochs", str(epochs), "--batch-size", "128", "--hidden", "400", "--latent", "20",
              "--lr", "1e-3"]
    return {
        "scratchvae": [sys.executable, "-m", "scratchvae", "train", "--dataset", "mnist",
                       *data, *common, "--out", str(out / "scratchvae"), "--quiet"],
        "torch": [sys.executable, "-m", "benchmarks.torch_train", *data,
                  *common, "--out", str(out / "torch")],
    }


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
    results = {"scratchvae": [], "torch": []}
    tmp = Path(tempfile.mkdtemp(prefix="train-race-"))
    try:
        for rep in range(a.repeats):
            for name in ("scratchvae", "torch"):
                run_dir = tmp / f"{name}-{rep}"
                cmd = commands(run_dir_arg, a.epochs, run_dir)[name]
                t0 = time.perf_counter()
                proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
                wall = time.perf_counter() - t0
                if proc.returncode != 0:
                    raise SystemExit(f"train_race: {name} failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
                loss = last_test_loss(run_dir / name)
                results[name].append({"wall_s": wall, "test_loss": loss, "load_after": os.getloadavg()[0]})
                print(f"run {rep + 1}/{a.repeats} {name}: {wall:.1f} s, final test loss {loss}",
                      file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    med = {k: statistics.median(r["wall_s"] for r in v) for k, v in results.items()}
    ratios = [t["wall_s"] / s["wall_s"] for s, t in zip(results["scratchvae"], results["torch"])]
    shown = commands(shown_dir, a.epochs, Path("OUT"))
    lines = [f"# Training race: {a.epochs} epochs of MNIST, {started.strftime('%Y-%m-%d %H:%M UTC')}", "",
             f"`python -m benchmarks.train_race {' '.join(argv if argv is not None else sys.argv[1:])}`"
             f" on {cpu_model()} ({os.cpu_count()} CPUs), 2 BLAS/torch threads, commands alternated "
             f"{a.repeats}×; ratio = torch / scratchvae wall time (> 1: scratchvae faster).", "",
             "| command | wall s per run | median s | final test loss per run |", "|---|---|---:|---|"]
    for name, rs in results.items():
        walls = " / ".join(f"{r['wall_s']:.1f}" for r in rs)
        losses = " / ".join("–" if r["test_loss"] is None else f"{r['test_loss']:.2f}" for r in rs)
        lines.append(f"| {name} | {walls} | {med[name]:.1f} | {losses} |")
    lines += ["", f"ratio per run: {' / '.join(f'{x:.2f}' for x in ratios)}; median "
              f"{statistics.median(ratios):.2f}", "",
              "Commands (OUT a temporary folder):", ""]
    lines += [f"- {k}: `{' '.join(['python'] + c[1:])}`" for k, c in shown.items()]
    md = "\n".join(lines) + "\n"
    out_dir = Path(a.out) if a.out else REPO / "benchmarks" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"train-race-{started.strftime('%Y%m%d-%H%M%S')}"
    (out_dir / f"{stem}.md").write_text(md)
    write_json(out_dir / f"{stem}.json", {"epochs": a.epochs, "repeats": a.repeats, "results": results,
                                           "median_s": med, "ratio_runs": ratios,
                                           "commands": {k: c[1:] for k, c in shown.items()}})
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
