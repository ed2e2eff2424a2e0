"""One's own data through the command line: train on an .npz or an image folder, a recorded test
split, figures in the data's own image shape, and codes out (encode) and back (decode)."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from scratchvae import VAE
from scratchvae.cli import main
from scratchvae.codes import read_codes
from scratchvae.data import load_dataset
from scratchvae.runs import load_run

SMALL = ["--hidden", "8", "--latent", "2", "--epochs", "1", "--batch-size", "16", "--quiet"]


def run_cli(args):
    """main's exit status, argparse's usage errors (SystemExit) included."""
    try:
        return main(args)
    except SystemExit as exit_:
        return exit_.code


@pytest.fixture
def rgb_npz(tmp_path):
    r = np.random.default_rng(0)
    x = r.integers(0, 256, (60, 6, 5, 3), dtype=np.uint8)
    np.savez(tmp_path / "rgb.npz", x_train=x, y_train=np.arange(60) % 3)
    return tmp_path / "rgb.npz"


def test_train_on_an_npz_records_its_split_and_shape_and_codes_round_trip(rgb_npz, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--dataset", str(rgb_npz), "--test-fraction", "0.2", *SMALL, "--out", str(run)]) == 0
    config = json.loads((run / "config.json").read_text())
    assert config["train"]["dataset"] == str(rgb_npz.resolve()) and config["train"]["test_fraction"] == 0.2
    assert config["data"]["image_shape"] == [6, 5, 3]
    assert "48 train, 12 test" in capsys.readouterr().out
    assert main(["encode", str(run), "--out", str(tmp_path / "codes.npz")]) == 0
    codes = read_codes(tmp_path / "codes.npz")
    assert sorted(codes) == ["logvar", "mu", "y"] and codes["mu"].shape == (12, 2)
    assert main(["encode", str(run), "--split", "train", "--sample", "--limit", "10",
                 "--out", str(tmp_path / "train.npz")]) == 0
    assert sorted(read_codes(tmp_path / "train.npz")) == ["logvar", "mu", "y", "z"]
    edited = {"mu": codes["mu"] + np.float32(0.5)}                 # attribute arithmetic by hand
    np.savez_compressed(tmp_path / "edited.npz", **edited)            # compressed codes read too
    assert main(["decode", str(run), str(tmp_path / "edited.npz"), "--out", str(tmp_path / "x.npz")]) == 0
    assert "decoded mu of 12 codes" in capsys.readouterr().out
    model = load_run(run).model
    np.testing.assert_allclose(read_codes(tmp_path / "x.npz")["x"], model.decode_mean(edited["mu"]), rtol=1e-6)
    assert main(["decode", str(run), str(tmp_path / "train.npz"), "--out", str(tmp_path / "x.png")]) == 0
    assert "decoded z of 10 codes" in capsys.readouterr().out
    assert Image.open(tmp_path / "x.png").mode in ("RGB", "RGBA")


def test_evaluate_and_plot_see_the_recorded_split_in_colour(rgb_npz, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--dataset", str(rgb_npz), "--test-fraction", "0.25", *SMALL, "--out", str(run)]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(run), "--ks", "1,5"]) == 0
    out = capsys.readouterr().out
    assert "15 test images" in out and "linear probe" in out
    assert main(["plot", str(run), "--out", str(tmp_path / "figs"), "--n", "4"]) == 0
    rec = np.asarray(Image.open(tmp_path / "figs" / "reconstructions.png").convert("RGB"), dtype=np.int64)
    assert np.abs(rec[..., 0] - rec[..., 1]).max() > 0                 # tiles drawn in colour


def test_flat_data_need_an_image_shape_for_the_figures(tmp_path, capsys):
    x = np.random.default_rng(1).uniform(size=(40, 6)).astype(np.float32)
    np.savez(tmp_path / "flat.npz", x_train=x)
    for shape, name in ((None, "plain"), ("2,3", "shaped")):
        extra = [] if shape is None else ["--image-shape", shape]
        run = tmp_path / name
        assert main(["train", "--dataset", str(tmp_path / "flat.npz"), *extra, *SMALL, "--out", str(run)]) == 0
        code = main(["sample", str(run), "--n", "4", "--out", str(tmp_path / f"{name}.png")])
        if shape is None:
            assert code == 2 and "--image-shape H,W[,C]" in capsys.readouterr().err
        else:
            assert code == 0 and (tmp_path / "shaped.png").is_file()
    assert load_run(tmp_path / "shaped").train_config.image_shape == (2, 3)


def test_an_image_folder_with_classes_trains_and_resumes_on_the_same_split(tmp_path):
    r = np.random.default_rng(2)
    for cls in ("a", "b"):
        for i in range(20):
            path = tmp_path / "imgs" / cls / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(r.integers(0, 256, (4, 4), dtype=np.uint8), mode="L").save(path)
    run = tmp_path / "run"
    args = ["train", "--dataset", str(tmp_path / "imgs"), "--hidden", "8", "--latent", "2", "--batch-size", "8",
            "--quiet", "--out", str(run)]
    assert main([*args, "--epochs", "1"]) == 0
    config = json.loads((run / "config.json").read_text())
    assert config["train"]["test_fraction"] == 0.1 and config["data"]["classes"] == ["a", "b"]
    assert main(["train", "--resume", str(run), "--epochs", "2", "--quiet"]) == 0
    assert [r["epoch"] for r in load_run(run).history] == [1, 2]
    straight = tmp_path / "straight"
    assert main([*args[:-1], str(straight), "--epochs", "2"]) == 0
    np.testing.assert_array_equal(load_run(run).model.theta, load_run(straight).model.theta)


def test_class_folders_are_ordered_as_strings_and_their_names_travel_with_the_codes(tmp_path, capsys):
    """Folders 2, 9 and 10 are labels 1, 2 and 0 (string order); encode writes their names as
    ``classes``, so ``classes[y]`` is each image's folder, for every split."""
    r = np.random.default_rng(3)
    for cls in ("2", "9", "10"):
        for i in range(8):
            path = tmp_path / "imgs" / cls / f"{cls}-{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((4, 4), int(cls) * 20, np.uint8) + r.integers(0, 3, (4, 4), dtype=np.uint8),
                            mode="L").save(path)
    run = tmp_path / "run"
    assert main(["train", "--dataset", str(tmp_path / "imgs"), "--hidden", "8", "--latent", "2", "--batch-size",
                 "8", "--epochs", "1", "--quiet", "--out", str(run)]) == 0
    splits = dict(zip(("train", "test"), load_dataset(str(tmp_path / "imgs"), seed=0)))     # the run's split
    for split, data in splits.items():
        assert main(["encode", str(run), "--split", split, "--out", str(tmp_path / f"{split}.npz")]) == 0
        codes = np.load(tmp_path / f"{split}.npz")
        assert list(codes["classes"]) == ["10", "2", "9"] and len(codes["y"]) == len(data)
        folders = [str(round(float(x.mean()) / 20)) for x in data.images]       # each image's folder: its gray
        assert list(codes["classes"][codes["y"]]) == folders
    assert main(["decode", str(run), str(tmp_path / "test.npz"), "--out", str(tmp_path / "d.npz")]) == 0


