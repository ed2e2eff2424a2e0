"""The figures of the codes themselves: the latent scatter, the AE / KL-only / VAE comparison
and the posteriors as ellipses (see :mod:`scratchvae.plots`)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..errors import InputError
from .frame import (FIGSIZE, MAX_ELLIPSES, MAX_SCATTER, _check_split, _class_colours, _class_handles, _describe,
                    _drawing, _encode, _figure_legend, _mosaic, _positive, _show, _stream, _wrap, class_names)


def _project(codes):
    """Codes (N, L) -> (N, 2) points and axis labels: as is (L = 2), PCA (L > 2), μ vs label (L = 1).
    Units are numbered as the codes' columns are, from 0: z[0] is ``mu[:, 0]``."""
    L = codes.shape[1]
    if L == 2:
        return codes, "z[0] (μ)", "z[1] (μ)"
    if L == 1:
        return codes, "z[0] (μ)", None
    centred = codes - codes.mean(axis=0)
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    share = s ** 2 / max(float((s ** 2).sum()), np.finfo(float).tiny)
    xy = centred @ vt[:2].T
    return xy, f"PC 1 of μ ({share[0]:.0%} of variance)", f"PC 2 of μ ({share[1]:.0%} of variance)"


def _scatter(ax, codes, labels, legend="axes", names=None):
    """Scatter codes coloured by label (one call, points in the given order); returns the legend's
    handles, each class under its name (``names``: {label: name}, default the label)."""
    xy, xlabel, ylabel = _project(codes)
    if labels is None:                   # unlabelled data: one colour, no legend
        labels = np.zeros(len(xy), dtype=np.int64)
        legend = None
    classes, names = sorted(int(c) for c in np.unique(labels)), names or {}
    colours = _class_colours(classes)
    if xy.shape[1] == 1:  # L = 1: μ against the label, spread by a fixed low-discrepancy jitter
        jitter = (np.arange(len(xy)) * 0.6180339887) % 1.0 - 0.5
        xy = np.column_stack([xy[:, 0], labels.astype(np.float64) + 0.6 * jitter])
        ylabel = "label"
        ax.set_yticks(classes, labels=[names.get(c, str(c)) for c in classes])
    ax.scatter(xy[:, 0], xy[:, 1], c=[colours[int(c)] for c in labels], s=5, alpha=0.7,
               linewidths=0, rasterized=True)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    handles = _class_handles(colours, names)
    if legend == "axes":
        ax.legend(handles=handles, title="label", loc="center left", bbox_to_anchor=(1.01, 0.5),
                  fontsize=8, frameon=False)
    return handles


# -- 1 latent scatter ----------------------------------------------------------------------------
def latent_figure(model, test, path, seed=0):
    """Test μ (at most ``MAX_SCATTER`` points, chosen by ``seed``) coloured by label."""
    images, labels = _check_split(test)
    idx = _stream(model, seed, "latent").permutation(len(images))[:MAX_SCATTER]
    mu, _ = _encode(model, images[idx])
    with _drawing("latent", path=path) as (plt, fig):
        ax = fig.add_subplot()
        _scatter(ax, mu, None if labels is None else labels[idx], names=class_names(test))
        how = "" if model.latent <= 2 else f", PCA of {model.latent}-D μ"
        how += "" if model.chain is None else " (layer h1's)"
        ax.set_title(f"Latent means of {len(idx)} test images{how}\n{_describe(model)}", fontsize=10)
    return Path(path)


# -- 9 model comparison -----------------------------------------------------------------------------------
def comparison_figure(results, path):
    """One column per model: its latent codes coloured by label (probe accuracy in the title) above
    the decodes of the same prior samples.

    results: dict name -> {"codes": (n, L) (L = 2 shown as is; else PCA), "labels": (n,),
    "decodes": (m, D) in [0, 1] with m a square number, "probe_accuracy": float, and optionally
    "classes": the name of each label (the legend's; default the label)}. At most
    ``MAX_SCATTER`` evenly spaced codes are drawn per model.
    """
    if not isinstance(results, dict) or not results:
        raise InputError(f"results must be a non-empty dict of model name -> results, got {results!r:.80}")
    checked = {}
    for name, r in results.items():
        missing = [k for k in ("codes", "labels", "decodes", "probe_accuracy") if k not in r]
        if missing:
            raise InputError(f"results[{name!r}] is missing {', '.join(missing)}")
        codes = np.asarray(r["codes"], dtype=np.float64)
        labels = np.asarray(r["labels"])
        decodes = np.asarray(r["decodes"], dtype=np.float64)
        if codes.ndim != 2 or labels.shape != (codes.shape[0],) or codes.shape[0] < 1:
            raise InputError(f"results[{name!r}]: codes must be (n, L) and labels (n,), "
                             f"got {codes.shape} and {labels.shape}")
        m = decodes.shape[0] if decodes.ndim == 2 else 0
        rows = math.isqrt(m)
        side = r.get("image_shape") or (math.isqrt(decodes.shape[1]),) * 2 if decodes.ndim == 2 else (0, 0)
        if decodes.ndim != 2 or m < 1 or rows * rows != m or int(np.prod(side)) != decodes.shape[1]:
            raise InputError(f"results[{name!r}]: decodes must be (m, D) with m a square number and D a "
                             f"square or the product of image_shape, got {decodes.shape}")
        keep = np.unique(np.linspace(0, len(codes) - 1, min(len(codes), MAX_SCATTER)).astype(int))
        checked[name] = (codes[keep], labels[keep], decodes, rows, side, float(r["probe_accuracy"]))
    with _drawing("comparison", len(checked), path=path) as (plt, fig):
        axes = fig.subplots(2, len(checked), squeeze=False, height_ratios=(1, 1))
        handles, names = None, {i: str(c) for i, c in enumerate(next(iter(results.values())).get("classes") or ())}
        for j, (name, (codes, labels, decodes, rows, side, acc)) in enumerate(checked.items()):
            handles = _scatter(axes[0, j], codes, labels, legend=None, names=names)
            acc_text = f"{acc:.1%}" if math.isfinite(acc) else "n/a"
            axes[0, j].set_title(f"{name}: latent codes ({len(codes)} points)\nlinear-probe accuracy {acc_text}",
                                 fontsize=10)
            _show(axes[1, j], _mosaic(decodes, rows, rows, side)[0])
            axes[1, j].set_title(f"{name}: decodes of the same {rows * rows} z ~ N(0, I)", fontsize=10)
        _figure_legend(fig, handles, fig.get_figwidth())
    return Path(path)


