"""Bad input to the model, fit, run directories and the CLI: one clear error, nothing lost.

File formats (IDX, downloads, checkpoint bytes) are attacked in test_idx.py,
test_download.py, test_datasets.py and test_checkpoint.py; here they are reached through
``fit``, ``load_run`` and the ``scratchvae`` command. Everything is tiny (D = 10 for the
library, hidden 8 / latent 2 on the embedded data for the CLI).
"""

import errno
import json
import shutil
import types
from pathlib import Path

import numpy as np
import pytest

from scratchvae import VAE
from scratchvae import checkpoint as ckpt
from scratchvae.checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint, save_checkpoint
from scratchvae.cli import main
from scratchvae.errors import BackendError, CheckpointError, InputError, NonFiniteError
from scratchvae.train import TrainConfig, fit, load_run, resume

D = 10
TINY = ["--hidden", "8", "--latent", "2", "--batch-size", "100", "--quiet"]


def data(n=40, seed=0, dtype=np.float32):
    return np.random.default_rng(seed).random((n, D)).astype(dtype)


def model(**kw):
    return VAE(**{"input_dim": D, "hidden": (4,), "latent": 2, "seed": 1, **kw})


def cfg(**kw):
    return TrainConfig(**{"epochs": 1, "batch_size": 8, **kw})


def one_line_error(capsys, rc):
    """The CLI's contract: exit status 2, exactly one stderr line 'scratchvae: error: ...'."""
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert rc == 2, (rc, err)
    assert len(lines) == 1 and lines[0].startswith("scratchvae: error:"), err
    assert "Traceback" not in err
    return lines[0]


def run_main(argv):
    try:
        return main(argv)
    except SystemExit as e:   # argparse
        return e.code


# ------------------------------------------------------------------------ arrays into fit
def test_fit_refuses_nonfinite_naming_count_and_first_index():
    x = data()
    x[3, 5], x[7, 1], x[30, 0] = np.nan, np.inf, -np.inf
    with pytest.raises(InputError, match=r"train holds 3 non-finite values .* first at index \(3, 5\)"):
        fit(model(), x, config=cfg())
    t = data(10)
    t[2, 9] = np.nan
    with pytest.raises(InputError, match=r"test holds 1 non-finite .* \(2, 9\)"):
        fit(model(), data(), t, config=cfg())
    big = data().astype(np.float64)
    big[1, 2] = 1e300   # finite, but not in float32
    with pytest.raises(InputError, match=r"1 non-finite .* after conversion to float32; .* \(1, 2\)"):
        fit(model(), big, config=cfg())


@pytest.mark.parametrize("shape, words", [
    ((40, 2, 5), r"train must have shape \(N, 10\), got \(40, 2, 5\)"),
    ((40, 11), r"got \(40, 11\)"),
    ((10,), r"got \(10,\)"),
    ((0, 10), "train is empty"),
])
def test_fit_refuses_wrong_shapes_and_empty(shape, words):
    with pytest.raises(InputError, match=words):
        fit(model(), np.zeros(shape, np.float32), config=cfg())


def test_fit_refuses_batch_larger_than_data_and_odd_dtypes():
    with pytest.raises(InputError, match=r"batch_size \(41\) is larger than the training set \(40 images\)"):
        fit(model(), data(), config=cfg(batch_size=41))
    for bad in (data() > 0.5, data().astype(np.complex64), data().astype(object)):
        with pytest.raises(InputError, match="must hold numbers"):
            fit(model(), bad, config=cfg())
    with pytest.raises(InputError, match="got list"):
        fit(model(), data().tolist(), config=cfg())


def test_uint8_is_divided_by_255_the_stated_rule():
    u8 = (data() * 255).astype(np.uint8)
    a, b = model(), model()
    ha = fit(a, u8, config=cfg(epochs=2))
    hb = fit(b, u8.astype(np.float32) / np.float32(255), config=cfg(epochs=2))
    assert np.array_equal(a.theta, b.theta)
    assert [r["train_loss"] for r in ha] == [r["train_loss"] for r in hb]
    with pytest.raises(InputError, match=r"integer images must be in 0..255 .* got values in 300..300"):
        fit(model(), np.full((40, D), 300, np.int16), config=cfg())


