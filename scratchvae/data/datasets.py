"""Datasets: the embedded MNIST subset, full MNIST and Fashion-MNIST.

:func:`load_dataset` returns ``(train, test)`` :class:`Dataset` pairs of uint8 arrays:
images ``(N, 784)`` (28x28, row-major, flattened here from the IDX ``(N, 28, 28)``) and
labels ``(N,)`` in 0..9. Where MNIST / Fashion-MNIST come from, in order:

1. ``data_dir`` when given: it must hold all four IDX files (raw or ``.gz``); nothing else is
   tried, so a wrong folder is an error rather than a silent switch to other data;
2. the cache ``<root>/<name>``, where ``<root>`` is ``cache_dir``, else ``$SCRATCHVAE_CACHE_DIR``,
   else ``$XDG_CACHE_HOME/scratchvae``, else ``~/.cache/scratchvae``;
3. a verified download into that cache (see :mod:`scratchvae.data.download`), unless offline
   (``offline=True``, or ``SCRATCHVAE_OFFLINE`` set to anything but ``""``/``0``/``false``/``no``/``off``).

``'embedded'`` is a 6,000-image stratified subset of MNIST shipped inside the package
(see ``EMBEDDED.md``); it needs no files and no network.
"""

import contextlib
import os
from importlib import resources
from pathlib import Path

import numpy as np

from scratchvae.data.custom import load_path
from scratchvae.data.dataset import Dataset
from scratchvae.data.download import download_dataset, verify_cached
from scratchvae.data.idx import find_idx_files, read_idx
from scratchvae.errors import DataError, DownloadError

#: Names accepted by :func:`load_dataset`.
DATASETS = ("embedded", "mnist", "fashion-mnist")
EMBEDDED_RESOURCE = "mnist_embedded.npz"
_SIDE = 28
_N_CLASSES = 10
_FALSE = ("", "0", "false", "no", "off")


def load_dataset(name, data_dir=None, *, cache_dir=None, offline=None, progress=None,
                 test_fraction=None, seed=0, image_shape=None):
    """Load ``(train, test)``: a built-in dataset, or one's own data at a path.

    ``name``: 'embedded', 'mnist' or 'fashion-mnist' (the built-in names win), or the path of
    an .npz file or a folder of images (:mod:`scratchvae.data.custom`; ``test_fraction``,
    ``seed`` and ``image_shape`` are for those). ``progress(done_bytes, total_bytes_or_None)``
    is called while a file downloads. Raises :class:`DataError` for missing or malformed
    files, or an unwritable cache; :class:`DownloadError` when files are missing and
    downloads are off or fail; :class:`ChecksumError` when a download does not match its
    pinned checksum.
    """
    if name not in DATASETS:
        if not Path(str(name)).expanduser().exists():
            raise DataError(f"dataset must be one of {', '.join(map(repr, DATASETS))} or the path of an "
                            f".npz file or a folder of images, got {str(name)!r}, which does not exist")
        if data_dir is not None:
            raise DataError(f"data_dir (--data-dir) is the folder of IDX files for 'mnist' and "
                            f"'fashion-mnist', got it with dataset {str(name)!r}")
        return load_path(name, test_fraction=test_fraction, seed=seed, image_shape=image_shape)
    for arg, value in (("test_fraction (--test-fraction)", test_fraction),
                       ("image_shape (--image-shape)", image_shape)):
        if value is not None:
            raise DataError(f"{arg} is for one's own data; {name!r} has its own test split and 28x28 images")
    if name == "embedded":
        if data_dir is not None:
            raise DataError(f"data_dir is only used by 'mnist' and 'fashion-mnist', got "
                            f"data_dir={str(data_dir)!r} with the 'embedded' dataset")
        return load_embedded()
    if data_dir is not None:
        data_dir = Path(data_dir).expanduser()
        if not data_dir.is_dir():
            raise DataError(f"data_dir must be an existing folder holding the {name} IDX "
                            f"files, got {str(data_dir)!r}, which is not a folder")
        found, missing = find_idx_files(data_dir)
        if missing:
            raise DataError(f"data_dir {data_dir} must hold the four {name} IDX files, "
                            f"missing: {_wanted(missing)}")
        return _load_split_pair(found, name)
    where = default_cache_dir(name, cache_dir)
    found, missing = find_idx_files(where)
    if missing:
        off, why = _offline(offline)
        if off:
            raise DownloadError(
                f"{name}: {_wanted(missing)} not found in the cache {where} and downloads are "
                f"off ({why}); pass data_dir=FOLDER holding the four IDX files, copy them into "
                f"{where}, or allow downloads")
        _download_into(name, where, missing, progress)
        found, missing = find_idx_files(where)
        if missing:  # e.g. a concurrent process removed them; say so rather than KeyError
            raise DataError(f"{name}: {_wanted(missing)} missing from {where} after download")
    verify_cached(where, found)
    return _load_split_pair(found, name)


