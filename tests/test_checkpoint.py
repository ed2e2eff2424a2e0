"""Checkpoint files: round trip, refusal of every kind of bad file, atomic writes, run dirs."""

import errno
import io
import os
import subprocess
import sys
import tempfile
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scratchvae import checkpoint as ckpt
from scratchvae.checkpoint import (
    FORMAT_VERSION,
    checkpoint_name,
    config_differences,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)
from scratchvae.errors import CheckpointError

REPO = Path(__file__).resolve().parents[1]


def _arrays():
    rng = np.random.default_rng(0)
    return {
        "enc.W": rng.standard_normal((5, 3)).astype(np.float32),
        "enc.b": rng.standard_normal(3),  # float64
        "counts": np.arange(7, dtype=np.uint32),
        "step": np.array(12345678901, dtype=np.int64),  # 0-d
        "mask": np.array([True, False]),
        "fortran": np.asfortranarray(np.arange(6.0).reshape(2, 3)),
        "empty": np.zeros((0, 4), dtype=np.float32),
    }


META = {"epoch": 3, "config": {"latent": 20, "hidden": [400], "optim": {"lr": 1e-3}}, "note": "ü"}


def _assert_same(got, want):
    assert got.keys() == want.keys()
    for name in want:
        assert got[name].dtype == want[name].dtype, name
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)


# ---------------------------------------------------------------------------- round trip

def test_round_trip(tmp_path):
    arrays = _arrays()
    path = save_checkpoint(tmp_path / "c.npz", arrays, META)
    assert path == tmp_path / "c.npz"
    got, meta = load_checkpoint(path)
    _assert_same(got, arrays)
    assert meta == META
    assert got["fortran"].flags.f_contiguous
    assert sorted(os.listdir(tmp_path)) == ["c.npz"]  # no temp left


def test_plain_numpy_can_read_it(tmp_path):
    arrays = _arrays()
    path = save_checkpoint(tmp_path / "c.npz", arrays, META)
    with np.load(path, allow_pickle=False) as npz:
        plain = {k: npz[k] for k in npz.files}
    import json

    assert json.loads(str(plain.pop("__meta__")[()])) == {"format_version": FORMAT_VERSION, **META}
    _assert_same(plain, arrays)


def test_names_that_clash_with_np_savez_keywords(tmp_path):
    arrays = {"file": np.ones(2), "allow_pickle": np.zeros(3)}
    got, _ = load_checkpoint(save_checkpoint(tmp_path / "c.npz", arrays, {}))
    _assert_same(got, arrays)


def test_expected_passes_when_everything_matches(tmp_path):
    path = save_checkpoint(tmp_path / "c.npz", _arrays(), META)
    got, _ = load_checkpoint(path, expected={"enc.W": ((5, 3), "float32"), "counts": ([7], "<u4")})
    assert got["enc.W"].shape == (5, 3)


# ---------------------------------------------------------------------------- refusing bad input to save

class FakeCupyArray:
    """Quacks like a cupy array: shape, dtype, __array__ — but lives on the 'device'."""

    __module__ = "cupy"
    shape, dtype = (2,), np.dtype(np.float32)

    def __array__(self, dtype=None, copy=None):
        return np.zeros(2, np.float32)


@pytest.mark.parametrize(
    "arrays, words",
    [
        ({"W": FakeCupyArray()}, ["cupy", "convert", "host"]),
        ({"W": [1.0, 2.0]}, ["numpy array", "list"]),
        ({"W": np.array([{}], dtype=object)}, ["numeric dtype", "object"]),
        ({"W": np.array(["a"])}, ["numeric dtype"]),
        ({"__meta__": np.ones(1)}, ["reserved"]),
        ({"__x": np.ones(1)}, ["reserved"]),
        ({"": np.ones(1)}, ["non-empty"]),
    ],
)
def test_save_refuses_bad_arrays(tmp_path, arrays, words):
    with pytest.raises(CheckpointError) as info:
        save_checkpoint(tmp_path / "c.npz", arrays, {})
    for word in words:
        assert word in str(info.value)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(
    "meta, word", [({"x": object()}, "JSON"), ({"format_version": 2}, "reserved"), ([], "dict")]
)
def test_save_refuses_bad_meta(tmp_path, meta, word):
    with pytest.raises(CheckpointError, match=word):
        save_checkpoint(tmp_path / "c.npz", {"a": np.ones(1)}, meta)
    assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------------------- refusing bad files