def test_bernoulli_needs_values_in_unit_interval_gaussian_does_not():
    x = data() * 2 - 0.5
    with pytest.raises(InputError, match=r"Bernoulli likelihood needs pixel values in \[0, 1\].*gaussian"):
        fit(model(), x, config=cfg())
    hist = fit(model(likelihood="gaussian"), x, config=cfg())
    assert np.isfinite(hist[0]["train_loss"])


def test_fortran_float64_and_strided_arrays_train_like_c_float32():
    x = data()
    ref = model()
    fit(ref, x, config=cfg(epochs=2))
    f64 = np.asfortranarray(x.astype(np.float64))
    assert not f64.flags.c_contiguous
    m = model()
    fit(m, f64, config=cfg(epochs=2))
    assert np.array_equal(m.theta, ref.theta)
    wide = np.zeros((40, 2 * D), np.float32)
    wide[:, ::2] = x                                  # a non-contiguous view with x's values
    m2 = model()
    fit(m2, wide[:, ::2], config=cfg(epochs=2))
    assert np.array_equal(m2.theta, ref.theta)


def _fake_cupy_array(shape, dtype="float32"):
    """Stands in for a cupy.ndarray where there is no GPU: its type lives in module 'cupy'."""
    cls = types.new_class("ndarray")
    cls.__module__ = "cupy._core.core"
    a = cls()
    a.shape, a.dtype, a.ndim = shape, np.dtype(dtype), len(shape)
    return a


def test_arrays_of_the_other_backend_are_a_backend_error_naming_both():
    fake = _fake_cupy_array((40, D))
    with pytest.raises(BackendError, match=r"train must be a numpy array .* got cupy\._core\.core\.ndarray"):
        fit(model(), fake, config=cfg())
    m = model()
    for verb, arr in [(m.encode, _fake_cupy_array((3, D))), (m.decode, _fake_cupy_array((3, 2)))]:
        with pytest.raises(BackendError, match="numpy array .*cupy"):
            verb(arr)
    with pytest.raises(BackendError, match="eps must be a numpy array .*cupy"):
        m.sample(3, eps=_fake_cupy_array((3, 2)))


# ------------------------------------------------------------------------ the model's verbs
def _nan(shape, where):
    a = np.zeros(shape, np.float32)
    a[where] = np.nan
    return a


@pytest.mark.parametrize("verb, arg, words", [
    ("encode", _nan((3, D), (1, 4)), r"x holds 1 non-finite .* \(1, 4\)"),
    ("reconstruct", _nan((3, D), (2, 0)), r"x holds 1 non-finite .* \(2, 0\)"),
    ("decode", _nan((3, 2), (0, 1)), r"z holds 1 non-finite .* \(0, 1\)"),
    ("decode_mean", _nan((3, 2), (2, 1)), r"z holds 1 non-finite"),
    ("sample", _nan((3, 2), (1, 1)), r"eps holds 1 non-finite .* \(1, 1\)"),
    ("encode", np.zeros((3, D), np.uint8), r"got uint8; integer images: use x.astype\('float32'\) / 255"),
    ("encode", np.zeros((3, D)), r"x must have dtype float32 .* got float64"),
    ("encode", np.zeros((3, 2, 5), np.float32), r"x must have shape \(N, 10\), got \(3, 2, 5\)"),
    ("decode", np.zeros((3, 5), np.float32), r"z must have shape \(N, 2\), got \(3, 5\)"),
    ("decode", np.zeros((0, 2), np.float32), r"z must hold at least one row"),
    ("sample", np.zeros((4, 2), np.float32), r"eps must have shape \(3, 2\) for n=3"),
])
def test_model_verbs_refuse_bad_input(verb, arg, words):
    m = model()
    with pytest.raises(InputError, match=words):
        if verb == "sample":
            m.sample(3, eps=arg)
        else:
            getattr(m, verb)(arg)


def test_model_verbs_accept_good_input():
    m = model()
    mu, lv = m.encode(data(3))
    assert mu.shape == lv.shape == (3, 2)
    assert m.decode(mu).shape == m.reconstruct(data(3)).shape == (3, D)
    assert m.sample(3, eps=np.zeros((3, 2), np.float32)).shape == (3, D)


# ------------------------------------------------------------------------ numerics
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("likelihood, case", [
    (lik, case) for lik in ("bernoulli", "gaussian", "per-pixel")
    for case in ("logits+1e4", "logits-1e4", "logvar+1e3", "logvar-1e3", "mu1e4", "zeros", "ones", "logsigma+-1e4")
    if case != "logsigma+-1e4" or lik == "per-pixel"])   # only the per-pixel model learns log σ