def _download_into(name, where, names, progress):
    """Download ``names`` of ``name`` into the cache folder ``where``. If that fails, the folders
    made for it go again where they are still empty, and the error says how to do without."""
    made = [p for p in (where, *where.parents) if not p.exists()]        # the deepest first
    try:
        download_dataset(name, where, names=names, progress=progress)
    except DataError as err:
        for folder in made:
            with contextlib.suppress(OSError):
                folder.rmdir()
        if "data_dir" in str(err):
            raise
        raise type(err)(f"{err}; to do without the download, fetch the four IDX files (raw or .gz) some other "
                        f"way and pass their folder as data_dir=FOLDER") from None


def load_embedded():
    """The packaged subset: 500 train and 100 test images per digit (see ``EMBEDDED.md``)."""
    res = resources.files("scratchvae.data").joinpath(EMBEDDED_RESOURCE)
    try:
        with res.open("rb") as f, np.load(f, allow_pickle=False) as z:
            arrays = {k: z[k] for k in ("train_images", "train_labels",
                                        "test_images", "test_labels")}
    except (OSError, KeyError, ValueError) as err:
        raise DataError(f"the packaged {EMBEDDED_RESOURCE} is unreadable or incomplete "
                        f"(expected train/test images and labels): {err}") from None
    return (Dataset(arrays["train_images"], arrays["train_labels"], "embedded-train", (_SIDE, _SIDE)),
            Dataset(arrays["test_images"], arrays["test_labels"], "embedded-test", (_SIDE, _SIDE)))


def default_cache_dir(name, cache_dir=None):
    """``<root>/<name>`` with root = ``cache_dir``, ``$SCRATCHVAE_CACHE_DIR``,
    ``$XDG_CACHE_HOME/scratchvae`` or ``~/.cache/scratchvae``, the first one set."""
    if cache_dir is None:
        cache_dir = os.environ.get("SCRATCHVAE_CACHE_DIR") or None
    if cache_dir is None:
        xdg = os.environ.get("XDG_CACHE_HOME")
        cache_dir = Path(xdg) / "scratchvae" if xdg else Path.home() / ".cache" / "scratchvae"
    return Path(cache_dir).expanduser() / name


def load_idx_split(images_path, labels_path, name):
    """Read an images IDX (N, 28, 28) and a labels IDX (N,) into a :class:`Dataset`."""
    images = read_idx(images_path)
    if images.ndim != 3 or images.shape[1:] != (_SIDE, _SIDE):
        raise DataError(f"{images_path}: expected an images file of shape (N, 28, 28), got "
                        f"shape {images.shape}")
    labels = read_idx(labels_path)
    if labels.ndim != 1:
        raise DataError(f"{labels_path}: expected a labels file of shape (N,), got shape "
                        f"{labels.shape}")
    if len(images) != len(labels):
        raise DataError(f"{name}: {images_path} holds {len(images)} images but {labels_path} "
                        f"holds {len(labels)} labels: expected the same number")
    if labels.size and int(labels.max()) >= _N_CLASSES:
        raise DataError(f"{labels_path}: labels must lie in 0..{_N_CLASSES - 1}, got a {int(labels.max())}")
    return Dataset(images.reshape(len(images), _SIDE * _SIDE), labels, name, (_SIDE, _SIDE))


def _load_split_pair(found, name):
    return (load_idx_split(found["train-images-idx3-ubyte"], found["train-labels-idx1-ubyte"],
                           f"{name}-train"),
            load_idx_split(found["t10k-images-idx3-ubyte"], found["t10k-labels-idx1-ubyte"],
                           f"{name}-test"))


def _offline(offline):
    if offline is not None:
        return bool(offline), f"offline={offline!r}"
    env = os.environ.get("SCRATCHVAE_OFFLINE", "")
    return env.strip().lower() not in _FALSE, f"SCRATCHVAE_OFFLINE={env!r}"


def _wanted(names):
    return ", ".join(f"{n}[.gz]" for n in names)
