"""One's own data: .npz files of arrays, folders of PNG/JPEG images, and the seeded test split."""

import numpy as np
import pytest
from PIL import Image

from scratchvae.data import Dataset, load_dataset, split_test
from scratchvae.data.custom import SPLIT_STREAM, load_image_folder
from scratchvae.backend.random import Stream
from scratchvae.errors import DataError

from _idxutil import write_mnist_like


def save_npz(path, **arrays):
    np.savez(path, **arrays)
    return path


# -- .npz ---------------------------------------------------------------------------------------------
def test_npz_with_a_test_split_keeps_it_and_the_image_shape(tmp_path):
    r = np.random.default_rng(0)
    x, xt = r.integers(0, 256, (30, 5, 4, 3), dtype=np.uint8), r.integers(0, 256, (7, 5, 4, 3), dtype=np.uint8)
    y, yt = np.arange(30) % 4, np.arange(7) % 4
    train, test = load_dataset(str(save_npz(tmp_path / "rgb.npz", x_train=x, x_test=xt, y_train=y, y_test=yt)))
    assert train.images.shape == (30, 60) and train.images.dtype == np.uint8 and train.image_shape == (5, 4, 3)
    np.testing.assert_array_equal(train.images[3], x[3].reshape(-1))
    np.testing.assert_array_equal(test.labels, yt)
    assert test.image_shape == (5, 4, 3) and len(test) == 7


def test_npz_without_a_test_split_is_split_by_the_seed(tmp_path):
    x = np.linspace(0, 1, 50 * 6, dtype=np.float32).reshape(50, 6)
    path = str(save_npz(tmp_path / "flat.npz", x_train=x))
    train, test = load_dataset(path, seed=3, image_shape=(2, 3))
    assert (len(train), len(test)) == (45, 5) and train.labels is None and train.image_shape == (2, 3)
    held = np.sort(Stream(3, SPLIT_STREAM).permutation(50)[:5])      # the documented rule
    np.testing.assert_array_equal(test.images, x[held])
    again = load_dataset(path, seed=3, image_shape=(2, 3))[1]
    np.testing.assert_array_equal(again.images, test.images)        # same seed, same split
    other = load_dataset(path, seed=4)[1]
    assert not np.array_equal(other.images, test.images) and other.image_shape is None
    assert len(load_dataset(path, test_fraction=0.3)[1]) == 15


def test_grayscale_images_with_one_channel_keep_a_two_d_shape(tmp_path):
    x = np.zeros((4, 3, 2, 1), np.uint8)
    train, test = load_dataset(str(save_npz(tmp_path / "g.npz", x_train=x)), test_fraction=0.25)
    assert train.image_shape == (3, 2) and (len(train), len(test)) == (3, 1)


@pytest.mark.parametrize("arrays, message", [
    ({"x_test": np.zeros((2, 4), np.uint8)}, "must hold an array x_train"),
    ({"x_train": np.zeros((3, 4), np.int32)}, "uint8 pixels .* or floats in \\[0, 1\\], got dtype int32"),
    ({"x_train": np.full((3, 4), 1.5, np.float32)}, "float pixels must lie in \\[0, 1\\], got values in \\[1.5, 1.5\\]"),
    ({"x_train": np.array([[0.5, np.nan]], np.float32)}, "holds 1 non-finite values .* index \\(0, 1\\)"),
    ({"x_train": np.zeros((0, 4), np.uint8)}, "with N ≥ 1, got \\(0, 4\\)"),
    ({"x_train": np.zeros((3, 4), np.uint8), "y_train": np.zeros(2, np.int64)}, "y_train must be an integer array of shape \\(3,\\)"),
    ({"x_train": np.zeros((3, 2, 2), np.uint8), "x_test": np.zeros((2, 3, 3), np.uint8)}, "x_test must have x_train's image shape"),
    ({"x_train": np.zeros((3, 2, 2, 5), np.uint8)}, "must have C = 1 \\(grayscale\\) or 3 \\(RGB\\), or 2 or 4 with "
                                                    "an opaque alpha"),
    ({"x_train": np.zeros((3, 2, 2, 2), np.uint8)}, "alpha channel with 12 transparent pixels \\(the first at "
                                                    "\\(0, 0, 0\\)\\): .*flatten the images onto a background"),
    ({"x_train": np.zeros((3, 4), np.uint8), "y_test": np.zeros(3, np.int64)}, "holds y_test but no x_test"),
])
def test_bad_npz_files_are_refused_naming_the_array(arrays, message, tmp_path):
    with pytest.raises(DataError, match=message):
        load_dataset(str(save_npz(tmp_path / "bad.npz", **arrays)))