def test_extreme_values_keep_loss_and_gradients_finite(dtype, likelihood, case):
    """Parameters set so the decoder emits ±1e4, logvar is far outside the clamp (±30), μ is
    huge, or the images are all 0 / all 1: loss and every gradient stay finite."""
    lik = "bernoulli" if likelihood == "bernoulli" else "gaussian"
    m = model(dtype=dtype, likelihood=lik, sigma="per-pixel" if likelihood == "per-pixel" else 1.0)
    x = data(6, dtype=dtype)
    L, P = m.latent, m.params
    if case.startswith("logits"):
        P["dec.out.W"][...] = 0
        P["dec.out.b"][...] = 1e4 if "+" in case else -1e4
    elif case.startswith("logvar"):
        P["enc.head.W"][:, L:] = 0
        P["enc.head.b"][L:] = 1e3 if "+" in case else -1e3
    elif case == "mu1e4":
        P["enc.head.b"][:L] = 1e4
    elif case == "zeros":
        x[...] = 0
    elif case == "ones":
        x[...] = 1
    elif case == "logsigma+-1e4":
        P["dec.logsigma"][::2], P["dec.logsigma"][1::2] = 1e4, -1e4
    with np.errstate(over="raise", invalid="raise", divide="raise"):   # not even in between
        res = m.loss_and_grads(x)
    assert np.isfinite(float(res.objective)) and np.isfinite(float(res.neg_elbo))
    for k, g in res.grads.items():
        assert np.all(np.isfinite(g)), k
    if case.startswith("logvar"):   # the clamp: σ² = e^{±30}, no gradient through clamped entries
        assert np.all(np.abs(m.workspace(6).enc.out[:, L:]) == 30)
        assert not np.any(res.grads["enc.head.b"][L:])


def test_nonfinite_loss_stops_within_50_steps_naming_the_step(tmp_path):
    """NaN is injected into a parameter after step 130 (epoch 4 of 40-step epochs): fit stops
    at the next check (step 150), names step 131, and epoch 3's checkpoint is intact."""
    m = model()
    seen = []

    def poison(event, info):
        if event == "batch":
            seen.append(info["step"])
            if info["step"] == 130:
                m.params["dec.out.b"][0] = np.nan
    with pytest.raises(NonFiniteError, match=r"non-finite at step 131 \(epoch 4, batch 11\).*smaller --lr") as e:
        fit(m, data(200), config=cfg(epochs=10, batch_size=5), run_dir=tmp_path, callback=poison,
            report_every=1)
    assert max(seen) == 149, "stopped at the first check after the bad step (150, before its callback)"
    assert [p.name for p in list_checkpoints(tmp_path / "checkpoints")][-1] == "epoch-0003.npz"
    run = load_run(tmp_path)
    assert run.meta["step"] == 120 and np.all(np.isfinite(run.model.theta))
    assert "predate it and are intact" in str(e.value)


def test_poisoned_parameters_are_never_checkpointed(tmp_path):
    """The last step of epoch 2 leaves NaN in a parameter (its loss was finite): epoch 2's
    checkpoint is not written, epoch 1's stays the newest."""
    m = model()

    def poison(event, info):
        if event == "batch" and info["step"] == 10:
            m.params["enc.0.W"][0, 0] = np.inf
    with pytest.raises(NonFiniteError, match=r"parameters enc.0.W became non-finite by step 10"):
        fit(m, data(), config=cfg(epochs=3, batch_size=8), run_dir=tmp_path, callback=poison, report_every=1)
    assert [p.name for p in list_checkpoints(tmp_path / "checkpoints")] == ["epoch-0001.npz"]
    assert np.all(np.isfinite(load_run(tmp_path).model.theta))


