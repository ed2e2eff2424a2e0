"""What every benchmark process shares: the model's sizes, thread pinning, data, system facts.

The parent (:mod:`benchmarks.run`) and every child (:mod:`benchmarks.worker`) import this
module; it imports only the standard library and NumPy, so it never pulls in a peer's
framework by accident.
"""

from __future__ import annotations

import ctypes
import json
import os
import platform
import re
import resource
import sys
from pathlib import Path

import numpy as np

#: The model every peer runs: 784-400-20-400-784, ReLU, Bernoulli on logits, summed loss.
D, H, L = 784, 400, 20
LR = 1e-3
BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8
#: Preloaded batches per batch size; each timed step takes the next one (wrapping).
N_BATCHES = 16
#: numpy's BLAS and PyTorch run on this many threads (XLA keeps its default).
THREADS = 2
#: The variables that set them, in every child (a peer on ranks: its own count per rank).
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
#: Relative error (norm-wise, per array) the same-work check allows in float64.
CHECK_TOL = 1e-10
#: scratchvae's parameter names, shapes (fan_in, fan_out) and the torch/JAX mapping.
PARAM_SHAPES = {
    "enc.0.W": (D, H), "enc.0.b": (H,),
    "enc.head.W": (H, 2 * L), "enc.head.b": (2 * L,),
    "dec.0.W": (L, H), "dec.0.b": (H,),
    "dec.out.W": (H, D), "dec.out.b": (D,),
}
REPO = Path(__file__).resolve().parents[1]
#: The environment variable naming a folder with the four MNIST IDX files.
MNIST_ENV = "SCRATCHVAE_MNIST_DIR"


class Skip(Exception):
    """A peer cannot run here (framework missing, no GPU, compile failed): one line why."""


# -- the child's environment ----------------------------------------------------------------
def child_env(device: str) -> dict:
    """The environment every peer process starts with: 2 BLAS/OpenMP threads, CuPy's own matmul
    in FP32 (each peer sets its precision itself, from the spec's ``precision``)."""
    env = dict(os.environ)
    for k in THREAD_VARS:
        env[k] = str(THREADS)
    env.pop("CUPY_TF32", None)
    if device == "cpu":
        env["JAX_PLATFORMS"] = "cpu"          # a CPU run on a GPU machine stays on the CPU
        env["CUDA_VISIBLE_DEVICES"] = ""
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env


# -- data -------------------------------------------------------------------------------------
def mnist_source(data_dir=None):
    """Where full MNIST comes from: ``(folder, shown)``.

    ``data_dir`` (``--data-dir``) when given, else ``$SCRATCHVAE_MNIST_DIR``; ``folder`` is then
    that path and ``shown`` how the results record it (the path as given, or the variable's
    name, so a recorded table names no folder of the machine it ran on). Neither set:
    ``(None, None)``, and :func:`scratchvae.data.load_dataset` looks in scratchvae's cache,
    downloading the files with SHA-256 checks when they are absent.
    """
    if data_dir:
        return Path(data_dir).expanduser(), str(data_dir)
    env = os.environ.get(MNIST_ENV)
    if env:
        return Path(env).expanduser(), f"${MNIST_ENV}"
    return None, None


def load_mnist(data_dir=None):
    """``(train, test, shown)``: full MNIST from :func:`mnist_source`'s folder or the cache.

    ``shown`` names the source for the results (see :func:`mnist_source`). A folder without
    the four IDX files, or a download that fails or is switched off, ends the process with
    one line saying what to pass.
    """
    from scratchvae.data import load_dataset
    from scratchvae.errors import ScratchVAEError

    folder, shown = mnist_source(data_dir)
    if folder is None:
        print(f"benchmarks: no --data-dir or ${MNIST_ENV}: MNIST from scratchvae's cache "
              f"(downloaded with SHA-256 checks if absent)", file=sys.stderr, flush=True)
    try:
        train, test = load_dataset("mnist", data_dir=folder)
    except ScratchVAEError as err:
        raise SystemExit(f"benchmarks: full MNIST is needed (--data-dir DIR or {MNIST_ENV}=DIR, "
                         f"DIR a folder holding the four IDX files; else scratchvae's cache): {err}") from None
    return train, test, shown or "scratchvae's MNIST cache"


