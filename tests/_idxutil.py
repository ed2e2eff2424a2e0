"""Helpers for tests: build small IDX files (raw or gzip) and MNIST-like folders of them."""

import gzip
import struct

import numpy as np

NAMES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def idx_header(dims, *, type_code=0x08):
    """``00 00 type ndims`` followed by the big-endian uint32 ``dims``."""
    return bytes([0, 0, type_code, len(dims)]) + struct.pack(f">{len(dims)}I", *dims)


def idx_bytes(arr):
    """The IDX encoding of a uint8 array."""
    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    return idx_header(arr.shape) + arr.tobytes()


def gz(data):
    """Gzip ``data`` with a fixed mtime, so the bytes are reproducible."""
    return gzip.compress(data, mtime=0)


def write_idx(path, arr, *, compress=False):
    """Write ``arr`` as IDX to ``path`` (gzip-compressed if ``compress``); return the path."""
    data = idx_bytes(arr)
    path.write_bytes(gz(data) if compress else data)
    return path


def synthetic_split(n, seed):
    """``n`` random 28x28 uint8 images, flattened, and labels in 0..9."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 784), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n, dtype=np.uint8)
    return images, labels


def write_mnist_like(folder, *, n_train=12, n_test=7, compress=(True, False, True, False)):
    """Write the four IDX files of a tiny MNIST-like dataset into ``folder``.

    ``compress`` says, per file in :data:`NAMES` order, whether to gzip it (adding ``.gz``).
    Returns ``{name: raw IDX bytes}`` and the arrays ``(train_images, train_labels,
    test_images, test_labels)`` with images flattened to (N, 784).
    """
    tr_x, tr_y = synthetic_split(n_train, 1)
    te_x, te_y = synthetic_split(n_test, 2)
    arrays = (tr_x.reshape(-1, 28, 28), tr_y, te_x.reshape(-1, 28, 28), te_y)
    raw = {}
    for name, arr, c in zip(NAMES, arrays, compress):
        raw[name] = idx_bytes(arr)
        (folder / (name + ".gz" if c else name)).write_bytes(gz(raw[name]) if c else raw[name])
    return raw, (tr_x, tr_y, te_x, te_y)
