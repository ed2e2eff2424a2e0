"""The benchmark harness's --smoke run (scratchvae-numpy only; no torch or JAX needed).

Checks the structure of what it writes, never its timings (speed lives in benchmarks/).
"""

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # benchmarks/ is a folder of the repository, not an installed package
    sys.path.insert(0, str(REPO))


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    proc = subprocess.run([sys.executable, "-m", "benchmarks.run", "--smoke", "--out", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    (js,) = out.glob("cpu-smoke-*.json")
    (md,) = out.glob("cpu-smoke-*.md")
    return json.loads(js.read_text()), md.read_text(), proc


def test_smoke_json_has_the_table_fields(smoke):
    doc, _, _ = smoke
    meta = doc["meta"]
    for key in ("device", "date", "command", "cpu_model", "versions", "bench_pins", "blas_line",
                "threads_line", "repeats", "warmup", "steps", "data"):
        assert key in meta, key
    assert meta["smoke"] is True and meta["peers"] == ["scratchvae-numpy"]
    assert "numpy" in meta["versions"] and "scratchvae" in meta["versions"]
    (size,) = doc["summary"]
    s = doc["summary"][size]
    assert s["baseline"] == "scratchvae-numpy"
    assert isinstance(s["floor_ms"], float) and len(s["floor_runs"]) == meta["repeats"]
    row = s["peers"]["scratchvae-numpy"]
    assert row["status"] == "ok" and row["all_finite"]
    for key in ("median_ms", "min_ms", "max_ms", "samples_per_s", "ratio_median", "efficiency",
                "epoch_s", "peak_mem_bytes"):
        assert isinstance(row[key], (int, float)), key
    assert row["peak_mem_kind"] == "ru_maxrss"
    assert row["ratio_runs"] == [1.0] and row["ms_per_step"] and len(row["ms_per_step"]) == 1
    (run,) = doc["runs"]
    assert run["peer"] == "scratchvae-numpy" and run["dtype"] == "float32"
    assert run["steps"] == 5 and run["warmup"] == 3 and run["batch"] == int(size)
    assert run["threads"]["OPENBLAS_NUM_THREADS"] == "2"


def test_smoke_names_each_peers_precision(smoke):
    doc, md, _ = smoke
    assert doc["meta"]["precision"] == "fp32"
    assert doc["meta"]["precision_settings"] == {"scratchvae-numpy": "VAE(precision='fp32')"}
    assert "**Precision fp32**, each peer's own setting: scratchvae-numpy: VAE(precision='fp32')" in md


def test_the_precision_option_and_the_torch_graph_peer_on_a_cpu():
    from benchmarks import run
    from benchmarks.common import Skip
    from benchmarks.peers import peers_for, torch_peer

    assert run.parse_args(["--precision", "bf16"]).precision == "bf16"
    assert run.parse_args(["--device", "gpu", "--tf32"]).precision == "tf32"
    with pytest.raises(SystemExit):
        run.parse_args(["--precision", "tf32"])                  # a GPU setting
    assert "torch-graph" in peers_for("cpu") and "torch-graph" in peers_for("gpu")
    for task in (torch_peer.check, torch_peer.time_peer):
        with pytest.raises(Skip, match=r"torch-graph needs CUDA \(torch.cuda.graph captures CUDA work only\)"):
            task({"peer": "torch-graph", "device": "cpu"})


def test_smoke_same_work_check_ran(smoke):
    doc, _, _ = smoke
    c = doc["check"]["peers"]["scratchvae-numpy"]
    assert c["status"] == "ok" and c["pass"] and c["dtype"] == "float64"
    assert set(c["errors"]) == {"loss", "enc.0.W", "enc.0.b", "enc.head.W", "enc.head.b",
                                "dec.0.W", "dec.0.b", "dec.out.W", "dec.out.b"}


def test_smoke_markdown_has_the_sections(smoke):
    doc, md, proc = smoke
    size = next(iter(doc["summary"]))
    assert md.startswith("# scratchvae benchmark: CPU")
    assert f"## batch {size}" in md and "GEMM floor:" in md and "## Same work" in md
    assert "> 1 means scratchvae is faster" in md
    assert "| scratchvae-numpy |" in md
    header = next(ln for ln in md.splitlines() if ln.startswith("| peer | ms/step"))
    for col in ("min–max", "samples/s", "ratio per run", "ratio (median)", "floor/step", "s/epoch",
                "peak mem"):
        assert col in header
    assert md in proc.stdout


def test_same_work_stops_on_a_mismatch(tmp_path):
    """A peer whose gradient differs by 1e-6 relative stops the harness with a clear message."""
    from benchmarks import run
    from benchmarks.peers import scratchvae_peer

    def children(spec):
        real = dict(spec, peer="scratchvae-numpy")
        res = scratchvae_peer.check(real)
        if spec["peer"] != "scratchvae-numpy":
            z = dict(np.load(spec["grads_out"]))
            z["grad/dec.out.W"] = z["grad/dec.out.W"] * (1 + 1e-6)
            np.savez(spec["grads_out"], **z)
        return res

    x = np.random.default_rng(0).uniform(size=(8, 784))
    a = argparse.Namespace(peer_list=["scratchvae-numpy", "jax-jit"], device="cpu")
    with pytest.raises(SystemExit) as e:
        run.same_work(a, children, tmp_path, x)
    msg = str(e.value)
    assert "STOP" in msg and "jax-jit: dec.out.W relative error 1.000e-06 > 1e-10" in msg
