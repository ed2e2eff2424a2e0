"""load_dataset and friends: names, folders, cache, offline, embedded subset, full MNIST, wheel."""

import dataclasses
import importlib.util
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from _idxutil import NAMES, write_idx, write_mnist_like
from scratchvae.data import Dataset, default_cache_dir, load_dataset
from scratchvae.data import download as dl
from scratchvae.data.download import SHA256, payload_sha256
from scratchvae.errors import DataError, DownloadError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _no_network_env(monkeypatch, tmp_path):
    """Nothing here may download: offline by default, the cache in tmp, and urlopen refused."""
    monkeypatch.setenv("SCRATCHVAE_OFFLINE", "1")
    monkeypatch.setenv("SCRATCHVAE_CACHE_DIR", str(tmp_path / "default-cache"))

    def refuse(*args, **kwargs):
        raise AssertionError("test_datasets must not open network connections")

    monkeypatch.setattr(dl.urllib.request, "urlopen", refuse)


def test_unknown_name_lists_the_choices():
    with pytest.raises(DataError, match="must be one of 'embedded', 'mnist', 'fashion-mnist' or the path "
                                        "of an .npz file or a folder of images, got 'cifar10', which does not exist"):
        load_dataset("cifar10")


# ---- the embedded subset ----

def test_embedded_subset_shapes_dtypes_and_classes():
    train, test = load_dataset("embedded")
    for ds, n, per_class in ((train, 5000, 500), (test, 1000, 100)):
        assert ds.images.shape == (n, 784) and ds.images.dtype == np.uint8
        assert ds.labels.shape == (n,) and ds.labels.dtype == np.uint8
        assert len(ds) == n
        np.testing.assert_array_equal(np.bincount(ds.labels, minlength=10), [per_class] * 10)
        assert ds.images.min() == 0 and ds.images.max() == 255  # real strokes, full range
    assert train.name == "embedded-train" and test.name == "embedded-test"


def test_embedded_npz_holds_provenance_and_loads_without_pickle():
    with np.load(REPO / "scratchvae/data/mnist_embedded.npz", allow_pickle=False) as z:
        tr, te = z["train_indices"], z["test_indices"]
        assert tr.shape == (5000,) and te.shape == (1000,)
        assert np.all(np.diff(tr) > 0) and tr[-1] < 60000 and np.all(np.diff(te) > 0) and te[-1] < 10000


def test_embedded_refuses_a_data_dir(tmp_path):
    with pytest.raises(DataError, match="data_dir is only used by 'mnist' and 'fashion-mnist'"):
        load_dataset("embedded", tmp_path)


# ---- folders of IDX files ----

def test_fashion_mnist_from_a_data_dir(tmp_path):
    _, (tr_x, tr_y, te_x, te_y) = write_mnist_like(tmp_path)  # mixes raw and .gz names
    train, test = load_dataset("fashion-mnist", data_dir=tmp_path)
    np.testing.assert_array_equal(train.images, tr_x)
    np.testing.assert_array_equal(train.labels, tr_y)
    np.testing.assert_array_equal(test.images, te_x)
    np.testing.assert_array_equal(test.labels, te_y)
    assert (train.name, test.name) == ("fashion-mnist-train", "fashion-mnist-test")


def test_data_dir_missing_files_is_an_error_not_a_fallback(tmp_path):
    write_mnist_like(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError, match=r"missing: t10k-labels-idx1-ubyte\[\.gz\]"):
        load_dataset("mnist", data_dir=tmp_path, offline=False)


def test_data_dir_that_does_not_exist(tmp_path):
    with pytest.raises(DataError, match="data_dir must be an existing folder.*nowhere"):
        load_dataset("mnist", data_dir=tmp_path / "nowhere")


def test_images_and_labels_of_different_lengths(tmp_path):
    write_mnist_like(tmp_path, compress=(False,) * 4)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(11, np.uint8))  # 12 images
    with pytest.raises(DataError, match="holds 12 images but .* holds 11 labels"):
        load_dataset("mnist", data_dir=tmp_path)


