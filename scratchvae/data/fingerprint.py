"""What a run records of its data, to know them again: their fingerprint, and where they are now.

A run's test split of one's own data is drawn from the number of images (see
:func:`~scratchvae.data.custom.split_test`), so data that changed under a run (an image added to
its folder) would move test images into training without a word. :func:`fingerprint` is what a
run records: per split the number of images and the SHA-256 of the images' and labels' bytes
(their dtype and shape included), a few milliseconds for the embedded set. Before a run is
continued, scored or drawn, :func:`check_fingerprint` compares the data read now with it and
names each split that differs; a run recorded without one (made before it existed) is not
checked. :func:`locate` says where a run's data are read: where they were, or, after one's
own data moved, at the path ``--dataset`` names or in the folder ``--data-dir`` names.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from scratchvae.data.datasets import DATASETS
from scratchvae.errors import DataError

SPLITS = ("train", "test")


def _digest(split):
    h = hashlib.sha256()
    for a in (split.images, split.labels):
        if a is not None:
            a = np.ascontiguousarray(a)
            h.update(f"{a.dtype.str} {a.shape};".encode())
            h.update(a.data)
    return h.hexdigest()


def fingerprint(train, test):
    """``{"train": {"images": N, "sha256": hex}, "test": {...}}`` of two Datasets."""
    return {name: {"images": len(split), "sha256": _digest(split)} for name, split in zip(SPLITS, (train, test))}


def data_record(train, test):
    """What a run's config.json records of its data (``"data"``): the image shape, the class names
    and the :func:`fingerprint`."""
    return {"image_shape": train.image_shape, "classes": train.classes, "fingerprint": fingerprint(train, test)}


def check_fingerprint(recorded, train, test, where):
    """Raise DataError naming each split of ``train``, ``test`` whose number of images or content
    differs from the ``recorded`` fingerprint (None: nothing recorded, nothing checked);
    ``where`` names the data."""
    if recorded is None:
        return
    now, diffs = fingerprint(train, test), []
    for name in SPLITS:
        had, has = recorded.get(name) or {}, now[name]
        if had.get("images") != has["images"]:
            diffs.append(f"{name} split: {has['images']} images, the run's had {had.get('images')}")
        elif had.get("sha256") != has["sha256"]:
            diffs.append(f"{name} split: the same number of images ({has['images']}) with other pixels or labels")
    if diffs:
        raise DataError(f"{where} holds other data than the run was made on: {'; '.join(diffs)} "
                        f"(a run continues, and is scored, on the data and split it was made on)")


def locate(recorded, recorded_dir=None, dataset=None, data_dir=None, fingerprinted=True):
    """``(dataset, data_dir)`` to read a run's data from: the run recorded ``recorded`` (a built-in
    name or a path) and ``recorded_dir`` (the IDX folder of mnist / fashion-mnist, if given).

    ``dataset`` (--dataset) and ``data_dir`` (--data-dir) say where they are now: for a built-in
    dataset, its name (the run's own) and the folder of its IDX files; for one's own data, which
    may have moved, their path, or the folder now holding them (by their recorded name).
    Data at another path than the recorded one can only be checked, so are only accepted,
    where the run is ``fingerprinted``.
    """
    if recorded in DATASETS:
        if dataset is not None and dataset != recorded:
            raise DataError(f"--dataset {dataset}: the run was made on {recorded}")
        if data_dir is not None and recorded == "embedded":
            raise DataError("--data-dir applies to the datasets read from IDX files (mnist, fashion-mnist) and "
                            "to one's own data, not to embedded")
        return recorded, data_dir if data_dir is not None else recorded_dir
    if dataset in DATASETS:
        raise DataError(f"--dataset {dataset}: the run was made on one's own data, {recorded}")
    if dataset is not None and data_dir is not None:
        raise DataError("give --dataset or --data-dir, not both: either names where the run's data are now")
    path = Path(dataset) if dataset is not None else Path(data_dir) / Path(recorded).name if data_dir else None
    if path is None or path.expanduser().resolve() == Path(recorded):
        if not Path(recorded).exists():
            raise DataError(f"the run's data {recorded} are not there (moved?): name their new place with "
                            f"--dataset PATH or --data-dir DIR")
        return recorded, None
    if not fingerprinted:
        raise DataError(f"the run records no fingerprint of its data (it predates them), so data at another path "
                        f"cannot be checked against it: put its data back at {recorded}")
    return str(path), None
