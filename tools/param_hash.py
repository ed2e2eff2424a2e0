"""Reference hashes of short training runs: the check that a change kept every number.

    python tools/param_hash.py [--out DIR] [--only NAME ...] [--list]

Trains each reference run below for 3 epochs on the embedded data (seed 0) with the NumPy
bodies (``SCRATCHVAE_NUMBA=0``) and two BLAS threads, as fresh subprocesses, then prints, per
run, the SHA-256 over its final parameters: for each parameter name in sorted order, the name
(UTF-8) and then the bytes of ``load_run(RUN).model.host_params()[name]`` (C order). A change
that is meant to move no number (a refactoring, a new part beside the old ones) must leave
every line as it was; ``EXPECTED`` holds the values recorded before such changes. Exit status 1
when a run with an expected value differs.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path

RUNS = {
    "elbo": [],
    "warmup-dynamic": ["--kl-warmup", "2", "--binarize", "dynamic"],
    "full": ["--posterior", "full"],
    "iwae5": ["--objective", "iwae", "--iw-samples", "5"],
}
"""Name -> the flags of ``scratchvae train --epochs 3 --seed 0`` beyond those."""

EXPECTED = {
    "elbo": "3402987449c6bc4e9f6ac7a6ff304a532ff1261806cbe984fb215f661d432dd8",
    "warmup-dynamic": "39940601ba7a34b55a24b6ce02ddd7cf4883e6b8b780998a69e43a1bd13d82c0",
    "full": "5ce404d6a32573cc4fd76de988a83d12603bad28eebc24a12467364d53fabf26",
    "iwae5": "d09b5fafea2b4ff0daeed033b55ef6d26b9436bdd92971fb8df5ddc116193647",
}
"""The hashes recorded before the refactorings that had to keep them (see the module)."""

ENV = {"SCRATCHVAE_NUMBA": "0", "OMP_NUM_THREADS": "2", "OPENBLAS_NUM_THREADS": "2",
       "MKL_NUM_THREADS": "2", "MPLBACKEND": "Agg"}


def param_hash(run_dir):
    """SHA-256 (hex) over the sorted parameter names and bytes of the run's newest checkpoint."""
    from scratchvae.runs import load_run

    params = load_run(run_dir).model.host_params()
    h = hashlib.sha256()
    for name in sorted(params):
        h.update(name.encode())
        h.update(params[name].tobytes())
    return h.hexdigest()


def train(name, out):
    """Train reference run ``name`` into ``out`` in a fresh process (see :data:`ENV`)."""
    cmd = [sys.executable, "-m", "scratchvae", "train", "--epochs", "3", "--seed", "0", "--quiet",
           "--out", str(out), *RUNS[name]]
    subprocess.run(cmd, check=True, env={**os.environ, **ENV}, stdout=subprocess.DEVNULL)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", help="keep the runs in this folder (default: a temporary one)")
    p.add_argument("--only", nargs="+", choices=list(RUNS), help="these runs only")
    p.add_argument("--list", action="store_true", help="print the runs' flags and stop")
    a = p.parse_args(argv)
    if a.list:
        for name, flags in RUNS.items():
            print(f"{name:16s} scratchvae train --epochs 3 --seed 0 {' '.join(flags)}")
        return 0
    failed = 0
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(a.out or tmp)
        for name in a.only or RUNS:
            train(name, base / name)
            got = param_hash(base / name)
            want = EXPECTED.get(name)
            verdict = "" if want is None else "  ok" if got == want else f"  DIFFERS (expected {want})"
            failed += bool(want) and got != want
            print(f"{name:16s} {got}{verdict}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