def test_swapped_files_are_named(tmp_path):
    write_mnist_like(tmp_path, compress=(False,) * 4)
    a, b = tmp_path / "train-images-idx3-ubyte", tmp_path / "train-labels-idx1-ubyte"
    a_bytes = a.read_bytes()
    a.write_bytes(b.read_bytes())
    b.write_bytes(a_bytes)
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte: expected an images file of shape \(N, 28, 28\), got shape \(12,\)"):
        load_dataset("mnist", data_dir=tmp_path)


def test_wrong_image_size(tmp_path):
    write_mnist_like(tmp_path, compress=(False,) * 4)
    write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((12, 32, 32), np.uint8))
    with pytest.raises(DataError, match=r"got shape \(12, 32, 32\)"):
        load_dataset("mnist", data_dir=tmp_path)


def test_labels_out_of_range(tmp_path):
    write_mnist_like(tmp_path, compress=(False,) * 4)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.full(7, 10, np.uint8))
    with pytest.raises(DataError, match="labels must lie in 0..9, got a 10"):
        load_dataset("mnist", data_dir=tmp_path)


def test_dataset_checks_its_fields_and_is_frozen():
    with pytest.raises(DataError, match=r"images must be an \(N, D\) array of uint8 or floats, got uint8 array of shape \(3, 28, 28\)"):
        Dataset(np.zeros((3, 28, 28), np.uint8), np.zeros(3, np.uint8), "x")
    with pytest.raises(DataError, match=r"images must be an \(N, D\) array of uint8 or floats, got int32"):
        Dataset(np.zeros((3, 4), np.int32), None, "x")
    with pytest.raises(DataError, match="same length, got 3 images and 2 labels"):
        Dataset(np.zeros((3, 784), np.uint8), np.zeros(2, np.uint8), "x")
    with pytest.raises(DataError, match="labels must be an integer array of shape"):
        Dataset(np.zeros((3, 784), np.uint8), np.zeros(3, np.float32), "x")
    with pytest.raises(DataError, match="labels must be >= 0, got a -1"):
        Dataset(np.zeros((3, 784), np.uint8), np.array([0, -1, 2]), "x")
    with pytest.raises(DataError, match=r"image_shape must be .* H·W·C = 784 values per row, got \(28, 27\)"):
        Dataset(np.zeros((3, 784), np.uint8), None, "x", (28, 27))
    assert Dataset(np.zeros((2, 12), np.float32), None, "x", [2, 2, 3]).image_shape == (2, 2, 3)
    ds = Dataset(np.zeros((3, 784), np.uint8), np.zeros(3, np.uint8), "x")
    with pytest.raises(dataclasses.FrozenInstanceError):
        ds.name = "y"


# ---- cache and offline ----

def test_offline_with_nothing_present_says_what_is_missing_and_how(tmp_path):
    with pytest.raises(DownloadError) as info:
        load_dataset("mnist", cache_dir=tmp_path / "c")
    msg = str(info.value)
    assert "train-images-idx3-ubyte[.gz]" in msg and str(tmp_path / "c" / "mnist") in msg
    assert "SCRATCHVAE_OFFLINE='1'" in msg and "data_dir" in msg


def test_offline_argument_overrides_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("SCRATCHVAE_OFFLINE")
    with pytest.raises(DownloadError, match="downloads are off \\(offline=True\\)"):
        load_dataset("fashion-mnist", cache_dir=tmp_path, offline=True)


def test_files_in_the_cache_load_offline(tmp_path):
    (tmp_path / "fashion-mnist").mkdir()
    _, (tr_x, *_rest) = write_mnist_like(tmp_path / "fashion-mnist")
    train, _ = load_dataset("fashion-mnist", cache_dir=tmp_path)
    np.testing.assert_array_equal(train.images, tr_x)


