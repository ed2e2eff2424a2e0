"""The benchmark harness: ``python -m benchmarks.run --device cpu`` (or ``--device gpu``).

1. Loads full MNIST (``--data-dir``, else ``$SCRATCHVAE_MNIST_DIR``, else scratchvae's
   cache), writes the preloaded batches (the same sequence for every peer) and the starting
   parameters (scratchvae's seed-0 initialisation) to a temporary folder.
2. **Same work:** every peer computes, in its own process and in float64, the loss and
   gradients for the same parameters and the same ε (drawn once with numpy and saved);
   each is compared with scratchvae-numpy's (relative error per array ≤ 1e-10) and the
   harness stops on a mismatch.
3. **Timing:** for each of ``--repeats`` sweeps, for each batch size, each peer runs in a
   fresh process (peers interleaved). scratchvae's process also times the GEMM floor.
4. Writes ``<device>-<timestamp>.json`` and ``.md`` under ``--out`` (default
   benchmarks/results/) and prints the markdown.

``--smoke``: scratchvae-numpy only, batch 32, 3 warm-up and 5 timed steps, one repeat, the
embedded subset unless ``--data-dir`` or ``$SCRATCHVAE_MNIST_DIR`` names full MNIST: the
pipeline in seconds (tests/test_bench_smoke.py).
See benchmarks/README.md for what each peer does.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from . import report
from .common import (CHECK_TOL, N_BATCHES, PARAM_SHAPES, REPO, THREAD_VARS, THREADS, bench_pins, child_env,
                     cpu_model, load_train_images, make_batches, numpy_blas_build, openblas_runtime,
                     rel_err, write_json)
from .peers import PEERS, RANKED, base_peer, peers_for, ranked

PRECISIONS = ("fp32", "tf32", "bf16")

CHECK_BATCH = 128
DEFAULT_SIZES = {"cpu": (128, 1024), "gpu": (128, 4096)}
FLOOR_PEER = {"cpu": "scratchvae-numpy", "gpu": "scratchvae-cupy"}
BASELINES = {"cpu": ("scratchvae-numba", "scratchvae-numpy"), "gpu": ("scratchvae-cupy-graph", "scratchvae-cupy")}


def default_steps(device, batch):
    """Timed steps: ≥ 200 at batch 128, ≥ 50 at the large size (more on a GPU, where steps are short)."""
    if device == "gpu":
        return 1000 if batch <= 512 else 200
    return 200 if batch <= 512 else 50


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    p.add_argument("--batch-sizes", help="comma-separated (default 128,1024 on cpu; 128,4096 on gpu)")
    p.add_argument("--repeats", type=int, default=3, help="whole sweeps (default 3)")
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--steps", type=int, help="timed steps at every size (default 200 / 50 on cpu, "
                                              "1000 / 200 on gpu)")
    p.add_argument("--peers", help=f"comma-separated subset of: {', '.join(PEERS)}")
    p.add_argument("--out", help="folder for the .json and .md (default benchmarks/results)")
    p.add_argument("--data-dir", help="folder holding the four MNIST IDX files (default "
                                      "$SCRATCHVAE_MNIST_DIR, else scratchvae's cache, filled by a "
                                      "checksummed download; --smoke: the embedded subset)")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="the matrix products of every timed peer, each in its framework's own setting "
                        "(see README): fp32 (true FP32, TF32 off), tf32 (GPU), bf16 (bfloat16 operands, FP32 "
                        "accumulation); the same-work check stays float64")
    p.add_argument("--tf32", action="store_const", const="tf32", dest="precision",
                   help="the same as --precision tf32")
    p.add_argument("--ranks", default=None,
                   help=f"comma-separated configurations of {RANKED}: R (R MPI ranks of {THREADS} // R BLAS threads "
                        f"each) or RxT (R ranks of T threads); 1 is the plain peer (default on cpu: 1,2 where "
                        f"mpi4py and mpiexec, the 'dist' extra, are installed, else 1)")
    p.add_argument("--timeout", type=float, default=600, help="seconds per child process")
    p.add_argument("--smoke", action="store_true", help="scratchvae-numpy only, tiny counts, seconds")
    a = p.parse_args(argv)
    a.argv = list(sys.argv[1:] if argv is None else argv)
    if a.smoke:
        a.device, a.repeats, a.warmup = "cpu", 1, 3
        a.steps = a.steps or 5
        a.batch_sizes = a.batch_sizes or "32"
        a.peers = "scratchvae-numpy"
    sizes = [int(s) for s in (a.batch_sizes.split(",") if a.batch_sizes else DEFAULT_SIZES[a.device])]
    if any(s < 1 for s in sizes) or a.repeats < 1 or a.warmup < 1 or (a.steps is not None and a.steps < 1):
        p.error("batch sizes, --repeats, --warmup and --steps must be positive")
    a.sizes = sizes
    if a.precision == "tf32" and a.device == "cpu":
        p.error("--precision tf32 is a GPU setting (TF32 tensor cores); on the CPU use fp32 or bf16")
    available = peers_for(a.device)
    if a.peers:
        a.peer_list = [s.strip() for s in a.peers.split(",") if s.strip()]
        bad = [s for s in a.peer_list if s not in available]
        if bad:
            p.error(f"--peers: {', '.join(bad)} not a {a.device} peer; choose from {', '.join(available)}")
    else:
        a.peer_list = available
    a.peer_list = _with_ranks(p, a)
    return a


def _with_ranks(p, a):
    """The peer list with :data:`RANKED` on the ``--ranks`` configurations beside it."""
    if a.device != "cpu" or RANKED not in a.peer_list:
        return a.peer_list
    spec = a.ranks or ("1,2" if _mpiexec() else "1")
    names = []
    for item in spec.split(","):
        r, _, t = item.strip().partition("x")
        if not r.isdigit() or int(r) < 1 or (t and (not t.isdigit() or int(t) < 1)):
            p.error(f"--ranks: expected R or RxT with positive integers, got {item!r}")
        r, t = int(r), int(t) if t else max(1, THREADS // int(r))
        names.append(RANKED if (r, t) == (1, THREADS) else ranked(r, t))
    if any(base_peer(n)[1] > 1 for n in names) and not _mpiexec():
        p.error("--ranks: more than one rank needs mpiexec and mpi4py (pip install -e '.[dist]')")
    i = a.peer_list.index(RANKED)
    return a.peer_list[:i] + names + [q for q in a.peer_list[i + 1:] if q not in names]


def _mpiexec():
    """The mpiexec beside this Python (the mpich wheel's) or on PATH, where mpi4py imports; else None."""
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return None
    return shutil.which("mpiexec", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")


def log(msg):
    print(msg, file=sys.stderr, flush=True)


class Children:
    """Runs one peer task per fresh process and reads back its JSON result."""

    def __init__(self, tmp, env, timeout):
        self.tmp, self.env, self.timeout, self.n = Path(tmp), env, timeout, 0

    def __call__(self, spec):
        self.n += 1
        _, ranks, threads = base_peer(spec["peer"])
        spec = dict(spec, result=str(self.tmp / f"result-{self.n}.json"), ranks=ranks)
        path = self.tmp / f"spec-{self.n}.json"
        path.write_text(json.dumps(spec))
        cmd = [sys.executable, "-m", "benchmarks.worker", str(path)]
        env = self.env if threads is None else {**self.env, **{k: str(threads) for k in THREAD_VARS}}
        if ranks > 1:
            cmd = [_mpiexec(), "-n", str(ranks), *cmd]
        try:
            proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True,
                                  timeout=self.timeout)
        except subprocess.TimeoutExpired:
            return {"status": "failed", "reason": f"timed out after {self.timeout:g} s"}
        if proc.returncode != 0 or not Path(spec["result"]).exists():
            tail = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()][-1:] or ["no output"]
            return {"status": "failed", "reason": f"exit {proc.returncode}: {tail[0][:300]}",
                    "stderr": proc.stderr[-4000:]}
        return json.loads(Path(spec["result"]).read_text())