def test_test_fraction_with_a_test_split_and_bad_paths_are_refused(tmp_path):
    path = str(save_npz(tmp_path / "both.npz", x_train=np.zeros((4, 2), np.uint8), x_test=np.zeros((2, 2), np.uint8)))
    with pytest.raises(DataError, match="has its own test split .*--test-fraction"):
        load_dataset(path, test_fraction=0.2)
    for fraction in (0, 1, 1.5, "0.1"):
        with pytest.raises(DataError, match=r"test_fraction \(--test-fraction\) must be a number in \(0, 1\)"):
            load_dataset(str(save_npz(tmp_path / "one.npz", x_train=np.zeros((4, 2), np.uint8))), test_fraction=fraction)
    with pytest.raises(DataError, match="1 image\\(s\\) cannot be split"):
        load_dataset(str(save_npz(tmp_path / "single.npz", x_train=np.zeros((1, 2), np.uint8))))
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match="must be an .npz file or a folder of PNG/JPEG images"):
        load_dataset(str(tmp_path / "notes.txt"))
    (tmp_path / "broken.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match=r"broken.npz is not an .npz archive \(starts with b'not '\)"):
        load_dataset(str(tmp_path / "broken.npz"))
    with pytest.raises(DataError, match="--data-dir.* is the folder of IDX files"):
        load_dataset(path, data_dir=tmp_path)
    with pytest.raises(DataError, match=r"test_fraction \(--test-fraction\) is for one's own data"):
        load_dataset("embedded", test_fraction=0.1)


def test_compressed_npz_and_other_entries_are_read_as_before(tmp_path):
    """np.savez_compressed's files are read; entries other than x_train, ... are not read at all
    (an object array among them is no error)."""
    x = np.random.default_rng(0).integers(0, 256, (20, 6), np.uint8)
    np.savez_compressed(tmp_path / "c.npz", x_train=x, notes=np.array([{"a": 1}], dtype=object))
    train, test = load_dataset(str(tmp_path / "c.npz"))
    assert len(train) + len(test) == 20 and sorted(np.concatenate([train.images, test.images]).sum(1)) == \
        sorted(x.sum(1))


def test_npz_with_pickled_objects_is_not_read(tmp_path):
    np.savez(tmp_path / "obj.npz", x_train=np.array([{"a": 1}, None], dtype=object))
    with pytest.raises(DataError, match="entry 'x_train' holds pickled Python objects; refusing to load it"):
        load_dataset(str(tmp_path / "obj.npz"))


# -- image folders --------------------------------------------------------------------------------------
def write_image(path, array, mode):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode=mode).save(path)


def test_class_sub_folders_give_labels_and_class_names(tmp_path):
    r = np.random.default_rng(1)
    pix = {}
    for cls in ("cat", "dog"):
        for i in range(6):
            a = r.integers(0, 256, (4, 5), dtype=np.uint8)
            pix[(cls, i)] = a
            write_image(tmp_path / "pets" / cls / f"{i}.png", a, "L")
    train, test = load_dataset(str(tmp_path / "pets"), test_fraction=0.25, seed=1)
    assert train.classes == ("cat", "dog") and train.image_shape == (4, 5) and (len(train), len(test)) == (9, 3)
    both = Dataset(np.concatenate([train.images, test.images]), np.concatenate([train.labels, test.labels]), "all")
    for cls, label in (("cat", 0), ("dog", 1)):
        rows = {tuple(row) for row in both.images[both.labels == label]}
        assert rows == {tuple(pix[(cls, i)].reshape(-1)) for i in range(6)}


def test_an_unlabelled_folder_of_rgb_jpegs_and_pngs(tmp_path):
    for i in range(5):
        write_image(tmp_path / "imgs" / f"{i}.jpg", np.full((3, 2, 3), 40 * i, np.uint8), "RGB")
    write_image(tmp_path / "imgs" / "x.png", np.full((3, 2, 4), 255, np.uint8), "RGBA")   # opaque: alpha dropped
    (tmp_path / "imgs" / "README.txt").write_text("not an image")
    train, test = load_dataset(str(tmp_path / "imgs"))
    assert train.labels is None and train.image_shape == (3, 2, 3) and len(train) + len(test) == 6