def test_default_cache_dir_resolution(tmp_path, monkeypatch):
    assert default_cache_dir("mnist", tmp_path / "x") == tmp_path / "x" / "mnist"
    monkeypatch.setenv("SCRATCHVAE_CACHE_DIR", str(tmp_path / "env"))
    assert default_cache_dir("mnist") == tmp_path / "env" / "mnist"
    monkeypatch.delenv("SCRATCHVAE_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir("fashion-mnist") == tmp_path / "xdg" / "scratchvae" / "fashion-mnist"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir("mnist") == tmp_path / "home" / ".cache" / "scratchvae" / "mnist"


def test_unwritable_cache_is_a_data_error_naming_it(tmp_path, monkeypatch):
    monkeypatch.setenv("SCRATCHVAE_OFFLINE", "0")
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(DataError, match=f"cannot create directory {tmp_path / 'file' / 'mnist'}"):
        load_dataset("mnist", cache_dir=tmp_path / "file")  # fails before any network


# ---- full MNIST, when SCRATCHVAE_MNIST_DIR names a folder holding it ----

def _mnist_dir():
    env = os.environ.get("SCRATCHVAE_MNIST_DIR")
    if not env:
        pytest.skip("full MNIST: set SCRATCHVAE_MNIST_DIR to a folder holding the four IDX files")
    d = Path(env).expanduser()
    if not d.is_dir():
        pytest.fail(f"SCRATCHVAE_MNIST_DIR={env} is not a folder (it should hold the four MNIST IDX files)")
    return d


def test_full_mnist_counts_and_checksums():
    d = _mnist_dir()
    train, test = load_dataset("mnist", data_dir=d)
    assert train.images.shape == (60000, 784) and test.images.shape == (10000, 784)
    np.testing.assert_array_equal(np.bincount(train.labels, minlength=10),
                                  [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949])
    np.testing.assert_array_equal(np.bincount(test.labels, minlength=10),
                                  [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009])
    for name in NAMES:
        path = d / f"{name}.gz" if (d / f"{name}.gz").exists() else d / name
        assert payload_sha256(path) == SHA256["mnist"][name], name


def test_embedded_is_a_subset_of_full_mnist():
    d = _mnist_dir()
    train, test = load_dataset("mnist", data_dir=d)
    emb_train, emb_test = load_dataset("embedded")
    with np.load(REPO / "scratchvae/data/mnist_embedded.npz", allow_pickle=False) as z:
        np.testing.assert_array_equal(emb_train.images, train.images[z["train_indices"]])
        np.testing.assert_array_equal(emb_test.labels, test.labels[z["test_indices"]])


# ---- packaging: the npz must ship in the wheel ----

def _copy_tree(dst):
    """The working tree without VCS, caches or build outputs, so builds don't touch the repo."""
    ignore = shutil.ignore_patterns(".git", "build", "dist", "*.egg-info", "__pycache__",
                                    ".hypothesis", ".pytest_cache", "runs", ".venv", "out")
    shutil.copytree(REPO, dst, ignore=ignore)
    return dst


def _setuptools_has_bdist_wheel():
    if importlib.util.find_spec("setuptools") is None:
        return False
    if importlib.util.find_spec("wheel") is not None:
        return True
    return importlib.util.find_spec("setuptools.command.bdist_wheel") is not None


@pytest.mark.skipif(not _setuptools_has_bdist_wheel(),
                    reason="building a wheel offline needs setuptools>=70.1 or the 'wheel' package")
def test_wheel_contains_the_embedded_npz(tmp_path):
    src = _copy_tree(tmp_path / "src")
    out = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "--no-index", "-q", "-w", str(out), str(src)], check=True, timeout=120)
    (wheel,) = out.glob("scratchvae-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "scratchvae/data/mnist_embedded.npz" in names
    assert "scratchvae/data/EMBEDDED.md" in names


@pytest.mark.skipif(importlib.util.find_spec("setuptools") is None, reason="needs setuptools")
def test_build_py_copies_the_embedded_npz(tmp_path):
    """What the wheel would hold, without needing the 'wheel' package: setuptools' build_py."""
    src = _copy_tree(tmp_path / "src")
    lib = tmp_path / "lib"
    subprocess.run([sys.executable, "-c", "import setuptools; setuptools.setup()", "-q",
                    "build_py", "--build-lib", str(lib)], cwd=src, check=True, timeout=120,
                   capture_output=True)
    npz = lib / "scratchvae/data/mnist_embedded.npz"
    assert npz.is_file() and npz.read_bytes() == (REPO / "scratchvae/data/mnist_embedded.npz").read_bytes()