# -- 10 posteriors as ellipses ------------------------------------------------------------------------------
def ellipse_axes(cov):
    """(widths, heights, angles in degrees) of the 1-σ ellipses {z : (z − μ)ᵀ Σ⁻¹ (z − μ) = 1} of
    2×2 covariances (n, 2, 2): Σ = V diag(λ) Vᵀ, the axes along V's columns with half-lengths √λ."""
    lam, vec = np.linalg.eigh(np.asarray(cov, dtype=np.float64))      # λ ascending
    lam = np.maximum(lam, 0.0)
    angles = np.degrees(np.arctan2(vec[:, 1, 1], vec[:, 0, 1]))       # the major axis's direction
    return 2 * np.sqrt(lam[:, 1]), 2 * np.sqrt(lam[:, 0]), angles


def _posterior_panel(ax, model, name, images, labels, colours):
    """One model's panel: 1-σ ellipses of q(z|x) (or an AE's points) and the prior's 1-σ circle."""
    from matplotlib.collections import EllipseCollection
    from matplotlib.patches import Circle

    mu, second = _encode(model, images)
    c = [colours[int(k)] for k in labels]
    if not model.posterior.stochastic:   # the one branch on it outside posteriors.py: a point is
        ax.scatter(mu[:, 0], mu[:, 1], c=c, s=6, linewidths=0)          # drawn as a point, q as ellipses
        spread, what, reach = np.zeros(len(mu)), "its codes z = μ(x): points", -np.inf   # no prior to hold
    else:
        w, h, a = ellipse_axes(model.posterior.covariance((mu, second)))
        ax.add_collection(EllipseCollection(w, h, a, units="xy", offsets=mu, offset_transform=ax.transData,
                                            facecolors=[(*k[:3], 0.08) for k in c], edgecolors=c, linewidths=0.6))
        ax.add_patch(Circle((0, 0), 1.0, fill=False, linestyle="--", color="0.3", linewidth=0.8))
        spread, what, reach = w / 2, f"{model.posterior.label} as 1-σ ellipses", 1.05   # and the prior's circle
    lo = np.minimum(np.quantile(mu - spread[:, None], 0.01, axis=0), -reach)
    hi = np.maximum(np.quantile(mu + spread[:, None], 0.99, axis=0), reach)
    centre, half = (lo + hi) / 2, 0.54 * (hi - lo).max()          # a square window: circles stay round
    ax.set_xlim(centre[0] - half, centre[0] + half)
    ax.set_ylim(centre[1] - half, centre[1] + half)
    ax.set_aspect("equal", adjustable="box")
    ax.set_xlabel("z[0]")
    ax.set_ylabel("z[1]")
    ax.set_title(f"{name}\n{what}", fontsize=9)


def posterior_figure(models, test, path, n=MAX_ELLIPSES, seed=0):
    """A distribution instead of a point: ``n`` test images (chosen by ``seed``, the same in every
    panel) through each model with a 2-D latent. A VAE's q(z|x) is drawn as its 1-σ ellipse,
    coloured by label (diagonal posterior: axis-aligned; full: rotated), with the prior's 1-σ
    circle dashed; an autoencoder's code as a point. ``models``: a VAE or a dict name -> VAE
    (one panel each, left to right). The legend names the classes as the data do; unlabelled
    data have one colour and no legend."""
    n = _positive("n", n)
    models = models if isinstance(models, dict) else {models.objective.model_name: models}
    bad = [k for k, m in models.items() if m.latent != 2]
    if not models or bad:
        raise InputError(f"the posterior figure draws 2-D latents: {', '.join(bad) or 'no model'} "
                         f"{'has' if len(bad) == 1 else 'have'} latent ≠ 2")
    images, labels = _check_split(test)
    names = class_names(test)
    labels = np.zeros(len(images), dtype=np.int64) if labels is None else labels   # unlabelled: one colour
    first = next(iter(models.values()))
    idx = _stream(first, seed, "posteriors").permutation(len(images))[:n]
    colours = _class_colours(sorted(int(c) for c in np.unique(labels)))
    with _drawing("posteriors", len(models), path=path) as (plt, fig):
        axes = fig.subplots(1, len(models), squeeze=False)[0]
        for ax, (name, model) in zip(axes, models.items()):
            _posterior_panel(ax, model, name, images[idx], labels[idx], colours)
        if names:
            _figure_legend(fig, _class_handles(colours, names), fig.get_figwidth())
        fig.suptitle(_wrap(f"Posteriors of {len(idx)} test images: a distribution instead of a point "
                           f"(dashed: the prior's 1-σ circle)", FIGSIZE["posteriors"][0] * len(models), 11),
                     fontsize=11)
    return Path(path)