@pytest.mark.parametrize("channels, mode", [(4, "RGBA"), (2, "LA")])
def test_one_rule_for_alpha_in_folders_and_npz_files(tmp_path, channels, mode):
    """An alpha channel opaque everywhere is dropped, in an image folder and an .npz alike (the
    same pixels either way); one transparent pixel is refused in both, naming it."""
    r = np.random.default_rng(2)
    pixels = r.integers(0, 256, (6, 3, 2, channels), dtype=np.uint8)
    pixels[..., -1] = 255
    for i, a in enumerate(pixels):
        write_image(tmp_path / "imgs" / f"{i}.png", a, mode)
    np.savez(tmp_path / "a.npz", x_train=pixels, x_test=pixels[:2])
    np.savez(tmp_path / "f.npz", x_train=pixels / np.float32(255), x_test=pixels[:2] / np.float32(255))
    folder = load_image_folder(tmp_path / "imgs")
    npz, _ = load_dataset(str(tmp_path / "a.npz"))
    floats, _ = load_dataset(str(tmp_path / "f.npz"))
    assert np.array_equal(folder.images, npz.images) and np.array_equal(npz.images, pixels[..., :-1].reshape(6, -1))
    assert folder.image_shape == npz.image_shape == floats.image_shape == ((3, 2, 3) if channels == 4 else (3, 2))
    pixels[4, 1, 0, -1] = 254
    write_image(tmp_path / "imgs" / "4.png", pixels[4], mode)
    np.savez(tmp_path / "a.npz", x_train=pixels)
    with pytest.raises(DataError, match=r"4.png has an alpha channel with 1 transparent pixels "
                                        r"\(the first at \(1, 0\)\)"):
        load_image_folder(tmp_path / "imgs")
    with pytest.raises(DataError, match=r"x_train has an alpha channel with 1 transparent pixels \(the first at "
                                        r"\(4, 1, 0\)\): .*flatten"):
        load_dataset(str(tmp_path / "a.npz"))


@pytest.mark.parametrize("layout, message", [
    ("mixed sizes", "must share one size and colour mode: .*a.png is 2x3 grayscale, .*b.png is 3x3 grayscale"),
    ("mixed modes", "must share one size and colour mode: .*a.png is 2x3 grayscale, .*b.png is 2x3 RGB"),
    ("empty", "holds no PNG or JPEG images"),
    ("both", "holds images both in itself and in sub-folders"),
    ("idx", "holds IDX files .*pass this folder as data_dir \\(--data-dir\\)"),
    ("broken", "is not a readable PNG/JPEG image"),
])
def test_bad_image_folders_are_refused_naming_the_files(layout, message, tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    if layout == "mixed sizes":
        write_image(d / "a.png", np.zeros((3, 2), np.uint8), "L")
        write_image(d / "b.png", np.zeros((3, 3), np.uint8), "L")
    elif layout == "mixed modes":
        write_image(d / "a.png", np.zeros((3, 2), np.uint8), "L")
        write_image(d / "b.png", np.zeros((3, 2, 3), np.uint8), "RGB")
    elif layout == "both":
        write_image(d / "a.png", np.zeros((3, 2), np.uint8), "L")
        write_image(d / "sub" / "b.png", np.zeros((3, 2), np.uint8), "L")
    elif layout == "idx":
        write_mnist_like(d)
    elif layout == "broken":
        (d / "a.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(DataError, match=message):
        load_dataset(str(d))


def test_split_test_keeps_order_and_labels(tmp_path):
    data = Dataset(np.arange(40, dtype=np.uint8).reshape(20, 2), np.arange(20) % 3, "d", None)
    train, test = split_test(data, 0.2, seed=9)
    assert (len(train), len(test)) == (16, 4)
    assert np.all(np.diff(train.images[:, 0].astype(int)) > 0) and np.all(np.diff(test.images[:, 0].astype(int)) > 0)
    np.testing.assert_array_equal(test.labels, test.images[:, 0] // 2 % 3)
    assert sorted(np.concatenate([train.images[:, 0], test.images[:, 0]]).tolist()) == list(range(0, 40, 2))