class MakesMarker:
    """Unpickling this creates a file: proof that something was unpickled."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_refuses_pickled_objects_without_unpickling(tmp_path):
    # The payload works: loading it with pickle allowed does create its marker.
    proof = tmp_path / "proof"
    np.savez(tmp_path / "proof.npz", a=np.array([MakesMarker(proof)], dtype=object))
    with np.load(tmp_path / "proof.npz", allow_pickle=True) as npz:
        npz["a"][0].close()
    assert proof.exists()

    marker = tmp_path / "marker"
    meta = np.array('{"format_version": 1}')
    np.savez(tmp_path / "evil.npz", __meta__=meta, a=np.array([MakesMarker(marker)], dtype=object))
    with pytest.raises(CheckpointError, match="pickled Python objects"):
        load_checkpoint(tmp_path / "evil.npz")
    assert not marker.exists()

    np.savez(tmp_path / "dict.npz", __meta__=meta, a=np.array([{}], dtype=object))
    with pytest.raises(CheckpointError, match="'a' holds pickled"):
        load_checkpoint(tmp_path / "dict.npz")


def test_expected_reports_every_problem_at_once(tmp_path):
    path = save_checkpoint(tmp_path / "c.npz", _arrays(), META)
    expected = {
        "enc.W": ((3, 5), "float32"),  # wrong shape
        "enc.b": ((3,), "float32"),  # wrong dtype
        "counts": ((7,), "uint32"),  # fine
        "dec.W": ((3, 5), "float32"),  # missing
        "dec.b": ((5,), "float32"),  # missing
    }
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path, expected=expected)
    msg = str(info.value)
    assert "missing arrays: dec.W, dec.b" in msg
    assert "enc.W: expected shape (3, 5) float32, got (5, 3) float32" in msg
    assert "enc.b: expected shape (3,) float32, got (3,) float64" in msg
    assert "counts" not in msg


def _write_raw(path, **entries):
    np.savez(path, **entries)
    return path


@pytest.mark.parametrize(
    "meta_text, words",
    [
        ('{"format_version": 2, "epoch": 1}', ["newer scratchvae", "format 2 > 1"]),
        ('{"epoch": 1}', ["no format_version"]),
        ('{"format_version": "1"}', ["unknown format_version"]),
        ('{"format_version": 0}', ["unknown format_version"]),
        ('{"format_version": true}', ["unknown format_version"]),
        ("{not json", ["not valid JSON"]),
        ("[1, 2]", ["JSON object"]),
    ],
)
def test_refuses_bad_metadata(tmp_path, meta_text, words):
    path = _write_raw(tmp_path / "c.npz", __meta__=np.array(meta_text), a=np.ones(2))
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    for word in words:
        assert word in str(info.value)
    assert str(path) in str(info.value)


def test_refuses_missing_meta_and_non_numeric_entries(tmp_path):
    with pytest.raises(CheckpointError, match="no __meta__"):
        load_checkpoint(_write_raw(tmp_path / "a.npz", a=np.ones(2)))
    meta = np.array('{"format_version": 1}')
    with pytest.raises(CheckpointError, match="non-numeric"):
        load_checkpoint(_write_raw(tmp_path / "b.npz", __meta__=meta, s=np.array(["x"])))
    with pytest.raises(CheckpointError, match="0-d string"):
        load_checkpoint(_write_raw(tmp_path / "c.npz", __meta__=np.ones(1)))


def test_refuses_missing_empty_and_foreign_files(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.npz")
    (tmp_path / "empty.npz").write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        load_checkpoint(tmp_path / "empty.npz")
    np.save(tmp_path / "single.npy", np.ones(3))
    with pytest.raises(CheckpointError, match="not an .npz"):
        load_checkpoint(tmp_path / "single.npy")
    (tmp_path / "random.npz").write_bytes(np.random.default_rng(1).bytes(5000))
    with pytest.raises(CheckpointError, match="not an .npz"):
        load_checkpoint(tmp_path / "random.npz")
    with pytest.raises(CheckpointError, match="is a folder, not an .npz file"):
        load_checkpoint(tmp_path)


def test_refuses_every_truncation(tmp_path):
    good = save_checkpoint(tmp_path / "good.npz", _arrays(), META).read_bytes()
    cut = tmp_path / "cut.npz"
    lengths = sorted(set(range(1, len(good), 37)) | {len(good) - 1, len(good) - 22, 4, 30})
    for n in lengths:
        cut.write_bytes(good[:n])
        with pytest.raises(CheckpointError, match=r"damaged or truncated|not an \.npz"):
            load_checkpoint(cut)


def test_refuses_entry_header_that_lies_about_its_size(tmp_path):
    # A header claiming 8 TB of float64 (with a valid CRC) must be refused before numpy
    # tries to allocate memory for it.
    entry = io.BytesIO()
    header = {"descr": "<f8", "fortran_order": False, "shape": (10**12,)}
    np.lib.format.write_array_header_1_0(entry, header)
    entry.write(np.ones(3).tobytes())
    meta = io.BytesIO()
    np.lib.format.write_array(meta, np.array('{"format_version": 1}'))
    path = tmp_path / "liar.npz"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("__meta__.npy", meta.getvalue())
        zf.writestr("a.npy", entry.getvalue())
    with pytest.raises(CheckpointError, match=r"\(1000000000000,\) float64 does not match its size"):
        load_checkpoint(path)


# ---------------------------------------------------------------------------- fuzz

@pytest.fixture(scope="module")
def valid_bytes():
    with tempfile.TemporaryDirectory() as d:
        arrays = {"W": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.arange(3, dtype=np.int64)}
        return save_checkpoint(Path(d) / "c.npz", arrays, {"epoch": 1}).read_bytes()


@pytest.fixture(scope="module")
def fuzz_path():
    with tempfile.TemporaryDirectory() as d:
        yield Path(d) / "fuzz.npz"


def _mutations(good):
    n = len(good)
    flip = st.tuples(st.integers(0, n - 1), st.integers(1, 255)).map(
        lambda t: good[: t[0]] + bytes([good[t[0]] ^ t[1]]) + good[t[0] + 1 :]
    )
    truncate = st.integers(0, n - 1).map(lambda k: good[:k])
    insert = st.tuples(st.integers(0, n), st.binary(min_size=1, max_size=16)).map(
        lambda t: good[: t[0]] + t[1] + good[t[0] :]
    )
    multi_flip = st.lists(st.tuples(st.integers(0, n - 1), st.integers(1, 255)), min_size=2, max_size=8).map(
        lambda flips: _apply_flips(good, flips)
    )
    return st.one_of(st.binary(max_size=600), st.just(good), flip, truncate, insert, multi_flip)


def _apply_flips(good, flips):
    b = bytearray(good)
    for i, x in flips:
        b[i] ^= x
    return bytes(b)


@settings(derandomize=True, deadline=None, max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_fuzz_load_either_loads_or_raises_checkpoint_error(valid_bytes, fuzz_path, data):
    blob = data.draw(_mutations(valid_bytes))
    fuzz_path.write_bytes(blob)
    try:
        arrays, meta = load_checkpoint(fuzz_path)
    except CheckpointError:
        return
    assert all(isinstance(a, np.ndarray) for a in arrays.values())
    assert isinstance(meta, dict)


# ---------------------------------------------------------------------------- atomicity

def _fail_after_first_array(monkeypatch):
    real = np.lib.format.write_array
    calls = []

    def write_array(fp, array, *args, **kwargs):
        if calls:
            raise OSError(errno.ENOSPC, "No space left on device")
        calls.append(1)
        return real(fp, array, *args, **kwargs)

    monkeypatch.setattr(np.lib.format, "write_array", write_array)


def _fail_fsync(monkeypatch):
    def fsync(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt.os, "fsync", fsync)


@pytest.mark.parametrize("break_it", [_fail_after_first_array, _fail_fsync])
def test_failed_write_keeps_previous_checkpoint(tmp_path, monkeypatch, break_it):
    path = save_checkpoint(tmp_path / "epoch-0001.npz", {"a": np.ones(3)}, {"epoch": 1})
    before = path.read_bytes()
    break_it(monkeypatch)
    with pytest.raises(CheckpointError) as info:
        save_checkpoint(path, {"a": np.zeros(3), "b": np.ones(2)}, {"epoch": 2})
    assert str(path) in str(info.value) and "No space left" in str(info.value)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["epoch-0001.npz"]


_CRASH_SCRIPT = textwrap.dedent(
    """
    import os, sys
    import numpy as np
    from scratchvae.checkpoint import save_checkpoint
    path, fault = sys.argv[1], sys.argv[2]
    save_checkpoint(path, {"a": np.ones(3)}, {"epoch": 1})
    os.environ["SCRATCHVAE_FAULT"] = fault
    save_checkpoint(path, {"a": np.zeros(3)}, {"epoch": 2})
    print("survived")
    """
)


@pytest.mark.parametrize("fault", ["after-temp-write", "before-rename"])
def test_sigkill_mid_save_keeps_previous_checkpoint(tmp_path, fault):
    path = tmp_path / "epoch-0001.npz"
    env = {k: v for k, v in os.environ.items() if k != "SCRATCHVAE_FAULT"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    proc = subprocess.run(
        [sys.executable, "-c", _CRASH_SCRIPT, str(path), fault],
        env=env, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == -9, proc.stderr
    assert "survived" not in proc.stdout
    arrays, meta = load_checkpoint(path)
    np.testing.assert_array_equal(arrays["a"], np.ones(3))
    assert meta == {"epoch": 1}
    # The crash leaves its complete temp file behind; run-directory listing ignores it.
    temps = [p.name for p in tmp_path.iterdir() if p.name != path.name]
    assert len(temps) == 1 and temps[0].startswith(".epoch-0001.npz.tmp-")
    assert list_checkpoints(tmp_path) == [path]


def test_mid_epoch_fault(monkeypatch):
    from scratchvae import faults

    killed = []
    monkeypatch.setattr(faults, "_die", lambda: killed.append(True))
    monkeypatch.setenv("SCRATCHVAE_FAULT", "mid-epoch:7")
    faults.mid_epoch_step(6)
    faults.point("before-rename")
    assert killed == []
    faults.mid_epoch_step(7)
    assert killed == [True]
    monkeypatch.setenv("SCRATCHVAE_FAULT", "mid-epoch:x")
    with pytest.raises(ValueError, match="mid-epoch:N"):
        faults.mid_epoch_step(7)


# ---------------------------------------------------------------------------- config

def test_config_differences():
    saved = {"latent": 20, "hidden": [400], "optim": {"lr": 1e-3, "beta1": 0.9}, "act": "relu",
             "bn": True}
    current = {"latent": 10, "hidden": (400,), "optim": {"lr": 1e-3, "beta1": 0.8}, "act": "relu",
               "bn": 1, "new": None}
    assert config_differences(saved, current) == [
        "bn: checkpoint has true, model has 1",
        "latent: checkpoint has 20, model has 10",
        "new: checkpoint has nothing, model has null",
        "optim.beta1: checkpoint has 0.9, model has 0.8",
    ]
    assert config_differences(saved, dict(saved)) == []
    assert config_differences({"lr": 1}, {"lr": 1.0}) == []
    assert config_differences({"x": float("nan")}, {"x": float("nan")}) == []


# ---------------------------------------------------------------------------- run directories

def test_checkpoint_name():
    assert checkpoint_name(3) == "epoch-0003.npz"
    assert checkpoint_name(3, 120) == "epoch-0003-batch-000120.npz"
    assert checkpoint_name(12345) == "epoch-12345.npz"
    for bad in [(-1, None), (1.0, None), (True, None), (1, -5)]:
        with pytest.raises(CheckpointError):
            checkpoint_name(*bad)


def test_list_and_latest_ordering(tmp_path):
    for epoch, batch in [(10, None), (2, None), (4, 120), (3, None), (4, 30), (1, 500), (1, None)]:
        (tmp_path / checkpoint_name(epoch, batch)).write_bytes(b"x")
    for junk in [".epoch-0005.npz.tmp-123", "epoch-0005.npz.tmp-9", "epoch-5.npz", "epoch-00003.npz",
                 "notes.txt", "epoch-0006.npy"]:
        (tmp_path / junk).write_bytes(b"x")
    (tmp_path / "epoch-0007.npz").mkdir()
    names = [p.name for p in list_checkpoints(tmp_path)]
    assert names == [
        "epoch-0001-batch-000500.npz", "epoch-0001.npz", "epoch-0002.npz", "epoch-0003.npz",
        "epoch-0004-batch-000030.npz", "epoch-0004-batch-000120.npz", "epoch-0010.npz",
    ]
    assert latest_checkpoint(tmp_path) == tmp_path / "epoch-0010.npz"
    assert latest_checkpoint(tmp_path, epoch=3) == tmp_path / "epoch-0003.npz"
    with pytest.raises(CheckpointError, match=r"epoch 4 .*available epochs: 1, 2, 3, 10"):
        latest_checkpoint(tmp_path, epoch=4)
    (tmp_path / "epoch-0010.npz").unlink()
    assert latest_checkpoint(tmp_path) == tmp_path / "epoch-0004-batch-000120.npz"


def test_latest_with_no_checkpoints(tmp_path):
    assert list_checkpoints(tmp_path / "missing") == []
    with pytest.raises(CheckpointError, match="no checkpoints in"):
        latest_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match="no checkpoints in"):
        latest_checkpoint(tmp_path / "missing", epoch=1)
