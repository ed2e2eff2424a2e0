"""Bring data to a model: checks, the uint8 rule, binarisation and corruption of the inputs.

Used by training, evaluation and the figures alike (it sits below all three), so a model sees
the same pixels whichever of them prepared it. The draws are the ops' own
(:func:`~scratchvae.ops.likelihoods.sample_bernoulli` for binarising), with the uniforms and
normals drawn by the caller's stream.
"""

from __future__ import annotations

import math

import numpy as np

from .backend import xp_of
from .backend.random import Stream
from .errors import InputError
from .ops.likelihoods import sample_bernoulli

STATIC_TRAIN_STREAM, STATIC_TEST_STREAM = 100, 101
"""Stream ids of the static binarisation draws (fixed per seed, so resuming repeats them)."""
BINARIZE = ("none", "static", "dynamic")


def prepare_images(images, model, what="train"):
    """Validate a dataset and bring it to the model's backend and dtype.

    Integer images (uint8 0–255) are divided by 255. Float images are used as given and
    must be finite, and values the model's likelihood can model (a Bernoulli needs [0, 1]).
    Returns a C-contiguous array of the model's dtype on the model's backend (one explicit
    host->device copy).
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
        _check_finite(x, images.dtype, model, what)
        model.likelihood.check_data(x, what)
    else:
        raise InputError(f"{what} must hold numbers (uint8 0–255 or floats), got dtype {images.dtype}")
    return b.xp.ascontiguousarray(x)


def _check_finite(x, given, model, what):
    bad = ~model.xp.isfinite(x)
    n_bad = int(bad.sum())
    if n_bad:
        first = tuple(int(i) for i in np.argwhere(model.backend.to_host(bad))[0])
        note = "" if given == model.dtype else f" after conversion to {model.dtype.name}"
        raise InputError(f"{what} holds {n_bad} non-finite values (NaN or Inf){note}; "
                         f"the first at index {first}")


def binarize_static(x, model, stream_id):
    """One fixed Bernoulli draw per pixel (a stream of its own, so resuming repeats it)."""
    u = Stream(model.seed, stream_id, xp=model.xp).uniform(x.shape, model.dtype.name)
    return sample_bernoulli(x, u, out=u)


STATIC_STREAMS = {"train": STATIC_TRAIN_STREAM, "test": STATIC_TEST_STREAM}


def prepare_split(images, model, binarize, split):
    """A split's images as training prepares them (:func:`prepare_images`), binarised once by
    the split's own static stream when ``binarize`` is not 'none': training's test split, a
    static run's training split, and every split evaluation, the codes and the figures score.
    The same draw as training's: a stream's value i depends only on i, so binarising the first
    n images gives the first n rows of the whole split's binarisation."""
    if binarize not in BINARIZE:
        raise InputError(f"binarize must be one of {', '.join(BINARIZE)}, got {binarize!r}")
    x = prepare_images(images, model, split)
    return x if binarize == "none" else binarize_static(x, model, STATIC_STREAMS[split])


def binarize_dynamic(x, u, stream):
    """A fresh Bernoulli draw of every pixel of ``x``, in place; ``u`` a scratch of x's shape."""
    stream.draw_uniform_into(u)
    return sample_bernoulli(x, u, out=x)


# -- corruption (denoising) --------------------------------------------------------------------
def corrupt_gaussian(x, scale, out, stream):
    """out = x + scale · n, n ~ N(0, I) drawn from ``stream``."""
    stream.draw_normal_into(out)
    out *= scale
    out += x
    return out


def corrupt_mask(x, p, out, stream):
    """out = x ⊙ keep, keep = 1[u > p] with u ~ U(0, 1): each pixel zeroed with probability p."""
    stream.draw_uniform_into(out)
    xp_of(out).greater(out, p, out=out)
    out *= x
    return out


CORRUPTIONS = {"gaussian": corrupt_gaussian, "mask": corrupt_mask}


def parse_corrupt(spec):
    """'none' | 'gaussian:S' (add S·N(0,1)) | 'mask:P' (zero each pixel with probability P)
    -> ('none', 0.0) or (kind, value)."""
    if spec == "none":
        return ("none", 0.0)
    kind, _, val = str(spec).partition(":")
    try:
        v = float(val)
    except ValueError:
        v = float("nan")
    if kind == "gaussian" and v > 0 and math.isfinite(v):
        return ("gaussian", v)
    if kind == "mask" and 0 < v < 1:
        return ("mask", v)
    raise InputError(f"corrupt must be 'none', 'gaussian:S' (S > 0) or 'mask:P' (0 < P < 1), got {spec!r}")