def test_diverging_lr_names_the_first_nonfinite_step():
    m = model()
    losses = []
    inner = m.loss_and_grads

    def spy(*a, **k):
        r = inner(*a, **k)
        losses.append(float(r.neg_elbo))
        return r
    m.loss_and_grads = spy
    with pytest.raises(NonFiniteError, match=r"at step (\d+) ") as e:
        fit(m, data(400), config=cfg(epochs=2, batch_size=4, optimizer="sgd", lr=1e4))
    first = int(np.flatnonzero(~np.isfinite(losses))[0]) + 1
    assert f"at step {first} " in str(e.value)
    assert len(losses) <= -(-first // 50) * 50


# ------------------------------------------------------------------------ files through fit
def test_unwritable_run_dir_is_one_error(tmp_path):
    """Refused before the first step: a path under a file, a file, a folder holding other things."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    calls = []
    with pytest.raises(InputError, match=f"run_dir {blocker / 'run'} is not writable: {blocker} is not a folder"):
        fit(model(), data(), config=cfg(), run_dir=blocker / "run", callback=lambda *e: calls.append(e))
    with pytest.raises(InputError, match=f"run_dir {blocker} is a file, not a folder"):
        fit(model(), data(), config=cfg(), run_dir=blocker, callback=lambda *e: calls.append(e))
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("keep me")
    with pytest.raises(InputError, match="exists, is not empty and holds no run"):
        fit(model(), data(), config=cfg(), run_dir=tmp_path / "notes", callback=lambda *e: calls.append(e))
    assert calls == [] and sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "notes"]
    assert [p.name for p in (tmp_path / "notes").iterdir()] == ["todo.txt"]


def _disk_full_on_second_write(monkeypatch):
    real, calls = ckpt._write_npz, []

    def write(f, arrays, meta_text):
        calls.append(1)
        if len(calls) == 2:
            f.write(b"PK\x03\x04 half an archive")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(f, arrays, meta_text)
    monkeypatch.setattr(ckpt, "_write_npz", write)


def test_disk_full_during_fit_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    _disk_full_on_second_write(monkeypatch)
    m = model()
    with pytest.raises(CheckpointError, match=r"could not write checkpoint .*epoch-0002.npz: .*No space left"):
        fit(m, data(), config=cfg(epochs=3), run_dir=tmp_path)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["epoch-0001.npz"]
    run = load_run(tmp_path)
    assert run.meta["epoch"] == 1 and len(run.history) == 1
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 1


def test_disk_full_through_the_cli_is_one_line(tmp_path, monkeypatch, capsys):
    _disk_full_on_second_write(monkeypatch)
    run = tmp_path / "RUN"
    line = one_line_error(capsys, run_main(["train", "--epochs", "3", *TINY, "--out", str(run)]))
    assert "No space left on device" in line and "epoch-0002.npz" in line
    monkeypatch.undo()
    assert [p.name for p in list_checkpoints(run / "checkpoints")] == ["epoch-0001.npz"]
    load_run(run)


# ------------------------------------------------------------------------ runs on disk
@pytest.fixture(scope="module")
def run2(tmp_path_factory):
    """A 2-epoch CLI run on the embedded data (hidden 8, latent 2), trained once."""
    run = tmp_path_factory.mktemp("bad") / "RUN"
    assert main(["train", "--epochs", "2", *TINY, "--out", str(run)]) == 0
    return run


@pytest.fixture
def run_copy(run2, tmp_path):
    dst = tmp_path / "RUN"
    shutil.copytree(run2, dst)
    return dst


def _edit_config(**changes):
    def edit(run):
        p = run / "config.json"
        c = json.loads(p.read_text())
        for dotted, v in changes.items():
            sect, key = dotted.split(".")
            c[sect][key] = v
        p.write_text(json.dumps(c))
    return edit


def _edit_arrays(fn):
    def edit(run):
        p = latest_checkpoint(run / "checkpoints")
        arrays, meta = load_checkpoint(p)
        fn(arrays)
        save_checkpoint(p, arrays, meta)
    return edit


def _newer_version(run):
    p = latest_checkpoint(run / "checkpoints")
    arrays, meta = load_checkpoint(p)
    with open(p, "wb") as f:
        ckpt._write_npz(f, arrays, json.dumps({**meta, "format_version": ckpt.FORMAT_VERSION + 1}))


def _truncate(run):
    p = latest_checkpoint(run / "checkpoints")
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


def _pickled(run):
    p = latest_checkpoint(run / "checkpoints")
    np.savez(p, __meta__=np.array('{"format_version": 1}'), evil=np.array([{"a": 1}], dtype=object))


def _set_nan(arrays):
    arrays["param/dec.out.b"][3] = np.nan


CORRUPTIONS = {
    "config hidden differs": (_edit_config(**{"model.hidden": [9]}),
                              "model.hidden: checkpoint has [8], config.json has [9]"),
    "config seed and lr differ": (_edit_config(**{"model.seed": 7, "train.lr": 0.5}),
                                  "model.seed: checkpoint has 0, config.json has 7 - train.lr: checkpoint has 0.001"),
    "config.json not JSON": (lambda r: (r / "config.json").write_text("{oops"), "config.json is not readable JSON"),
    "config.json unknown key": (_edit_config(**{"model.depth": 3}), "unknown model settings depth"),
    "missing array": (_edit_arrays(lambda a: a.pop("param/dec.out.b")), "missing arrays: param/dec.out.b"),
    "missing optimizer state": (_edit_arrays(lambda a: a.pop("optim/v.0")), "missing arrays: optim/v.0"),
    "wrong shape": (_edit_arrays(lambda a: a.update({"param/enc.0.b": np.zeros(3, np.float32)})),
                    "param/enc.0.b: expected shape (8,) float32, got (3,) float32"),
    "non-finite parameter": (_edit_arrays(_set_nan), "holds non-finite parameters (param/dec.out.b)"),
    "newer format version": (_newer_version, "written by a newer scratchvae"),
    "truncated": (_truncate, "damaged or truncated"),
    "zero bytes": (lambda r: latest_checkpoint(r / "checkpoints").write_bytes(b""), "is empty (0 bytes)"),
    "pickled object": (_pickled, "holds pickled Python objects"),
    "no checkpoints": (lambda r: [p.unlink() for p in (r / "checkpoints").iterdir()], "no checkpoints in"),
}


@pytest.mark.parametrize("command", ["evaluate", "resume"])
@pytest.mark.parametrize("name", CORRUPTIONS)
def test_broken_runs_are_one_line_and_leave_the_files_alone(run_copy, capsys, name, command):
    corrupt, words = CORRUPTIONS[name]
    corrupt(run_copy)
    before = {p: p.read_bytes() for p in run_copy.rglob("*") if p.is_file()}
    argv = (["evaluate", str(run_copy), "--limit", "20", "--ks", "1"] if command == "evaluate"
            else ["train", "--resume", str(run_copy), "--epochs", "3", "--quiet"])
    capsys.readouterr()
    line = one_line_error(capsys, run_main(argv))
    assert words in line, line
    assert {p: p.read_bytes() for p in run_copy.rglob("*") if p.is_file()} == before


def test_warmup_run_resumes_its_config_check(tmp_path):
    """Checkpoints record the target β, not the warm-up value of the moment, so a run with
    --kl-warmup passes load_run's config check."""
    fit(model(), data(), config=cfg(epochs=2, kl_warmup=5.0), run_dir=tmp_path)
    run = load_run(tmp_path)
    assert run.meta["config"]["model"]["beta"] == 1.0
    resume(run, data(), epochs=3)


def test_mid_epoch_resume_refuses_other_data(tmp_path):
    m = model()
    calls = iter(range(10**6))
    from scratchvae.train import Interrupted
    with pytest.raises(Interrupted):
        fit(m, data(), config=cfg(epochs=3), run_dir=tmp_path, should_stop=lambda: next(calls) == 7)
    with pytest.raises(InputError, match="permutation does not fit a training set of 30 images"):
        resume(load_run(tmp_path), data(30), epochs=3)


# ------------------------------------------------------------------------ the command line
def _garbage_idx(tmp_path):
    d = tmp_path / "idx"
    d.mkdir()
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        (d / name).write_bytes(b"\x00\x00\x08\x03 definitely not IDX")
    return d


def _not_a_run(tmp_path):
    d = tmp_path / "empty"
    d.mkdir()
    (d / "notes.txt").write_text("hi")
    return d


def _under_a_file(tmp_path):
    (tmp_path / "f").write_text("")
    return tmp_path / "f" / "run"


def _own_npz(tmp_path, name="own.npz", **arrays):
    """A small .npz of one's own data (or, given ``arrays``, of those), the path."""
    path = tmp_path / name
    np.savez(path, **(arrays or {"x_train": np.random.default_rng(0).integers(0, 256, (200, 16), np.uint8)}))
    return path


def _codes(tmp_path):
    return _own_npz(tmp_path, "codes.npz", mu=np.zeros((4, 2), np.float32))


def _truncated(make):
    def damage(tmp_path):
        path = make(tmp_path)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
        return path
    return damage


def _flipped(make):
    """The file with one byte of an array's data flipped: its zip entry fails its CRC."""
    def damage(tmp_path):
        path = make(tmp_path)
        raw = bytearray(path.read_bytes())
        raw[len(raw) // 3] ^= 0xFF
        path.write_bytes(bytes(raw))
        return path
    return damage


def _npy_named_npz(tmp_path):
    path = tmp_path / "x.npz"
    with open(path, "wb") as f:
        np.save(f, np.zeros((4, 2), np.float32))
    return path


def _empty_npz(tmp_path):
    path = tmp_path / "empty.npz"
    path.write_bytes(b"")
    return path


def _folder_npz(tmp_path):
    path = tmp_path / "x.npz"
    path.mkdir()
    return path


def _zero_byte_image(tmp_path):
    from PIL import Image

    folder = tmp_path / "pictures"
    folder.mkdir()
    for i in range(4):
        Image.fromarray(np.full((4, 4), 40 * i, np.uint8)).save(folder / f"{i}.png")
    (folder / "9.png").write_bytes(b"")
    return folder


DAMAGED = {   # damaged files of each kind a verb reads, with what the one line must say
    "truncated": (_truncated, "is damaged or truncated (BadZipFile"),
    "flipped bytes": (_flipped, "is damaged or truncated (BadZipFile: Bad CRC-32"),
}


BAD_INVOCATIONS = {
    "no command": (lambda t, r: [], "required: COMMAND"),
    "--hidden abc": (lambda t, r: ["train", "--hidden", "abc"], "argument --hidden"),
    "--latent 0": (lambda t, r: ["train", "--latent", "0"], "argument --latent"),
    "--lr -1": (lambda t, r: ["train", "--lr", "-1"], "argument --lr: expected a finite number > 0, got '-1'"),
    "--lr inf": (lambda t, r: ["train", "--lr", "inf"], "argument --lr: expected a finite number > 0, got 'inf'"),
    "--seed -1": (lambda t, r: ["train", "--seed", "-1"], "argument --seed: expected an integer in [0, 2**63)"),
    "--momentum 1": (lambda t, r: ["train", "--optimizer", "sgd", "--momentum", "1"],
                     "argument --momentum: expected a number in [0, 1), got '1'"),
    "--activation gelu": (lambda t, r: ["train", "--activation", "gelu"], "invalid choice: 'gelu'"),
    "--corrupt bogus": (lambda t, r: ["train", *TINY, "--corrupt", "bogus", "--out", str(t / "o")],
                        "argument --corrupt: expected none, gaussian:S (S > 0) or mask:P (0 < P < 1), got 'bogus'"),
    "--sigma bogus": (lambda t, r: ["train", "--sigma", "fixed:-1"], "argument --sigma: expected fixed:V (V > 0)"),
    "--keep 0": (lambda t, r: ["train", "--keep", "0"], "argument --keep: expected a positive number"),
    "bad dataset dir": (lambda t, r: ["train", *TINY, "--dataset", "mnist", "--data-dir", str(t / "nope"),
                                      "--out", str(t / "o")], str(Path("nope"))),
    "unreadable IDX": (lambda t, r: ["train", *TINY, "--dataset", "mnist", "--data-dir", str(_garbage_idx(t)),
                                     "--out", str(t / "o")], "idx"),
    "fashion-mnist offline": (lambda t, r: ["train", *TINY, "--dataset", "fashion-mnist",
                                            "--out", str(t / "o")], "fashion-mnist"),
    "--batch-size > data": (lambda t, r: ["train", *TINY, "--batch-size", "6000", "--out", str(t / "o")],
                            "--batch-size 6000 is larger than the training set (5000 images)"),
    "--data-dir not a folder": (lambda t, r: ["train", *TINY, "--dataset", "mnist", "--data-dir", str(t / "nope"),
                                              "--out", str(t / "o")], "--data-dir must be an existing folder"),
    "--out existing run": (lambda t, r: ["train", *TINY, "--out", str(r)], "already holds a run"),
    "--out not empty": (lambda t, r: ["train", *TINY, "--out", str(_not_a_run(t))],
                        "exists, is not empty and holds no run"),
    "--overwrite a non-run": (lambda t, r: ["train", *TINY, "--overwrite", "--out", str(_not_a_run(t))],
                              "holds no run; choose another folder (--overwrite replaces runs only)"),
    "--out under a file": (lambda t, r: ["train", *TINY, "--out", str(_under_a_file(t))], "is not writable"),
    "--resume missing dir": (lambda t, r: ["train", "--resume", str(t / "gone")], "is not a scratchvae run"),
    "--resume fewer epochs": (lambda t, r: ["train", "--resume", str(r), "--epochs", "1"],
                              "--epochs is the total number of epochs: the run has finished 2, got --epochs 1"),
    "--resume a finished run": (lambda t, r: ["train", "--resume", str(r)],
                                "has finished its 2 epochs; pass --epochs N (N > 2) to train it further"),
    "--resume a finished run --epochs its own": (lambda t, r: ["train", "--resume", str(r), "--epochs", "2"],
                                                 "has finished its 2 epochs; pass --epochs N (N > 2) to train it "
                                                 "further"),
    "evaluate non-run dir": (lambda t, r: ["evaluate", str(_not_a_run(t))], "config.json is missing"),
    "evaluate --ks a,b": (lambda t, r: ["evaluate", str(r), "--ks", "a,b"], "argument --ks: expected comma-separated"),
    "evaluate --ks 0": (lambda t, r: ["evaluate", str(r), "--ks", "0,10"], "argument --ks: expected comma-separated"),
    "evaluate --data-dir": (lambda t, r: ["evaluate", str(r), "--data-dir", str(t)], "--data-dir applies to the"),
    "evaluate --epoch 9": (lambda t, r: ["evaluate", str(r), "--epoch", "9"],
                           "no end-of-epoch checkpoint for epoch 9"),
    "sample missing dir": (lambda t, r: ["sample", str(t / "gone")], "is not a scratchvae run"),
    "sample --out x.gif": (lambda t, r: ["sample", str(r), "--out", str(t / "x.gif")],
                           "argument --out: expected a file name ending in .png, .pdf, .svg or .jpg"),
    "diverging --lr": (lambda t, r: ["train", *TINY, "--optimizer", "sgd", "--lr", "1000", "--out", str(t / "o")],
                       "the loss became non-finite at step"),
    # flags that do not apply to the options chosen
    "--momentum with adam": (lambda t, r: ["train", "--momentum", "0.9", "--out", str(t / "o")],
                             "--momentum applies to --optimizer sgd only, got --optimizer adam"),
    "--sigma with bernoulli": (lambda t, r: ["train", "--sigma", "shared", "--out", str(t / "o")],
                               "--sigma applies to --likelihood gaussian only, got --likelihood bernoulli"),
    "--beta, --kl-warmup with ae": (lambda t, r: ["train", "--mode", "ae", "--beta", "2", "--kl-warmup", "1"],
                                    "--beta weighs the KL term, which --mode ae does not have; --kl-warmup"),
    "--no-graph with numpy": (lambda t, r: ["train", "--no-graph"], "--no-graph applies to --backend cupy or auto"),
    "train --data-dir embedded": (lambda t, r: ["train", "--data-dir", str(t)], "--data-dir applies to the datasets"),
    "--overwrite with --resume": (lambda t, r: ["train", "--resume", str(r), "--overwrite", "--epochs", "3"],
                                  "--overwrite does not apply to --resume"),
    "compare --data-dir embedded": (lambda t, r: ["compare", "--data-dir", str(t)], "--data-dir applies to the"),
    "plot --data-dir embedded run": (lambda t, r: ["plot", str(r), "--data-dir", str(t)], "--data-dir applies to"),
    # resume keeps the run's settings
    "--resume --lr other": (lambda t, r: ["train", "--resume", str(r), "--epochs", "3", "--lr", "0.01"],
                            "--lr 0.01 (the run has 0.001)"),
    "--resume --out other": (lambda t, r: ["train", "--resume", str(r), "--epochs", "3", "--out", str(t / "o")],
                             "(the run is in"),
    # --overwrite keeps the old run whatever fails
    "--overwrite, bad --batch-size": (lambda t, r: ["train", *TINY, "--overwrite", "--batch-size", "6000",
                                                    "--out", str(r)], "--batch-size 6000 is larger"),
    "--overwrite, diverging": (lambda t, r: ["train", *TINY, "--overwrite", "--optimizer", "sgd", "--lr", "1000",
                                             "--out", str(r)],
                               "nothing was written. The gradients are sums over a batch's 100 images, so SGD's "
                               "step is 100 times a mean's: try --lr 10 (--lr 1000 / 100), or a smaller one, "
                               "--kl-warmup, or float64; the run in"),
    "compare --out not empty": (lambda t, r: ["compare", "--out", str(r)],
                                "exists, is not empty and holds no comparison"),
    # damaged files: one line, nothing written
    **{f"{verb} {name}": (lambda t, r, a=argv, d=damage(make): a(r, str(d(t))), words)
       for verb, make, argv in (("train --dataset", _own_npz, lambda r, f: ["train", *TINY, "--dataset", f]),
                                ("compare --dataset", _own_npz, lambda r, f: ["compare", "--quiet", "--dataset", f]),
                                ("decode RUN", _codes, lambda r, f: ["decode", str(r), f]))
       for name, (damage, words) in DAMAGED.items()},
    ".npy named .npz as --dataset": (lambda t, r: ["train", *TINY, "--dataset", str(_npy_named_npz(t))],
                                     "dataset (--dataset) {t}/x.npz is not an .npz archive (it is a .npy file"),
    ".npy named .npz as codes": (lambda t, r: ["decode", str(r), str(_npy_named_npz(t))],
                                 "codes {t}/x.npz is not an .npz archive (it is a .npy file"),
    "empty .npz as --dataset": (lambda t, r: ["train", *TINY, "--dataset", str(_empty_npz(t))], "is empty (0 bytes)"),
    "empty .npz as codes": (lambda t, r: ["decode", str(r), str(_empty_npz(t))], "is empty (0 bytes)"),
    "a folder x.npz as --dataset": (lambda t, r: ["train", *TINY, "--dataset", str(_folder_npz(t))],
                                    "holds no PNG or JPEG images"),
    "a folder x.npz as codes": (lambda t, r: ["decode", str(r), str(_folder_npz(t))],
                                "is a folder, not an .npz file"),
    "a zero-byte image": (lambda t, r: ["train", *TINY, "--dataset", str(_zero_byte_image(t))],
                          "9.png is not a readable PNG/JPEG image"),
}


def tree(*folders):
    """Every file and folder under ``folders`` -> its bytes (None for a folder)."""
    return {p: None if p.is_dir() else p.read_bytes() for f in folders for p in [f, *f.rglob("*")] if p.exists()}


@pytest.mark.parametrize("name", BAD_INVOCATIONS)
def test_cli_user_errors_are_one_line(name, run_copy, tmp_path, capsys):
    """One line naming what is wrong, and the file system as it was: nothing created, nothing
    changed (a failed train leaves no folder; the run it was pointed at is intact)."""
    make_argv, words = BAD_INVOCATIONS[name]
    argv = make_argv(tmp_path, run_copy)
    before = tree(tmp_path, run_copy)
    capsys.readouterr()
    line = one_line_error(capsys, run_main(argv))
    assert words.format(t=tmp_path) in line, line
    assert tree(tmp_path, run_copy) == before


def test_load_of_a_run_folder_says_it_is_a_run(run_copy, tmp_path):
    with pytest.raises(CheckpointError, match=f"{run_copy} is a run folder, not a model file: .*load_run"):
        VAE.load(run_copy)
    with pytest.raises(CheckpointError, match=f"{tmp_path / 'x.npz'} is a folder, not a model file"):
        VAE.load(_folder_npz(tmp_path))
    with pytest.raises(CheckpointError, match="is damaged or truncated"):
        VAE.load(_truncated(lambda t: VAE(input_dim=6, hidden=(3,), latent=2).save(t / "m.npz"))(tmp_path))


def test_cli_fault_spec_typo_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SCRATCHVAE_FAULT", "mid-epoch:soon")
    line = one_line_error(capsys, run_main(["train", *TINY, "--epochs", "1", "--out", str(tmp_path / "o")]))
    assert "'mid-epoch:N'" in line


def test_cli_backend_cupy_without_a_gpu_is_one_line(tmp_path, capsys):
    from scratchvae.backend import cupy_usable

    if cupy_usable():
        pytest.skip("a GPU is usable here")
    line = one_line_error(capsys, run_main(["train", *TINY, "--backend", "cupy", "--out", str(tmp_path / "o")]))
    assert "cupy" in line.lower()


def test_cli_unwritable_cache_is_one_line(tmp_path, monkeypatch, capsys):
    """Downloads allowed, but the cache folder cannot be made (its parent is a file)."""
    (tmp_path / "f").write_text("")
    monkeypatch.setenv("SCRATCHVAE_OFFLINE", "0")
    monkeypatch.setenv("SCRATCHVAE_CACHE_DIR", str(tmp_path / "f" / "cache"))
    line = one_line_error(capsys, run_main(["train", *TINY, "--dataset", "mnist", "--out", str(tmp_path / "o")]))
    assert f"cannot create directory {tmp_path / 'f' / 'cache' / 'mnist'}: Not a directory" in line
