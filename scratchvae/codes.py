"""Codes out and back: the posterior's parameters of a dataset's images, and images from codes.

:func:`encode_images` gives, for every image, the parameters of q(z|x) under the names the
posterior uses (``mu`` and ``logvar`` for the diagonal Gaussian, ``mu`` and ``scale_tril``
for the full-covariance one, ``mu`` alone for a plain autoencoder's point), the labels as
``y`` when there are any (and ``classes``, the name of each label, where the data name them:
``classes[y]`` is an image folder's sub-folder), and with ``sample`` one ``z`` ~ q(z|x) per image from the model's
'eval' stream. :func:`decode_codes` turns edited codes back into images: it decodes ``z``
when the codes hold one, else ``mu``, and says which (the attribute arithmetic of the figures,
done by hand: encode, move the codes, decode). ``write_codes`` / ``read_codes`` keep codes
in an ``.npz`` of plain arrays (plus scratchvae's metadata entry; nothing pickled).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .checkpoint import META_KEY, read_npz, save_checkpoint
from .errors import InputError


EVAL_BATCH = 1000
"""Images (or codes) per encoder (decoder) call when a whole split goes through a model."""


def encode_batched(model, x, batch=EVAL_BATCH):
    """The posterior's parameters of the prepared images ``x`` (N, D), each a backend array
    (None where the posterior has no second one), encoded ``batch`` images at a time: the one
    batched encode of evaluation, the figures and the codes."""
    parts = [model.encode(x[i:i + batch]) for i in range(0, x.shape[0], batch)]
    return tuple(None if p[0] is None else model.xp.concatenate(p, axis=0) for p in zip(*parts))


def decode_batched(model, z, batch=EVAL_BATCH):
    """Decoder means E[x|z] of host codes ``z`` (N, L) as one host array of the model's dtype,
    decoded ``batch`` codes at a time: the one batched decode of the figures and the codes."""
    z = np.ascontiguousarray(z, dtype=model.dtype)
    return np.concatenate([model.backend.to_host(model.decode_mean(model.backend.asarray(z[i:i + batch])))
                           for i in range(0, len(z), batch)])


def encode_images(model, x, labels=None, sample=False, batch=EVAL_BATCH, classes=None):
    """{name: host array} of q(z|x) for the prepared images ``x`` (N, D) on the model's backend:
    the posterior's parameters under its names, ``y`` the labels if given (with ``classes``, the
    name of each label value, as a string array ``classes``), and with ``sample`` one z ~ q(z|x)
    per image from the model's 'eval' stream (drawn ``batch`` images at a time)."""
    params = encode_batched(model, x, batch)
    codes = {name: model.backend.to_host(p) for name, p in zip(model.posterior.param_names, params)}
    if sample:
        z = []
        for i in range(0, x.shape[0], batch):
            rows = tuple(None if p is None else p[i:i + batch] for p in params)
            eps = model.posterior.draw_noise(model.rng["eval"], rows[0].shape, model.dtype.name)
            if eps is None:
                raise InputError("--sample draws z ~ q(z|x); a plain autoencoder ('ae') has no q(z|x), "
                                 "its code is mu")
            z.append(model.backend.to_host(model.posterior.sample(rows, eps)))
        codes["z"] = np.concatenate(z)
    if labels is not None:
        codes["y"] = np.asarray(labels)
        if classes is not None:
            codes["classes"] = np.asarray([str(c) for c in classes])
    return codes


def decode_codes(model, codes, batch=EVAL_BATCH):
    """(decoder means (N, D) host float, which) of ``codes``: ``z`` if present, else ``mu``."""
    which = "z" if "z" in codes else "mu" if "mu" in codes else None
    if which is None:
        raise InputError(f"codes must hold an array z or mu (N, {model.latent}), got {', '.join(sorted(codes)) or 'none'}")
    z = np.asarray(codes[which])
    if z.ndim != 2 or z.shape[1] != model.latent or len(z) == 0 or z.dtype.kind != "f":
        raise InputError(f"codes {which} must be a float array of shape (N, {model.latent}) with N ≥ 1, got "
                         f"{z.dtype} {z.shape}")
    if not np.isfinite(z).all():
        raise InputError(f"codes {which} hold non-finite values (NaN or Inf)")
    return decode_batched(model, z, batch), which


def write_codes(path, codes, meta):
    """Write ``codes`` ({name: array}) and JSON ``meta`` to the .npz ``path`` (atomically)."""
    return save_checkpoint(Path(path), {k: np.ascontiguousarray(v) for k, v in codes.items()}, meta, text=True)


def read_codes(path):
    """{name: array} of an .npz of codes: one :func:`write_codes` wrote (its metadata left out), or
    any plain .npz of arrays (an edited copy saved with ``np.savez`` or ``np.savez_compressed``)."""
    codes = read_npz(path, what="codes", error=InputError, compressed=True)
    codes.pop(META_KEY, None)
    return codes
