"""The figures of decoded images: the manifold, reconstructions, abstraction, prior samples,
interpolation and attribute arithmetic (see :mod:`scratchvae.plots`)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..errors import InputError
from .frame import (DPI, FIGSIZE, MAX_CLASS_MEAN, _check_split, _decode, _describe, _drawing, _encode, _grid_shape,
                    _mosaic, _positive, _show, _stream, _tile, _unit_images, class_names)


# -- 2 manifold ----------------------------------------------------------------------------------
def kl_per_unit(model, mu, logvar):
    """Mean KL of each latent unit over the rows (L,): the posterior's KL terms, averaged."""
    mu, logvar = np.asarray(mu, dtype=np.float64), np.asarray(logvar, dtype=np.float64)
    return model.posterior.kl_terms((mu, logvar)).mean(axis=0)


def manifold_figure(model, test, path, k=15):
    """Decodes of a k×k grid through Φ⁻¹ of probabilities (i + ½)/k (L = 1: k² values, row by row).

    L = 2: both units. L > 2: the two units with the highest mean KL over the test set,
    KL_j = mean_x ½(σ_j² + μ_j² − 1 − logvar_j), the others held at 0. Mode 'ae': see the
    module docstring (largest variance of μ, empirical quantiles, others at mean μ).
    """
    k = _positive("k", k)
    images, _ = _check_split(test)
    side = _tile(model, test)
    L = model.latent
    m = k * k if L == 1 else k  # L = 1: one path of k² values, read row by row
    g = model.posterior.grid(_encode(model, images), (np.arange(m) + 0.5) / m)
    units = list(range(L)) if L <= 2 else [int(j) for j in np.argsort(-g.score, kind="stable")[:2]]
    u, v = units[0], units[-1]
    xv = g.values[u]
    z = np.tile(g.centre, (k * k, 1))
    if L == 1:
        z[:, u] = xv
        yv = xv[::k]  # each row's first value
    else:
        yv = g.values[v][::-1]  # image rows run top to bottom: largest z_v on top
        z[:, u] = np.tile(xv, k)
        z[:, v] = np.repeat(yv, k)
    mosaic, ry, cx = _mosaic(_decode(model, z), k, k, side)
    every = max(1, k // 8)
    with _drawing("manifold", path=path) as (plt, fig):
        ax = fig.add_subplot()
        _show(ax, mosaic, xticks=None if L == 1 else (cx[::every], [f"{t:.2f}" for t in xv[::every]]),
              yticks=(ry[::every], [f"{t:.2f}" for t in yv[::every]]))
        if L == 1:
            ax.set_ylabel("z[0] at the start of each row (rising left to right, row by row)")
        else:                           # units numbered as the codes' columns are: z[7] is mu[:, 7]
            ax.set_ylabel(f"z[{v}]")
            ax.set_xlabel(f"z[{u}]")
        chosen = "" if L <= 2 else (f"\nz[{u}], z[{v}]: highest {g.score_what} ({g.score[u]:.3g}, "
                                     f"{g.score[v]:.3g}{g.unit}); the other {L - 2} at {g.centre_what}")
        ax.set_title(f"Decoded latent grid ({g.values_what})\n{_describe(model)}{chosen}", fontsize=10)
    return Path(path)


# -- 3 reconstructions -----------------------------------------------------------------------------
def reconstruction_figure(model, test, path, n=32, seed=0):
    """``n`` test inputs (chosen by ``seed``) above their decoder means at z = μ."""
    n = _positive("n", n)
    images, _ = _check_split(test)
    side = _tile(model, test)
    idx = _stream(model, seed, "reconstructions").permutation(len(images))[:n]
    x = _unit_images(model, images[idx])
    mu, _ = _encode(model, images[idx])
    recon = _decode(model, mu)
    cols = min(len(idx), 8)
    rows = math.ceil(len(idx) / cols)
    with _drawing("reconstructions", path=path) as (plt, fig):
        axes = fig.subplots(2, 1)
        for ax, ims, title in ((axes[0], x, f"{len(idx)} test inputs"),
                               (axes[1], recon, "reconstructions: decoder mean at z = μ")):
            _show(ax, _mosaic(ims, rows, cols, side)[0])
            ax.set_title(title, fontsize=10)
        fig.suptitle(f"Reconstructions — {_describe(model)}", fontsize=11)
    return Path(path)


# -- 4 abstraction ---------------------------------------------------------------------------------
def abstraction_figure(model, test, path, inputs=4, samples=10, seed=0):
    """Per row: one test input, the decode of z = μ, then decodes of ``samples`` z ~ q(z|x).

    Not defined for mode 'ae' (no q(z|x)): raises InputError.
    """
    if model.posterior.no_q_why is not None:
        raise InputError(f"the abstraction figure samples z ~ q(z|x): {model.posterior.no_q_why}")
    inputs, samples = _positive("inputs", inputs), _positive("samples", samples)
    images, _ = _check_split(test)
    side = _tile(model, test)
    stream = _stream(model, seed, "abstraction")
    idx = stream.permutation(len(images))[:inputs]
    x = _unit_images(model, images[idx])
    mu, lv = _encode(model, images[idx])
    r = len(idx)
    mu_rep = np.repeat(mu, samples, axis=0)
    lv_rep = np.repeat(lv, samples, axis=0)
    eps = model.backend.to_host(stream.normal(mu_rep.shape, model.dtype.name)).astype(np.float64)
    z = model.posterior.sample((mu_rep, lv_rep), eps)   # on host float64 arrays
    dec_mu = _decode(model, mu)
    dec_z = _decode(model, z).reshape(r, samples, -1)
    tiles = np.concatenate([x[:, None], dec_mu[:, None], dec_z], axis=1).reshape(-1, x.shape[1])
    mosaic, _, cx = _mosaic(tiles, r, samples + 2, side, col_gaps=(0, 1))
    labels = ["input", "z = μ"] + [f"z{i + 1} ~ q" for i in range(samples)]
    with _drawing("abstraction", path=path) as (plt, fig):
        ax = fig.add_subplot()
        _show(ax, mosaic, xticks=(cx, labels))
        ax.tick_params(axis="x", labelrotation=0, labelsize=7)
        mean_sd = float(model.posterior.std((mu, lv)).mean())
        ax.set_title(f"Abstraction: decodes of several z ~ q(z|x) per input (mean σ of q: {mean_sd:.3f})"
                     f"\n{_describe(model)}", fontsize=10)
    return Path(path)


# -- 5 samples ---------------------------------------------------------------------------------------
def sample_figure(model, n, seed, draw, path, image_shape=None):
    """Decodes of ``n`` codes z ~ N(0, I) from stream ``seed`` (several stochastic layers:
    ancestral, h_S ~ N(0, I) and each lower layer drawn from its conditional prior, down to h_1).

    ``draw=False``: decoder means (what ``model.sample(n, eps=z)`` returns); ``draw=True``:
    pixels drawn from p(x|z) (Bernoulli: u < mean; Gaussian: mean + σ·ε, clipped to [0, 1]
    for display), with this module's own uniforms/normals rather than ``model.rng['eval']``.
    """
    n = _positive("n", n)
    side = _tile(model, image_shape=image_shape)
    top = model.latent if model.chain is None else model.chain.latents[-1]
    z = _stream(model, seed, "samples").normal((n, top), model.dtype.name)
    codes = f"z ~ N(0, I){model.posterior.prior_note}"
    if model.chain is not None:                 # ancestral: h_S ~ N(0, I), then each h_l ~ p(h_l | h_{l+1})
        S = len(model.chain.latents)
        z = model.down(z, S, _stream(model, seed, "samples-down"))
        codes = f"h{S} ~ N(0, I), " + ", ".join(f"h{l} ~ p(h{l}|h{l + 1})" for l in range(S - 1, 0, -1))
    mean = model.decode_mean(z)
    if draw:
        mean = model.likelihood.draw(mean, model.params, _stream(model, seed, "samples-draw"))
    what = "pixels drawn from p(x|h1)" if draw and model.chain is not None else (
        "pixels drawn from p(x|z)" if draw else "decoder means")
    return grid_figure(model.backend.to_host(mean), side, path, f"{n} decodes of {codes}: {what}\n"
                       f"{_describe(model)}, seed {seed}")


def grid_figure(images, image_shape, path, title):
    """Images (n, D) in [0, 1] (clipped) drawn as a near-square grid of ``image_shape`` tiles."""
    images = np.asarray(images, dtype=np.float64)
    rows, cols = _grid_shape(len(images))
    with _drawing("samples", path=path) as (plt, fig):
        ax = fig.add_subplot()
        _show(ax, _mosaic(images, rows, cols, tuple(image_shape))[0])
        ax.set_title(title, fontsize=10)
    return Path(path)


_FRAME_WIDTH, _FRAME_HEIGHT = 0.75, 0.85
"""Inches of the interpolation figure beside its images (the row names, margins) and above and
below them (the title, the tick labels, the axis label, margins)."""


# -- 6 interpolation ----------------------------------------------------------------------------------
def slerp(a, b, t):
    """Spherical interpolation a -> b at fractions t (K,): rows sin((1−t)ω)/sin ω·a + sin(tω)/sin ω·b.

    ω is the angle between a and b; falls back to linear when they are (anti)parallel or zero.
    """
    t = np.asarray(t, dtype=np.float64)[:, None]
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 or nb == 0:
        return (1 - t) * a + t * b
    omega = math.acos(float(np.clip(np.dot(a, b) / (na * nb), -1.0, 1.0)))
    if math.sin(omega) < 1e-6:
        return (1 - t) * a + t * b
    return (np.sin((1 - t) * omega) * a + np.sin(t * omega) * b) / math.sin(omega)


def interpolation_figure(model, test, path, steps=10, seed=0):
    """Two test images of different labels (chosen by ``seed``); decodes along the linear and
    the spherical path between their μ's, the inputs at both ends. The figure is
    ``FIGSIZE["interpolation"]`` wide and as tall as its two rows of images need (at most that
    size's height): no blank band above or below them."""
    steps = _positive("steps", steps)
    images, labels = _check_split(test)
    side = _tile(model, test)
    perm = _stream(model, seed, "interpolation").permutation(len(images))
    a = int(perm[0])
    other = [int(i) for i in perm[1:] if labels is not None and labels[i] != labels[a]]
    b = other[0] if other else int(perm[min(1, len(perm) - 1)])
    mu, _ = _encode(model, images[[a, b]])
    t = np.linspace(0.0, 1.0, steps)
    lin = (1 - t)[:, None] * mu[0] + t[:, None] * mu[1]
    sph = slerp(mu[0], mu[1], t)
    dec = _decode(model, np.concatenate([lin, sph])).reshape(2, steps, -1)
    x = _unit_images(model, images[[a, b]])
    row = lambda d: np.concatenate([x[:1], d, x[1:]])  # noqa: E731
    tiles = np.concatenate([row(dec[0]), row(dec[1])])
    mosaic, ry, cx = _mosaic(tiles, 2, steps + 2, side, col_gaps=(0, steps))
    xl = [f"x{a}"] + [f"{v:.2g}" for v in t] + [f"x{b}"]
    width, most = FIGSIZE["interpolation"]
    height = min(most, _FRAME_HEIGHT + (width - _FRAME_WIDTH) * mosaic.shape[0] / mosaic.shape[1])
    with _drawing("interpolation", path=path, height=round(height * DPI) / DPI) as (plt, fig):
        ax = fig.add_subplot()
        _show(ax, mosaic, xticks=(cx, xl), yticks=(ry, ["linear", "slerp"]))
        ax.set_xlabel("t (fraction of the way from μ(x_a) to μ(x_b))")
        names = class_names(test)
        named = (lambda i: f"test #{i}") if labels is None else (lambda i: f"test #{i} (label {names[int(labels[i])]})")
        ax.set_title(f"Interpolation in μ-space: {named(a)} → {named(b)} — {_describe(model)}", fontsize=10)
    return Path(path)


# -- 7 attribute-vector arithmetic ---------------------------------------------------------------------
def arithmetic_figure(model, test, path, train=None, pairs=3, per_row=8, seed=0):
    """Class-mean vectors: for ``pairs`` class pairs (a, b) chosen by ``seed``, ``per_row`` test
    images of class a decoded at z = μ(x) (upper row) and at z = μ(x) + m_b − m_a (lower row),
    m_c the mean μ of class c over ``train`` (up to ``MAX_CLASS_MEAN`` images) or, if None, the test set.

    Needs at least two classes (InputError otherwise). Classes are named as the data name them
    (an image folder's sub-folders), else by their label.
    """
    pairs, per_row = _positive("pairs", pairs), _positive("per_row", per_row)
    images, labels = _check_split(test)
    if labels is None or (train is not None and train.labels is None):
        raise InputError("attribute vectors need labelled data (class means), got unlabelled images")
    side = _tile(model, test)
    stream = _stream(model, seed, "arithmetic")
    if train is not None:
        tr_images, tr_labels = _check_split(train, "train")
        pick = np.sort(stream.permutation(len(tr_images))[:MAX_CLASS_MEAN])
        ref_mu, _ = _encode(model, tr_images[pick])
        ref_labels, ref_name = tr_labels[pick], f"{len(pick)} train images"
    else:
        ref_mu, _ = _encode(model, images)
        ref_labels, ref_name = labels, f"{len(images)} test images"
    classes = [c for c in np.unique(labels) if np.any(ref_labels == c)]
    if len(classes) < 2:
        raise InputError(f"attribute vectors need at least two classes, got {len(classes)}")
    means = {int(c): ref_mu[ref_labels == c].mean(axis=0) for c in classes}
    order = [int(classes[i]) for i in stream.permutation(len(classes))]
    chosen = [(order[2 * i % len(order)], order[(2 * i + 1) % len(order)]) for i in range(pairs)]
    tiles, ylabels, names = [], [], class_names(test)
    D = images.shape[1]
    for ca, cb in chosen:
        pool = np.flatnonzero(labels == ca)
        take = pool[stream.permutation(len(pool))[:per_row]]
        mu, _ = _encode(model, images[take])
        base, moved = _decode(model, mu), _decode(model, mu + (means[cb] - means[ca]))
        blank = np.full((per_row - len(take), D), np.nan)
        tiles += [base, blank, moved, blank]
        a, b = names[ca], names[cb]
        ylabels += [f"{a}: z = μ", f"{a}→{b}: μ + m[{b}] − m[{a}]"]
    mosaic, ry, _ = _mosaic(np.concatenate(tiles), 2 * pairs, per_row, side,
                            row_gaps=tuple(range(1, 2 * pairs - 1, 2)))
    with _drawing("arithmetic", path=path) as (plt, fig):
        ax = fig.add_subplot()
        _show(ax, mosaic, yticks=(ry, ylabels))
        ax.set_title(f"Attribute vectors: test images of class a moved by m[b] − m[a]\n"
                     f"(m[c] = mean μ of class c over {ref_name}) — {_describe(model)}", fontsize=10)
    return Path(path)
