"""Your own data: an ``.npz`` of arrays or a folder of images, and a seeded test split.

:func:`load_path` reads either and returns ``(train, test)`` :class:`~scratchvae.data.Dataset`
pairs:

* **an .npz file** with ``x_train`` and optionally ``x_test``, ``y_train``, ``y_test``. Pixels
  are uint8 0–255 or floats in [0, 1]; shapes (N, D) for flat vectors, (N, H, W) or
  (N, H, W, C) with C = 1 or 3 for images (the image shape is kept for the figures; flat data
  get one only from ``image_shape``). No pickled objects are read.
* **a folder of PNG/JPEG images** of one size, grayscale or RGB (read with Pillow), either all
  in the folder itself (unlabelled) or in one sub-folder per class (labels 0, 1, ... in the
  sorted order of the sub-folder names as strings, which become ``classes``: folders ``2``,
  ``9``, ``10`` are labels 1, 2, 0).

**Transparency, one rule for both** (:func:`drop_opaque_alpha`): an alpha channel (an .npz's
C = 2 or 4, an image with transparency data) is dropped where every pixel is opaque (255, or 1.0
for floats), since it says nothing then; where any pixel is transparent the data are refused:
the models see no alpha, so flatten such images onto a background first.

Data without a test split get one: ``test_fraction`` (default 0.1) of the training images,
chosen by a permutation of a Philox stream of ``seed`` (stream :data:`SPLIT_STREAM`), so the
same seed gives the same split on every machine. Every problem is a
:class:`~scratchvae.errors.DataError` that names the file and says what was expected; nothing
is written.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from scratchvae.backend.random import Stream
from scratchvae.checkpoint import read_npz
from scratchvae.data.dataset import Dataset, check_image_shape
from scratchvae.data.idx import find_idx_files
from scratchvae.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
SPLIT_STREAM = 300
"""Stream id of the test split's permutation."""
DEFAULT_TEST_FRACTION = 0.1
NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")


def load_path(path, *, test_fraction=None, seed=0, image_shape=None):
    """``(train, test)`` from an .npz file or a folder of images (see the module docstring)."""
    path = Path(path).expanduser()
    if path.is_dir():
        found, _ = find_idx_files(path)
        if found:
            raise DataError(f"{path} holds IDX files ({', '.join(sorted(found))}): name the dataset "
                            f"('mnist' or 'fashion-mnist') and pass this folder as data_dir (--data-dir)")
        if image_shape is not None:
            raise DataError(f"image_shape (--image-shape) is for flat arrays; the images of {path} "
                            f"have their own shape")
        train, test = load_image_folder(path), None
    elif path.is_file() and path.suffix.lower() == ".npz":
        train, test = load_npz(path, image_shape)
    elif path.exists():
        raise DataError(f"dataset {str(path)!r} must be an .npz file or a folder of PNG/JPEG images, "
                        f"got a file of another kind")
    else:
        raise DataError(f"dataset {str(path)!r} is neither a built-in dataset nor an existing .npz file "
                        f"or folder of images")
    if test is not None:
        if test_fraction is not None:
            raise DataError(f"{path} has its own test split (x_test); test_fraction (--test-fraction) "
                            f"applies only to data without one")
        return train, test
    return split_test(train, DEFAULT_TEST_FRACTION if test_fraction is None else test_fraction, seed)


def split_test(data, fraction, seed):
    """Hold out ``round(fraction · N)`` (at least 1) rows of ``data`` as the test set, chosen by
    a permutation of stream :data:`SPLIT_STREAM` of ``seed``; both parts keep the data's order."""
    if not (isinstance(fraction, (int, float)) and 0 < fraction < 1):
        raise DataError(f"test_fraction (--test-fraction) must be a number in (0, 1), got {fraction!r}")
    n = len(data)
    n_test = max(1, round(fraction * n))
    if n - n_test < 1:
        raise DataError(f"{data.name}: {n} image(s) cannot be split into a training and a test set "
                        f"with test_fraction (--test-fraction) {fraction}")
    perm = Stream(seed, SPLIT_STREAM).permutation(n)
    test_idx, train_idx = np.sort(perm[:n_test]), np.sort(perm[n_test:])
    return (data.take(train_idx, f"{data.name}-train"),
            data.take(test_idx, f"{data.name}-test", held_out=float(fraction)))