def load_train_images(data_dir=None, allow_embedded=False):
    """MNIST training images (N, 784) uint8 and a description of where they came from.

    From ``data_dir``, else ``$SCRATCHVAE_MNIST_DIR``, else scratchvae's cache (see
    :func:`load_mnist`). With ``allow_embedded`` (``--smoke`` only) and neither folder given,
    the packaged 6k subset stands in: no cache, no network.
    """
    from scratchvae.data import load_dataset

    if allow_embedded and mnist_source(data_dir)[0] is None:
        train, _ = load_dataset("embedded")
        return train.images, (f"embedded MNIST subset ({len(train)} images; no --data-dir or "
                              f"${MNIST_ENV} given)")
    train, _, shown = load_mnist(data_dir)
    return train.images, f"MNIST train ({len(train)} images, {shown})"


def make_batches(images, batch, seed=0, n_batches=N_BATCHES):
    """``n_batches`` batches (n_batches, batch, 784) float32 in [0, 1]: one fixed permutation,
    wrapped if the set is smaller than n_batches × batch. The same for every peer."""
    perm = np.random.default_rng(seed).permutation(len(images))
    idx = np.resize(perm, n_batches * batch)
    x = images[idx].astype(np.float32)
    x /= np.float32(255)
    return np.ascontiguousarray(x.reshape(n_batches, batch, D))


# -- measurements -----------------------------------------------------------------------------
def rel_err(a, ref) -> float:
    """‖a − ref‖ / ‖ref‖ over the whole array (float64); inf if shapes differ, nan passes never."""
    a = np.asarray(a, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    if a.shape != ref.shape:
        return float("inf")
    den = np.linalg.norm(ref)
    num = np.linalg.norm(a - ref)
    if not np.isfinite(num):
        return float("inf")
    return float(num / den) if den > 0 else float(num)


def peak_rss_bytes() -> int:
    """This process's peak resident set (``ru_maxrss``; kilobytes on Linux, bytes on macOS)."""
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(r) if sys.platform == "darwin" else int(r) * 1024


def openblas_runtime() -> dict:
    """numpy's OpenBLAS as loaded in this process: config string, core type, threads."""
    out = {}
    try:
        libs = sorted({ln.split()[-1] for ln in open("/proc/self/maps") if "openblas" in ln.lower()
                       and ln.split()[-1].startswith("/")})
    except OSError:
        libs = []
    for path in libs:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for prefix, suffix in (("scipy_", "64_"), ("", "64_"), ("scipy_", ""), ("", "")):
            try:
                core = getattr(lib, f"{prefix}openblas_get_corename{suffix}")
                conf = getattr(lib, f"{prefix}openblas_get_config{suffix}")
                nthr = getattr(lib, f"{prefix}openblas_get_num_threads{suffix}")
            except AttributeError:
                continue
            core.restype = conf.restype = ctypes.c_char_p
            out = {"library": Path(path).name, "core": core().decode(), "config": conf().decode(),
                   "threads": int(nthr())}
            break
        if out:
            break
    try:  # threadpoolctl, where installed, sees every BLAS/OpenMP pool in the process
        import threadpoolctl

        out["threadpoolctl"] = [{k: v for k, v in d.items() if k in
                                 ("internal_api", "num_threads", "version", "architecture", "prefix")}
                                for d in threadpoolctl.threadpool_info()]
    except ImportError:
        pass
    return out


def numpy_blas_build() -> dict:
    """numpy.show_config's BLAS entry (name, version, configuration)."""
    try:
        cfg = np.show_config(mode="dicts")
        return dict(cfg.get("Build Dependencies", {}).get("blas", {}))
    except Exception:  # pragma: no cover - very old numpy
        return {}


def cpu_model() -> str:
    try:
        for ln in open("/proc/cpuinfo"):
            if ln.startswith("model name"):
                return ln.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def thread_env() -> dict:
    return {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                           "MKL_NUM_THREADS", "CUPY_TF32", "JAX_PLATFORMS")
            if os.environ.get(k) is not None}


def bench_pins() -> list[str]:
    """The ``bench`` extra's requirement lines in setup.cfg (printed beside installed versions)."""
    try:
        text = (REPO / "setup.cfg").read_text()
    except OSError:
        return []
    m = re.search(r"^bench\s*=\s*\n((?:[ \t]+\S.*\n?)+)", text, flags=re.M)
    return [ln.strip() for ln in m.group(1).splitlines() if ln.strip()] if m else []


def write_json(path, obj):
    tmp = Path(str(path) + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=_jsonable) + "\n")
    os.replace(tmp, path)


def _jsonable(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def steps_summary(losses) -> dict:
    """First/last loss per sample of a timed run, and that every step's loss was finite."""
    losses = np.asarray(losses, dtype=np.float64)
    return {"loss_first": float(losses[0]), "loss_last": float(losses[-1]),
            "all_finite": bool(np.isfinite(losses).all())}