# -- same work -------------------------------------------------------------------------------
def same_work(a, children, tmp, x_check):
    """Check every peer against scratchvae-numpy in float64; SystemExit on a mismatch."""
    from scratchvae import VAE

    ref_model = VAE(dtype="float64", seed=0)
    params = ref_model.host_params()
    eps = np.random.default_rng(1234).standard_normal((x_check.shape[0], ref_model.latent))
    inputs = Path(tmp) / "check-inputs.npz"
    np.savez(inputs, x=x_check.astype(np.float64), eps=eps,
             **{f"param/{k}": v for k, v in params.items()})
    results, out = {}, {}
    order = ["scratchvae-numpy"] + [p for p in a.peer_list if p != "scratchvae-numpy" and base_peer(p)[0] == p]
    for peer in order:
        grads_out = Path(tmp) / f"check-{peer}.npz"
        res = children({"task": "check", "peer": peer, "device": "cpu" if peer == "scratchvae-numpy"
                        else a.device, "inputs": str(inputs), "grads_out": str(grads_out)})
        results[peer] = res
        if res["status"] == "failed":
            raise SystemExit(f"benchmarks: the same-work check could not run {peer}: {res['reason']}\n"
                             f"{res.get('stderr', '')}")
        if res["status"] != "ok":
            log(f"  {peer}: skipped: {res['reason']}")
            out[peer] = {"status": "skipped", "reason": res["reason"]}
            continue
        if "errors" in res:           # a peer that checks itself against its own reference
            errors, tol = res["errors"], res["tol"]
        else:
            got = np.load(grads_out)
            ref = np.load(Path(tmp) / "check-scratchvae-numpy.npz")
            errors = {"loss": rel_err(got["loss"], ref["loss"])}
            errors.update({k: rel_err(got[f"grad/{k}"], ref[f"grad/{k}"]) for k in PARAM_SHAPES})
            tol = CHECK_TOL
        worst = max(errors.values())
        ok = worst <= tol                      # a NaN error is inf here (rel_err), so it fails
        out[peer] = {"status": "ok", "dtype": res.get("dtype"), "errors": errors, "tol": tol,
                     "pass": ok, "reference": res.get("reference"), "versions": res.get("versions", {})}
        log(f"  {peer}: worst relative error {worst:.2e} (bound {tol:g}) {'ok' if ok else 'MISMATCH'}")
    check = {"batch": int(x_check.shape[0]), "tol": CHECK_TOL, "peers": out}
    bad = {p: c for p, c in out.items() if c["status"] == "ok" and not c["pass"]}
    if bad:
        lines = [f"{p}: {k} relative error {v:.3e} > {c['tol']:g}" for p, c in bad.items()
                 for k, v in sorted(c["errors"].items()) if not v <= c["tol"]]
        write_json(Path(tmp) / "check.json", check)
        raise SystemExit("benchmarks: STOP: the peers do not compute the same loss and gradients "
                         "as scratchvae (float64, same parameters and ε):\n  " + "\n  ".join(lines)
                         + "\nFix the mapping (torch weight = W.T, head columns [:20] μ / [20:] logvar) "
                           "before timing anything.")
    return check, params


