"""Bring a dataset to a model's backend and dtype: checks, the uint8 rule, static binarisation.

Used by training, evaluation and the figures alike (it sits below all three), so a model sees
the same pixels whichever of them prepared it.
"""

from __future__ import annotations

import numpy as np

from .backend.random import Stream
from .errors import InputError

STATIC_TRAIN_STREAM, STATIC_TEST_STREAM = 100, 101
"""Stream ids of the static binarisation draws (fixed per seed, so resuming repeats them)."""


def prepare_images(images, model, what="train"):
    """Validate a dataset and bring it to the model's backend and dtype.

    Integer images (uint8 0–255) are divided by 255. Float images are used as given and
    must be finite; a Bernoulli model needs them in [0, 1]. Returns a C-contiguous array
    of the model's dtype on the model's backend (one explicit host->device copy).
    """
    b = model.backend
    if not (isinstance(images, np.ndarray) or b.owns(images)):
        if hasattr(images, "shape") and hasattr(images, "dtype"):
            b.check(what, images)   # an array of another backend: BackendError naming both
        raise InputError(f"{what} must be an array of shape (N, {model.input_dim}), got {type(images).__name__}")
    if images.ndim != 2 or images.shape[1] != model.input_dim:
        raise InputError(f"{what} must have shape (N, {model.input_dim}), got {tuple(images.shape)}")
    if images.shape[0] == 0:
        raise InputError(f"{what} is empty: expected at least one image, got shape {tuple(images.shape)}")
    kind = images.dtype.kind
    if kind in "ui":
        host = b.to_host(images) if not isinstance(images, np.ndarray) else images
        lo, hi = int(host.min()), int(host.max())
        if lo < 0 or hi > 255:
            raise InputError(f"{what}: integer images must be in 0..255 (they are divided by 255), "
                             f"got values in {lo}..{hi}")
        x = b.asarray(np.ascontiguousarray(host), dtype=model.dtype) / model.dtype.type(255)
    elif kind == "f":
        x = b.asarray(images, dtype=model.dtype) if isinstance(images, np.ndarray) else images.astype(model.dtype)
        bad = ~b.xp.isfinite(x)
        n_bad = int(bad.sum())
        if n_bad:
            first = tuple(int(i) for i in np.argwhere(b.to_host(bad))[0])
            note = "" if images.dtype == model.dtype else f" after conversion to {model.dtype.name}"
            raise InputError(f"{what} holds {n_bad} non-finite values (NaN or Inf){note}; "
                             f"the first at index {first}")
        if model.likelihood == "bernoulli":
            lo, hi = float(x.min()), float(x.max())
            if lo < 0 or hi > 1:
                raise InputError(f"{what}: a Bernoulli likelihood needs pixel values in [0, 1], got values "
                                 f"in [{lo:g}, {hi:g}]; scale the data or use likelihood='gaussian'")
    else:
        raise InputError(f"{what} must hold numbers (uint8 0–255 or floats), got dtype {images.dtype}")
    return b.xp.ascontiguousarray(x)


def binarize_static(x, model, stream_id):
    """One fixed Bernoulli draw per pixel (a stream of its own, so resuming repeats it)."""
    u = Stream(model.seed, stream_id, xp=model.xp).uniform(x.shape, model.dtype.name)
    return (u < x).astype(model.dtype)