# -- .npz ------------------------------------------------------------------------------------------
def load_npz(path, image_shape=None):
    """``(train, test or None)`` from the arrays of an .npz file (see the module docstring)."""
    arrays = read_npz(path, what="dataset (--dataset)", error=DataError, names=NPZ_KEYS, compressed=True)
    if "x_train" not in arrays:
        raise DataError(f"{path} must hold an array x_train (and optionally x_test, y_train, y_test), "
                        f"got {', '.join(sorted(arrays)) or 'none of them'}")
    for y, x in (("y_train", "x_train"), ("y_test", "x_test")):
        if y in arrays and x not in arrays:
            raise DataError(f"{path} holds {y} but no {x}")
    x, shape = _pixels(arrays["x_train"], f"{path}: x_train", image_shape)
    train = Dataset(x, _labels(arrays.get("y_train"), f"{path}: y_train", len(x)), path.stem, shape)
    if "x_test" not in arrays:
        return train, None
    xt, test_shape = _pixels(arrays["x_test"], f"{path}: x_test", image_shape)
    if xt.shape[1] != x.shape[1] or test_shape != shape:
        raise DataError(f"{path}: x_test must have x_train's image shape {shape or (x.shape[1],)}, "
                        f"got {test_shape or (xt.shape[1],)}")
    return train, Dataset(xt, _labels(arrays.get("y_test"), f"{path}: y_test", len(xt)), f"{path.stem}-test", shape)


def _pixels(a, what, image_shape):
    """(rows (N, D), image shape or None) of an array of pixels, checked."""
    if a.dtype != np.uint8 and a.dtype.kind != "f":
        raise DataError(f"{what} must hold uint8 pixels (0–255) or floats in [0, 1], got dtype {a.dtype}")
    if a.ndim not in (2, 3, 4) or len(a) == 0 or 0 in a.shape:
        raise DataError(f"{what} must have shape (N, D), (N, H, W) or (N, H, W, C) with N ≥ 1, "
                        f"got {a.shape}")
    if a.ndim == 4 and a.shape[3] not in (1, 2, 3, 4):
        raise DataError(f"{what}: images (N, H, W, C) must have C = 1 (grayscale) or 3 (RGB), or 2 or 4 with an "
                        f"opaque alpha channel, got {a.shape}")
    if a.dtype.kind == "f":
        _check_unit_floats(a, what)
    if a.ndim == 4 and a.shape[3] in (2, 4):
        a = drop_opaque_alpha(a, what)
    if a.ndim > 2 and image_shape is not None:
        raise DataError(f"{what} are images of shape {a.shape[1:]}; image_shape (--image-shape) is for flat arrays")
    shape = a.shape[1:] if a.ndim > 2 else (check_image_shape(image_shape, a.shape[1]) if image_shape else None)
    if shape is not None and len(shape) == 3 and shape[2] == 1:
        shape = shape[:2]
    return np.ascontiguousarray(a.reshape(len(a), -1)), shape


def drop_opaque_alpha(a, what):
    """Images (…, C) with C = 2 or 4 (grayscale or RGB, then alpha) without their alpha channel,
    once every pixel is opaque (255 for uint8, 1.0 for floats); DataError naming the first
    transparent pixel otherwise (the module's one rule for transparency)."""
    alpha = a[..., -1]
    clear = alpha != (255 if a.dtype == np.uint8 else 1.0)
    if clear.any():
        first = tuple(int(i) for i in np.argwhere(clear)[0])
        raise DataError(f"{what} has an alpha channel with {int(clear.sum())} transparent pixels (the first at "
                        f"{first}): the models see no transparency, so flatten the images onto a background "
                        f"first (an alpha channel that is opaque everywhere is dropped)")
    return a[..., :-1]