# -- the sweep --------------------------------------------------------------------------------
def main(argv=None):
    a = parse_args(argv)
    started = _dt.datetime.now(_dt.timezone.utc)
    tmp = Path(tempfile.mkdtemp(prefix="scratchvae-bench-"))
    # SIGTERM unwinds like Ctrl-C: subprocess.run kills the running child, the finally cleans up
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("benchmarks: terminated"))
    try:
        return _main(a, tmp, started)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _main(a, tmp, started):
    env = child_env(a.device)
    children = Children(tmp, env, a.timeout)
    images, data_desc = load_train_images(a.data_dir, allow_embedded=a.smoke)
    log(f"data: {data_desc}")
    batch_files = {}
    for B in a.sizes:
        batch_files[B] = tmp / f"batches-{B}.npy"
        np.save(batch_files[B], make_batches(images, B))
    x_check = make_batches(images, CHECK_BATCH, n_batches=1)[0]

    log("same work (float64, same parameters and ε):")
    check, params64 = same_work(a, children, tmp, x_check)
    params32 = tmp / "params-float32.npz"
    np.savez(params32, **{k: v.astype(np.float32) for k, v in params64.items()})
    active = [p for p in a.peer_list if check["peers"].get(base_peer(p)[0], {}).get("status") == "ok"]

    steps = {B: a.steps or default_steps(a.device, B) for B in a.sizes}
    runs = []
    for rep in range(a.repeats):
        for B in a.sizes:
            for peer in active:
                spec = {"task": "time", "peer": peer, "device": a.device, "batch": B,
                        "batches": str(batch_files[B]), "params": str(params32), "warmup": a.warmup,
                        "steps": steps[B], "floor": peer == FLOOR_PEER[a.device], "precision": a.precision}
                load_before = _loadavg()
                res = children(spec)
                res.update(peer=peer, batch=B, repeat=rep, loadavg_before=load_before,
                           loadavg_after=_loadavg())
                runs.append(res)
                if res["status"] == "ok":
                    fl = f", floor {res['floor_ms']:.2f} ms" if "floor_ms" in res else ""
                    log(f"  run {rep + 1}/{a.repeats} B={B} {peer}: {res['ms_per_step']:.3f} ms/step{fl}")
                else:
                    log(f"  run {rep + 1}/{a.repeats} B={B} {peer}: {res['status']}: {res.get('reason')}")
    base = next((p for p in BASELINES[a.device] if p in active), active[0] if active else None)
    summary = report.summarize(runs, a.sizes, a.peer_list, list(BASELINES[a.device]) + [base],
                               FLOOR_PEER[a.device])
    # peers skipped at the check show as skipped in every table
    for s in summary.values():
        for p, c in check["peers"].items():
            if c["status"] != "ok" and p in s["peers"]:
                s["peers"][p] = {"status": c["status"], "reason": c["reason"]}
    meta = _meta(a, runs, check, data_desc, started, steps)
    doc = {"meta": meta, "check": check, "summary": summary, "runs": runs}
    out_dir = Path(a.out) if a.out else REPO / "benchmarks" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{a.device}{'-smoke' if a.smoke else ''}-{started.strftime('%Y%m%d-%H%M%S')}"
    md = report.markdown(meta, check, summary)
    write_json(out_dir / f"{stem}.json", doc)
    (out_dir / f"{stem}.md").write_text(md)
    print(md)
    log(f"wrote {out_dir / stem}.md and .json")
    return 0