@pytest.mark.parametrize("args, message", [
    (["--test-fraction", "0.2"], "--test-fraction applies to one's own data; embedded has its own test split"),
    (["--image-shape", "28,28"], "--image-shape applies to one's own flat data"),
    (["--dataset", "nowhere.npz"], "neither a built-in dataset|which does not exist"),
    (["--test-fraction", "1.5"], "expected a number in \\(0, 1\\)"),
    (["--image-shape", "2,x"], "expected H,W or H,W,C"),
])
def test_own_data_flags_are_checked_before_anything_is_written(args, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert run_cli(["train", *args, *SMALL]) == 2
    assert any(__import__("re").search(message, line) for line in capsys.readouterr().err.splitlines())
    assert not (tmp_path / "runs").exists()


def test_mixed_image_sizes_are_refused_and_nothing_is_written(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mixed").mkdir()
    Image.fromarray(np.zeros((4, 4), np.uint8), mode="L").save(tmp_path / "mixed" / "a.png")
    Image.fromarray(np.zeros((5, 4), np.uint8), mode="L").save(tmp_path / "mixed" / "b.png")
    assert main(["train", "--dataset", "mixed", *SMALL]) == 2
    assert "must share one size" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mixed"]


def test_encode_and_decode_refuse_what_does_not_fit(rgb_npz, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--dataset", str(rgb_npz), "--mode", "ae", *SMALL, "--out", str(run)]) == 0
    assert main(["encode", str(run), "--sample"]) == 2
    assert "a plain autoencoder ('ae') has no q(z|x)" in capsys.readouterr().err
    assert run_cli(["encode", str(run), "--out", str(tmp_path / "codes.txt")]) == 2
    assert "--out: expected a file name ending in .npz" in capsys.readouterr().err
    np.savez(tmp_path / "wrong.npz", mu=np.zeros((3, 5), np.float32))
    assert main(["decode", str(run), str(tmp_path / "wrong.npz")]) == 2
    assert "codes mu must be a float array of shape (N, 2)" in capsys.readouterr().err
    assert run_cli(["decode", str(run), str(tmp_path / "wrong.npz"), "--out", str(tmp_path / "x.gif")]) == 2
    assert main(["encode", str(run)]) == 0
    assert sorted(read_codes(run / "codes-test.npz")) == ["mu", "y"]


def test_a_saved_model_reads_what_a_run_wrote(rgb_npz, tmp_path):
    run = tmp_path / "run"
    assert main(["train", "--dataset", str(rgb_npz), *SMALL, "--out", str(run)]) == 0
    checkpoint = sorted((run / "checkpoints").iterdir())[-1]
    model = VAE.load(checkpoint)
    model.save(tmp_path / "model.npz")
    np.testing.assert_array_equal(VAE.load(tmp_path / "model.npz").theta, load_run(run).model.theta)


# -- the data a run was made on ------------------------------------------------------------------
def _image_folder(folder, n=20, seed=2):
    r = np.random.default_rng(seed)
    for cls in ("a", "b"):
        for i in range(n):
            path = folder / cls / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(r.integers(0, 256, (4, 4), dtype=np.uint8), mode="L").save(path)
    return folder


def _files(*folders):
    return {p: p.read_bytes() for f in folders for p in f.rglob("*") if p.is_file()}


def _one_line(capsys):
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("scratchvae: error: "), lines
    return lines[0]


READERS = {"resume": ["train", "--resume", "{run}", "--epochs", "2", "--quiet"],
           "evaluate": ["evaluate", "{run}", "--ks", "1", "--quiet"],
           "plot": ["plot", "{run}", "--out", "{tmp}/figures"],
           "encode": ["encode", "{run}", "--out", "{tmp}/codes.npz"]}


def _argv(verb, run, tmp_path, *more):
    return [a.format(run=run, tmp=tmp_path) for a in READERS[verb]] + list(more)


@pytest.fixture
def folder_run(tmp_path):
    """A one-epoch run on an image folder of 40 images (4 of them its recorded test split)."""
    run = tmp_path / "run"
    assert main(["train", "--dataset", str(_image_folder(tmp_path / "imgs")), *SMALL, "--batch-size", "8",
                 "--out", str(run)]) == 0
    return run


def test_a_run_records_a_fingerprint_of_its_data(folder_run):
    fp = json.loads((folder_run / "config.json").read_text())["data"]["fingerprint"]
    assert (fp["train"]["images"], fp["test"]["images"]) == (36, 4)
    assert all(len(fp[split]["sha256"]) == 64 for split in ("train", "test"))


@pytest.mark.parametrize("verb", READERS)
def test_changed_data_are_refused_naming_what_differs(verb, folder_run, tmp_path, capsys):
    """One image added to the folder: the split would be drawn anew from 41 images, so every verb
    that reads the data refuses them, naming the split that differs, and writes nothing."""
    Image.fromarray(np.zeros((4, 4), np.uint8), mode="L").save(tmp_path / "imgs" / "a" / "new.png")
    before = _files(tmp_path)
    capsys.readouterr()
    assert run_cli(_argv(verb, folder_run, tmp_path)) == 2
    line = _one_line(capsys)
    assert f"{tmp_path / 'imgs'} holds other data than the run was made on: train split: 37 images, the run's " \
           "had 36" in line, line
    assert _files(tmp_path) == before


@pytest.mark.parametrize("verb", READERS)
def test_data_that_moved_are_found_again_by_dataset_or_data_dir(verb, folder_run, tmp_path, capsys):
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "imgs").rename(tmp_path / "elsewhere" / "imgs")
    capsys.readouterr()
    assert run_cli(_argv(verb, folder_run, tmp_path)) == 2
    assert f"the run's data {tmp_path / 'imgs'} are not there (moved?): name their new place with --dataset PATH " \
           "or --data-dir DIR" in _one_line(capsys)
    assert run_cli(_argv(verb, folder_run, tmp_path, "--dataset", str(tmp_path / "elsewhere" / "imgs"))) == 0
    if verb == "resume":
        assert [r["epoch"] for r in load_run(folder_run).history] == [1, 2]
        return
    assert run_cli(_argv(verb, folder_run, tmp_path, "--data-dir", str(tmp_path / "elsewhere"))) == 0


def test_another_dataset_or_a_run_without_a_fingerprint_is_refused(folder_run, tmp_path, capsys):
    other = _image_folder(tmp_path / "other", seed=3)
    capsys.readouterr()
    assert run_cli(["evaluate", str(folder_run), "--dataset", str(other)]) == 2
    assert "holds other data than the run was made on: train split: the same number of images (36) with other " \
           "pixels or labels; test split: the same number" in _one_line(capsys)
    config = json.loads((folder_run / "config.json").read_text())
    del config["data"]["fingerprint"]                       # as runs of scratchvae 0.2.0 are
    (folder_run / "config.json").write_text(json.dumps(config))
    assert run_cli(["evaluate", str(folder_run), "--ks", "1", "--quiet"]) == 0
    capsys.readouterr()
    assert run_cli(["evaluate", str(folder_run), "--dataset", str(other)]) == 2
    assert "records no fingerprint of its data (it predates them), so data at another path cannot be checked " \
           "against it" in _one_line(capsys)


def test_a_built_in_dataset_is_named_as_recorded(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *SMALL, "--batch-size", "500", "--out", str(run)]) == 0
    capsys.readouterr()
    assert run_cli(["evaluate", str(run), "--dataset", "mnist"]) == 2
    assert "--dataset mnist: the run was made on embedded" in _one_line(capsys)
    assert run_cli(["evaluate", str(run), "--dataset", "embedded", "--ks", "1", "--quiet"]) == 0


def test_an_npz_that_moved_is_found_by_data_dir(rgb_npz, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--dataset", str(rgb_npz), *SMALL, "--out", str(run)]) == 0
    (tmp_path / "moved").mkdir()
    rgb_npz.rename(tmp_path / "moved" / rgb_npz.name)
    assert run_cli(["evaluate", str(run), "--data-dir", str(tmp_path / "moved"), "--ks", "1", "--quiet"]) == 0
    assert run_cli(["evaluate", str(run), "--data-dir", str(tmp_path / "moved"),
                    "--dataset", str(tmp_path / "moved" / rgb_npz.name)]) == 2
    assert "give --dataset or --data-dir, not both" in _one_line(capsys)


# -- flat data without an image shape ---------------------------------------------------------------
IMAGE_FIGURES = ("manifold", "reconstructions", "abstraction", "samples", "interpolation")


@pytest.fixture
def flat_run(tmp_path, capsys):
    """A run on flat (N, 300) data, labelled, trained without --image-shape; and what train said."""
    r = np.random.default_rng(4)
    np.savez(tmp_path / "flat.npz", x_train=r.uniform(size=(60, 300)).astype(np.float32),
             y_train=np.arange(60) % 3)
    run = tmp_path / "run"
    assert main(["train", "--dataset", str(tmp_path / "flat.npz"), *SMALL, "--out", str(run)]) == 0
    return run, capsys.readouterr().err


def test_train_on_flat_data_says_once_that_figures_of_images_need_a_shape(flat_run):
    _, err = flat_run
    assert err.splitlines() == [
        "scratchvae: note: the data are vectors of 300 values with no image shape: the figures that draw images "
        "(plot, sample, decode, compare) need --image-shape H,W[,C]"]


def test_plot_without_a_shape_draws_what_needs_none_and_names_the_rest(flat_run, tmp_path, capsys):
    run, _ = flat_run
    assert main(["plot", str(run), "--out", str(tmp_path / "figs")]) == 0
    out, err = capsys.readouterr()
    assert sorted(p.name for p in (tmp_path / "figs").iterdir()) == ["latent.png", "losses.png", "posteriors.png"]
    assert sorted(Path(line).name for line in out.splitlines()) == sorted(p.name for p in (tmp_path / "figs").iterdir())
    for kind in (*IMAGE_FIGURES, "arithmetic"):
        assert f"scratchvae: note: skipped {kind}.png: it draws images, and the data have no image shape (300 " \
               "values per image; --image-shape H,W[,C] gives one)" in err.splitlines(), err
    assert main(["plot", str(run), "--out", str(tmp_path / "shaped"), "--image-shape", "10,30"]) == 0
    assert sorted(p.name for p in (tmp_path / "shaped").iterdir()) == sorted(
        [f"{k}.png" for k in IMAGE_FIGURES] + ["arithmetic.png", "latent.png", "losses.png", "posteriors.png"])


@pytest.mark.parametrize("verb", ["plot", "sample", "decode", "compare"])
def test_image_shape_is_accepted_and_checked_against_the_data(verb, flat_run, tmp_path, capsys):
    run, _ = flat_run
    np.savez(tmp_path / "codes.npz", mu=np.zeros((4, 2), np.float32))
    argv = {"plot": ["plot", str(run), "--out", str(tmp_path / "figs")],
            "sample": ["sample", str(run), "--n", "4", "--out", str(tmp_path / "s.png")],
            "decode": ["decode", str(run), str(tmp_path / "codes.npz"), "--out", str(tmp_path / "d.png")],
            "compare": ["compare", "--dataset", str(tmp_path / "flat.npz"), "--epochs", "1", "--batch-size", "16",
                        "--hidden", "8", "--quiet", "--out", str(tmp_path / "cmp")]}[verb]
    before = _files(tmp_path)
    assert run_cli([*argv, "--image-shape", "10,10"]) == 2
    line = _one_line(capsys)
    assert "image_shape (--image-shape) 10,10 holds 100 values per image; the data have 300" in line, line
    assert _files(tmp_path) == before
    if verb in ("sample", "decode", "compare"):              # nothing to draw without a shape
        assert run_cli(argv) == 2
        assert "--image-shape H,W[,C]" in _one_line(capsys)
        assert _files(tmp_path) == before
    assert run_cli([*argv, "--image-shape", "15,20"]) == 0


def test_a_failed_plot_leaves_no_partial_figure(flat_run, tmp_path, monkeypatch, capsys):
    """A figure fails half way through plot (here: its file cannot be written): the figures a
    plot wrote before are untouched, none of this plot's is left, no temporary file either; so
    for sample's one figure."""
    from matplotlib.figure import Figure

    from scratchvae import plots

    run, _ = flat_run
    assert main(["plot", str(run), "--image-shape", "15,20"]) == 0
    assert main(["sample", str(run), "--image-shape", "15,20"]) == 0
    before = _files(run)
    real, failing = Figure.savefig, []

    def full_disk(self, fname, **kw):
        if any(name in str(fname) for name in failing):
            Path(fname).write_bytes(b"half a figure")
            raise OSError(28, "No space left on device")
        return real(self, fname, **kw)
    monkeypatch.setattr(Figure, "savefig", full_disk)
    monkeypatch.setattr(plots.latent, "MAX_SCATTER", 5)   # every figure differs from the first plot's
    monkeypatch.setitem(plots.STREAM_IDS, "samples", 299)
    capsys.readouterr()
    for verb, name in (("plot", "interpolation"), ("sample", "samples")):
        failing[:] = [name]
        assert run_cli([verb, str(run), "--image-shape", "15,20", "--seed", "9"]) == 2
        assert "No space left on device" in _one_line(capsys)
        assert _files(run) == before
