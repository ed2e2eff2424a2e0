"""Codes out and back: the posterior's parameters of a dataset's images, and images from codes.

:func:`encode_images` gives, for every image, the parameters of q(z|x) under the names the
posterior uses (``mu`` and ``logvar`` for the diagonal Gaussian, ``mu`` and ``scale_tril``
for the full-covariance one, ``mu`` alone for a plain autoencoder's point), the labels as
``y`` when there are any, and with ``sample`` one ``z`` ~ q(z|x) per image from the model's
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
from .evaluate import EVAL_BATCH


def encode_images(model, x, labels=None, sample=False, batch=EVAL_BATCH):
    """{name: host array} of q(z|x) for the prepared images ``x`` (N, D) on the model's backend."""
    names = model.posterior.param_names
    parts = {name: [] for name in names + (("z",) if sample else ())}
    if sample and not model.posterior.stochastic:
        raise InputError("--sample draws z ~ q(z|x); a plain autoencoder ('ae') has no q(z|x), its code is mu")
    for i in range(0, x.shape[0], batch):
        params = model.encode(x[i:i + batch])
        for name, value in zip(names, params):
            parts[name].append(model.backend.to_host(value))
        if sample:
            eps = model.rng["eval"].normal(params[0].shape, model.dtype.name)
            parts["z"].append(model.backend.to_host(model.posterior.sample(params, eps)))
    codes = {name: np.concatenate(values) for name, values in parts.items()}
    if labels is not None:
        codes["y"] = np.asarray(labels)
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
    z = np.ascontiguousarray(z, dtype=model.dtype)
    out = [model.backend.to_host(model.decode_mean(model.backend.asarray(z[i:i + batch])))
           for i in range(0, len(z), batch)]
    return np.concatenate(out), which


def write_codes(path, codes, meta):
    """Write ``codes`` ({name: array}) and JSON ``meta`` to the .npz ``path`` (atomically)."""
    return save_checkpoint(Path(path), {k: np.ascontiguousarray(v) for k, v in codes.items()}, meta)


def read_codes(path):
    """{name: array} of an .npz of codes: one :func:`write_codes` wrote (its metadata left out), or
    any plain .npz of arrays (an edited copy saved with ``np.savez`` or ``np.savez_compressed``)."""
    codes = read_npz(path, what="codes", error=InputError, compressed=True)
    codes.pop(META_KEY, None)
    return codes