def _check_unit_floats(a, what):
    bad = ~np.isfinite(a)
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise DataError(f"{what} holds {int(bad.sum())} non-finite values (NaN or Inf); the first at index {first}")
    lo, hi = float(a.min()), float(a.max())
    if lo < 0 or hi > 1:
        raise DataError(f"{what}: float pixels must lie in [0, 1], got values in [{lo:g}, {hi:g}] "
                        f"(uint8 data: store them as uint8 0–255)")


def _labels(y, what, n):
    if y is None:
        return None
    if y.ndim != 1 or len(y) != n or y.dtype.kind not in "ui":
        raise DataError(f"{what} must be an integer array of shape ({n},) (one label per image), "
                        f"got {y.dtype} {y.shape}")
    if y.size and int(y.min()) < 0:
        raise DataError(f"{what}: labels must be >= 0, got {int(y.min())}")
    return y


# -- a folder of images --------------------------------------------------------------------------------
def load_image_folder(path):
    """A Dataset of every PNG/JPEG image in ``path`` or in its class sub-folders (uint8)."""
    path = Path(path)
    files, labels, classes = _image_files(path)
    first = None
    rows = []
    for f in files:
        img = _read_image(f)
        if first is None:
            first = (f, img.shape)
        elif img.shape != first[1]:
            raise DataError(f"images in {path} must share one size and colour mode: {first[0]} is "
                            f"{_shape_text(first[1])}, {f} is {_shape_text(img.shape)}")
        rows.append(img.reshape(-1))
    shape = first[1] if len(first[1]) == 3 else first[1][:2]
    return Dataset(np.stack(rows), labels, path.name or str(path), shape, classes)


def _image_files(path):
    """(files, labels or None, class names or None) of an image folder."""
    def images(d):
        return sorted(p for p in d.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                      and not p.name.startswith("."))

    top = images(path)
    subs = sorted(d for d in path.iterdir() if d.is_dir() and not d.name.startswith(".") and images(d))
    if top and subs:
        raise DataError(f"{path} holds images both in itself and in sub-folders ({subs[0].name}, ...): "
                        f"put all images in one class sub-folder each, or all in the folder itself")
    if top:
        return top, None, None
    if not subs:
        raise DataError(f"{path} holds no PNG or JPEG images ({', '.join(IMAGE_SUFFIXES)}), in itself "
                        f"or in sub-folders")
    files, labels = [], []
    for k, d in enumerate(subs):
        found = images(d)
        files += found
        labels += [k] * len(found)
    return files, np.asarray(labels, dtype=np.int64), tuple(d.name for d in subs)


def _read_image(f):
    """One image as uint8 (H, W) grayscale or (H, W, 3) RGB (palettes resolved; an alpha channel
    as :func:`drop_opaque_alpha` says)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(f) as im:
            gray = im.mode in ("1", "L", "LA", "I", "I;16", "F")
            alpha = im.mode in ("LA", "La", "PA", "RGBA", "RGBa") or "transparency" in im.info   # Pillow 8's test
            a = np.asarray(im.convert(("LA" if gray else "RGBA") if alpha else ("L" if gray else "RGB")),
                           dtype=np.uint8)
    except (OSError, UnidentifiedImageError, ValueError) as err:
        raise DataError(f"{f} is not a readable PNG/JPEG image ({err})") from None
    if alpha:
        a = drop_opaque_alpha(a, str(f))
        return a[..., 0] if gray else a
    return a


def _shape_text(shape):
    kind = "RGB" if len(shape) == 3 else "grayscale"
    return f"{shape[1]}x{shape[0]} {kind}"
