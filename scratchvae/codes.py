"""Codes out and back: the posterior's parameters of a dataset's images, and images from codes.

:func:`encode_images` gives, for every image, the parameters of q(z|x) under the names the
posterior uses (``mu`` and ``logvar`` for the diagonal Gaussian, ``mu`` and ``scale_tril``
for the full-covariance one, ``mu`` alone for a plain autoencoder's point), the labels as
``y`` when there are any (and ``classes``, the name of each label, where the data name them:
``classes[y]`` is an image folder's sub-folder), and with ``sample`` one ``z`` ~ q(z|x) per image from the model's
'eval' stream. :func:`decode_codes` turns edited codes back into images: it decodes ``z``
when the codes hold one, else ``mu``, and says which (the attribute arithmetic of the figures,
done by hand: encode, move the codes, decode). A model of several stochastic layers names each
layer's codes by its number (``mu1``, ``logvar1``, ``z1``, ``mu2``, …), and ``decode_codes``
decodes the layer it is given. ``write_codes`` / ``read_codes`` keep codes
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
    if model.chain is not None:
        codes = _encode_layers(model, x, sample, batch)
    else:
        codes = _encode_one(model, x, sample, batch)
    if labels is not None:
        codes["y"] = np.asarray(labels)
        if classes is not None:
            codes["classes"] = np.asarray([str(c) for c in classes])
    return codes


def _encode_one(model, x, sample, batch):
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
    return codes


def _encode_layers(model, x, sample, batch):
    """Each stochastic layer's codes, named by layer (mu1, logvar1, mu2, …): up the means' path
    (q(h_l | μ_{l−1})), or with ``sample`` up one drawn chain, h_l ~ q(h_l | h_{l−1}) (z1, z2, …)."""
    chain, parts = model.chain, {}
    for i in range(0, x.shape[0], batch):
        params, codes = chain.encode_layers(model, x[i:i + batch], model.rng["eval"] if sample else None)
        for l, (p, h) in enumerate(zip(params, codes), 1):
            named = [(f"{name}{l}", a) for name, a in zip(model.posterior.param_names, p)]
            for name, a in named + ([(f"z{l}", h)] if sample else []):
                parts.setdefault(name, []).append(model.backend.to_host(a))
    return {name: np.concatenate(a) for name, a in parts.items()}


def decode_codes(model, codes, batch=EVAL_BATCH, layer=None):
    """(decoder means (N, D) host float, which) of ``codes``: ``z`` if present, else ``mu``.

    Several stochastic layers: the codes of ``layer`` (default 1), ``z<layer>`` if present, else
    ``mu<layer>``; above the first they reach h_1 through each conditional prior's mean,
    E[h_{l−1} | h_l], and ``which`` says so."""
    chain = model.chain
    if chain is None and layer not in (None, 1):
        raise InputError(f"layer must be 1: the model has one stochastic layer, got {layer!r}")
    if chain is not None:
        top = len(chain.latents)
        if layer is None:
            layer = 1
        elif isinstance(layer, bool) or not isinstance(layer, (int, np.integer)) or not 1 <= layer <= top:
            raise InputError(f"layer must be a stochastic layer, 1 to {top}, got {layer!r}")
    suffix = "" if chain is None else str(layer)
    width = model.latent if chain is None else chain.latents[layer - 1]
    which = next((n + suffix for n in ("z", "mu") if n + suffix in codes), None)
    if which is None:
        raise InputError(f"codes must hold an array z{suffix} or mu{suffix} (N, {width}), got "
                         f"{', '.join(sorted(codes)) or 'none'}")
    z = np.asarray(codes[which])
    if z.ndim != 2 or z.shape[1] != width or len(z) == 0 or z.dtype.kind != "f":
        raise InputError(f"codes {which} must be a float array of shape (N, {width}) with N ≥ 1, got "
                         f"{z.dtype} {z.shape}")
    if not np.isfinite(z).all():
        raise InputError(f"codes {which} hold non-finite values (NaN or Inf)")
    if chain is not None and layer > 1:
        z = np.concatenate([model.backend.to_host(model.down(model.backend.asarray(
            np.ascontiguousarray(z[i:i + batch], dtype=model.dtype)), layer)) for i in range(0, len(z), batch)])
        which += " (down to h1 through the conditional priors' means)"
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