def _settings(runs):
    """peer -> its framework's precision setting, as the peer reported it."""
    return {r["peer"]: r["precision_setting"] for r in runs if r["status"] == "ok" and "precision_setting" in r}


def _range(runs):
    loads = [x for r in runs for x in (r.get("loadavg_before"), r.get("loadavg_after")) if x is not None]
    return f"{min(loads):.1f}–{max(loads):.1f}" if loads else "unknown"


def _loadavg():
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def _meta(a, runs, check, data_desc, started, steps):
    ok = [r for r in runs if r["status"] == "ok"]
    versions = {}
    for c in check["peers"].values():
        versions.update(c.get("versions", {}))
    for r in ok:
        versions.update(r.get("versions", {}))
    # core type and config as this process loads numpy's BLAS; threads as a peer process ran it
    blas_rt = dict(openblas_runtime())
    blas_rt.update(next((r["blas"] for r in ok if r.get("blas")), {"threads": f"{THREADS} (env)"}))
    blas_build = numpy_blas_build()
    gpu = versions.get("gpu")
    names = ("scratchvae", "numpy", "numba", "cupy", "torch", "jax", "jaxlib")
    versions_line = ", ".join(f"{k} {versions[k]}" for k in names if k in versions)
    if "cuda" in versions:
        versions_line += f", torch CUDA {versions['cuda']}"
    if "cuda_runtime" in versions:
        versions_line += f", CUDA runtime (cupy) {versions['cuda_runtime']}"
    blas_line = (f"numpy: {blas_build.get('name', '?')} {blas_build.get('version', '')}, "
                 f"runtime core {blas_rt.get('core', '?')} ({blas_rt.get('config', 'config unknown')}), "
                 f"{blas_rt.get('threads', '?')} threads")
    if "torch_blas" in versions:
        blas_line += f"; torch: {versions['torch_blas']} (CPU capability {versions.get('torch_cpu_capability')})"
    threads_line = (f"OMP/OPENBLAS/MKL_NUM_THREADS={THREADS} in every child; torch.set_num_threads({THREADS})"
                    + (f" (reported {versions['torch_threads']})" if "torch_threads" in versions else "")
                    + "; XLA default threading")
    if a.device == "cpu":
        timing_line = ("CPU wall clock (perf_counter) around the timed loop. scratchvae-numpy, "
                       "scratchvae-numba and torch: eager, the loss is computed within each step and "
                       "stored; JAX: each step's loss is a jit output kept in a list, block_until_ready "
                       "on state and losses after the loop.")
        mem_desc = "ru_maxrss of the peer's process (includes its imports and the 16 preloaded batches)"
        floor_desc = ("numpy.matmul into out= buffers, transposes as views; the dense products: where the "
                      "BLAS runs one thread (the 1x1 and ranked configurations) scratchvae-numba's first layer "
                      "sums only x's nonzero pixels (ops.dense.data_matmul), so its step may take less "
                      "than this floor would say")
    else:
        timing_line = ("device events around the timed loop (cupy.cuda.Event / torch.cuda.Event), one "
                       "synchronize after; no host sync per step (losses copied on device). JAX: "
                       "block_until_ready before and after the loop, wall clock.")
        mem_desc = ("the allocator's high-water mark: cupy pool total_bytes, torch.cuda.max_memory_allocated, "
                    "JAX memory_stats peak_bytes_in_use")
        floor_desc = "cupy.matmul (cuBLAS) into out= buffers, transposes as views"
    floor_desc = next((r["floor_path"] for r in ok if "floor_path" in r), floor_desc)
    floor_desc += f"; same threads, timed in {FLOOR_PEER[a.device]}'s process like its step"
    installed = [f"{k} {versions[k]}" for k in ("torch", "jax", "jaxlib") if k in versions]
    cmd = " ".join(["python -m benchmarks.run"] + [shlex.quote(s) for s in a.argv])
    return {
        "device": a.device, "date": started.strftime("%Y-%m-%d %H:%M UTC"), "command": cmd,
        "cpu_model": cpu_model(), "cpu_count": os.cpu_count(), "platform": platform.platform(),
        "python": platform.python_version(), "gpu": gpu, "versions": versions,
        "versions_line": versions_line, "bench_pins": bench_pins(), "installed_line": ", ".join(installed),
        "blas_build": blas_build, "blas_runtime": blas_rt, "blas_line": blas_line,
        "threads_line": threads_line, "repeats": a.repeats, "warmup": a.warmup,
        "steps": {str(B): s for B, s in steps.items()}, "n_batches": N_BATCHES, "data": data_desc,
        "precision": a.precision, "precision_settings": _settings(runs),
        "timing_line": timing_line, "mem_desc": mem_desc, "floor_desc": floor_desc,
        "baseline_desc": " if it ran, else ".join(BASELINES[a.device]) + "; each table names the one used",
        "peers": a.peer_list, "smoke": a.smoke,
        "loadavg_1min": [r.get("loadavg_before") for r in runs] + [_loadavg()],
        "noise_note": (f"1-minute load average during the sweep {_range(runs)} on {os.cpu_count()} "
                       "CPUs (the benchmark itself adds about 2): above that, other processes ran beside it "
                       "and the times are noisy; compare ratios within a sweep, and read the min–max spread")
        if a.device == "cpu" else None,
    }


if __name__ == "__main__":
    sys.exit(main())
