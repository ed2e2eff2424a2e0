"""Figures of a trained model, written as PNG, PDF, SVG or JPEG files (matplotlib, imported lazily).

This is the only module that imports matplotlib, and only inside the functions, so
``import scratchvae`` never needs it. If no backend has been chosen (no ``MPLBACKEND``,
no rcParams backend, pyplot not yet imported), ``Agg`` is selected; a chosen backend is
respected. Every function closes its figure, creates the output's parent folders and
returns the path it wrote. Images are drawn as side×side grayscale tiles (28×28 for
MNIST); decoder outputs are clipped to [0, 1] for display (a Gaussian decoder's means can
leave it). Inputs are shown as the [0, 1] images the model sees (no binarisation).

Formats. A figure's file name picks its format (:data:`FORMATS`: .png, .pdf, .svg, .jpg or
.jpeg); any other name is refused (:func:`figure_format`), before anything is drawn where the
caller checks first. Files carry no creation date or software version, so the same figure
gives the same bytes.

Sizes. Each figure kind has a fixed size ``FIGSIZE[kind]`` (inches) and is saved at
``DPI`` without a tight bounding box, so the PNG is exactly ``figsize · DPI`` pixels
(the comparison figure is ``FIGSIZE["comparison"]`` per model column); PDF and SVG have
the same size in points.

Randomness. Every random choice (which test digits, ε for z ~ q(z|x), prior samples,
drawn pixels) comes from a :class:`~scratchvae.backend.random.Stream` of ``seed`` and a
stream id of this module's own (``STREAM_IDS``, 200 and up), one per figure: a figure
depends only on the model, the data and ``seed``, and plotting never advances the
model's own streams (``model.rng``).

The figures (``plot_run`` writes 1–8 into a folder)::

    1 latent.png           test μ coloured by label (L = 2 as is; L > 2: PCA of μ; L = 1: μ per label)
    2 manifold.png         decodes of a grid through Φ⁻¹ (evenly spaced probabilities) in two units
    3 reconstructions.png  test inputs above, decoder means of z = μ below
    4 abstraction.png      inputs, the decode of μ, decodes of several z ~ q(z|x)   (not for 'ae')
    5 samples.png          decodes of z ~ N(0, I) (means, or pixels drawn from p(x|z))
    6 interpolation.png    linear and spherical (slerp) paths between two test μ's
    7 arithmetic.png       μ(x) + (mean μ | class b − mean μ | class a) for digits x of class a
    8 losses.png           train/test −ELBO, reconstruction and KL per epoch (if any epoch is done)
    9 posteriors.png       L = 2 only: each test image's q(z|x) as its 1-σ ellipse (an AE: its code, a point)

Mode 'ae' (a plain autoencoder) has no q(z|x) to sample and no KL: the abstraction figure
is skipped; the manifold picks the two units of largest variance of μ and spans each over
the empirical quantiles of μ at the same probabilities, holding the others at the mean of
μ; "samples" decode N(0, I) codes, which an AE was never trained to give meaning to (the
point of the AE/KL-only/VAE comparison).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import shutil
import sys
from pathlib import Path

import numpy as np

from .backend.random import Stream
from .checkpoint import temp_path
from .codes import decode_batched, encode_batched
from .errors import InputError
from .inputs import prepare_images
from .runs import position_label

DPI = 100
FIGSIZE = {
    "latent": (7.0, 6.0),
    "manifold": (7.0, 7.5),
    "reconstructions": (7.0, 8.0),
    "abstraction": (9.0, 3.8),
    "samples": (7.0, 7.5),
    "interpolation": (10.0, 3.0),
    "arithmetic": (8.0, 6.4),
    "losses": (13.0, 4.0),
    "comparison": (4.5, 9.0),  # per model column
    "posteriors": (4.6, 5.0),  # per model panel
}
FILES = {kind: f"{kind}.png" for kind in FIGSIZE if kind != "comparison"}
FORMATS = {".png": "png", ".pdf": "pdf", ".svg": "svg", ".jpg": "jpg", ".jpeg": "jpg"}
"""File extension -> the format written."""
_UNDATED = {"png": {"Software": None}, "pdf": {"Creator": None, "Producer": None, "CreationDate": None},
            "svg": {"Creator": None, "Date": None}, "jpg": None}
STREAM_IDS = {"latent": 200, "reconstructions": 201, "abstraction": 202, "samples": 203,
              "samples-draw": 204, "interpolation": 205, "arithmetic": 206, "posteriors": 207}
MAX_SCATTER = 2000     # test points in a scatter
MAX_CLASS_MEAN = 10000  # images encoded for the class means of the attribute vectors
MAX_ELLIPSES = 200     # test images whose posteriors are drawn
_PAD, _GAP, _PAD_VALUE = 2, 8, 0.35  # pixels between tiles, extra between groups, their gray


# -- matplotlib ------------------------------------------------------------------------------
def _pyplot():
    """pyplot, with Agg selected if nothing chose a backend (MPLBACKEND and rcParams win)."""
    import matplotlib

    if "matplotlib.pyplot" not in sys.modules and not os.environ.get("MPLBACKEND"):
        chosen = getattr(matplotlib.rcParams, "_get_backend_or_none", lambda: None)()
        if chosen is None:
            matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _figure(kind, width_factor=1):
    plt = _pyplot()
    w, h = FIGSIZE[kind]
    return plt, plt.figure(figsize=(w * width_factor, h), dpi=DPI, layout="constrained")


@contextlib.contextmanager
def _drawing(kind, width_factor=1, *, path):
    """A figure of ``kind`` to draw on: saved to ``path`` and closed on leaving the block,
    closed without saving if drawing raised."""
    plt, fig = _figure(kind, width_factor)
    try:
        yield plt, fig
    except BaseException:
        plt.close(fig)
        raise
    _save(plt, fig, path)


def figure_format(path):
    """The format a figure's file name asks for ('png', 'pdf', 'svg' or 'jpg'); InputError otherwise."""
    fmt = FORMATS.get(Path(path).suffix.lower())
    if fmt is None:
        raise InputError(f"a figure's file name must end in .png, .pdf, .svg or .jpg, got {str(path)!r}")
    return fmt


def _save(plt, fig, path):
    """Write ``fig`` to ``path`` in the format its name asks for (parents created; through a
    temporary file, so a failed write leaves whatever was there) and close it, whatever happens."""
    path = tmp = Path(path)
    try:
        fmt = figure_format(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = temp_path(path)           # atomic: the file is the whole figure, or the one before it
        fig.savefig(tmp, dpi=DPI, format=fmt, metadata=_UNDATED[fmt])
        os.replace(tmp, path)
    except OSError as err:
        if tmp != path:
            tmp.unlink(missing_ok=True)
        raise InputError(f"could not write the figure {path}: {err.strerror or err}") from None
    finally:
        plt.close(fig)
    return path


def _describe(model):
    """The model in a figure's title, from what its parts call themselves."""
    return (f"{model.objective.model_name}, L = {model.latent}, {model.likelihood.name}"
            f"{model.posterior.title_note}{model.objective.title_note}")


# -- arrays ------------------------------------------------------------------------------------
def tile_shape(width, image_shape=None):
    """The (H, W) or (H, W, C) each row of ``width`` values is drawn as: ``image_shape``, else a
    square of that size; None where there is neither."""
    if image_shape is not None:
        shape = tuple(int(d) for d in image_shape)
        if int(np.prod(shape)) != width:
            raise InputError(f"image_shape {shape} does not hold the model's {width} values per image")
        return shape
    side = math.isqrt(width)
    return (side, side) if side * side == width else None


def image_tile(width, image_shape=None):
    """:func:`tile_shape`, for a figure that draws images: InputError where there is none."""
    shape = tile_shape(width, image_shape)
    if shape is None:
        raise InputError(f"the images have no shape to be drawn in: {width} values per image is not a "
                         f"square; give the data an image shape (--image-shape H,W[,C])")
    return shape


def _tile(model, data=None, image_shape=None):
    """The tile of the model's images: ``image_shape``, else the dataset's, else a square."""
    return image_tile(model.input_dim, image_shape if image_shape is not None else getattr(data, "image_shape", None))


def _positive(name, v):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
        raise InputError(f"{name} must be a positive integer, got {v!r}")
    return int(v)


def _stream(model, seed, kind):
    return Stream(seed, STREAM_IDS[kind], xp=model.xp)


def _check_split(split, what="test"):
    """(images, labels or None) of a Dataset."""
    images = getattr(split, "images", None)
    if images is None or not hasattr(split, "labels"):
        raise InputError(f"{what} must be a Dataset with .images and .labels, got {type(split).__name__}")
    labels = split.labels
    if labels is not None and len(images) != len(labels):
        raise InputError(f"{what}: {len(images)} images but {len(labels)} labels")
    return images, None if labels is None else np.asarray(labels)


def _unit_images(model, images):
    """The [0, 1] images the model sees, on the host (float64)."""
    x = prepare_images(images, model, "images")
    return model.backend.to_host(x).astype(np.float64)


def _encode(model, images):
    """The posterior's two parameters of ``images`` (μ and logvar or S; None for 'ae') as host
    float64 arrays (codes.encode_batched)."""
    params = encode_batched(model, prepare_images(images, model, "images"))
    return tuple(None if p is None else model.backend.to_host(p).astype(np.float64) for p in params)


def _decode(model, z):
    """Decoder means of host codes ``z`` (K, L) as host float64 (K, D) (codes.decode_batched)."""
    return decode_batched(model, z).astype(np.float64)


def _offsets(count, size, gaps=()):
    pos, x = [], _PAD
    for i in range(count):
        pos.append(x)
        x += size + _PAD + (_GAP if i in gaps else 0)
    return pos, x


def _mosaic(images, rows, cols, shape, row_gaps=(), col_gaps=()):
    """Tile images (rows·cols, D), each drawn as ``shape`` (H, W) or (H, W, C), row by row into
    one array (2-D, or 3-D for RGB); NaN rows stay blank.

    Returns the mosaic and the centres of the rows and columns (for tick labels).
    """
    h, w = shape[:2]
    rgb = len(shape) == 3 and shape[2] == 3
    ys, height = _offsets(rows, h, row_gaps)
    xs, width = _offsets(cols, w, col_gaps)
    out = np.full((height, width, 3) if rgb else (height, width), _PAD_VALUE)
    images = np.asarray(images, dtype=np.float64).reshape(-1, h, w, *shape[2:])
    if not rgb and images.ndim == 4:
        images = images[..., 0]
    for i, im in enumerate(images[:rows * cols]):
        if np.isnan(im).all():
            continue
        r, c = divmod(i, cols)
        out[ys[r]:ys[r] + h, xs[c]:xs[c] + w] = np.clip(im, 0.0, 1.0)
    return out, [y + (h - 1) / 2 for y in ys], [x + (w - 1) / 2 for x in xs]


def _show(ax, mosaic, xticks=None, yticks=None):
    ax.imshow(mosaic, cmap=None if mosaic.ndim == 3 else "gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    for setter, ticks in ((ax.set_xticks, xticks), (ax.set_yticks, yticks)):
        if ticks is None:
            setter([])
        else:
            setter(ticks[0], labels=ticks[1], fontsize=8)
    ax.tick_params(length=0)
    for s in ax.spines.values():
        s.set_visible(False)


def _grid_shape(n):
    cols = math.ceil(math.sqrt(n))
    return math.ceil(n / cols), cols


def _project(codes):
    """Codes (N, L) -> (N, 2) points and axis labels: as is (L = 2), PCA (L > 2), μ vs label (L = 1)."""
    L = codes.shape[1]
    if L == 2:
        return codes, "z₁ (μ)", "z₂ (μ)"
    if L == 1:
        return codes, "z (μ)", None
    centred = codes - codes.mean(axis=0)
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    share = s ** 2 / max(float((s ** 2).sum()), np.finfo(float).tiny)
    xy = centred @ vt[:2].T
    return xy, f"PC 1 of μ ({share[0]:.0%} of variance)", f"PC 2 of μ ({share[1]:.0%} of variance)"


def _class_colours(classes):
    import matplotlib

    cmap = matplotlib.colormaps["tab10" if len(classes) <= 10 else "turbo"]
    n = max(len(classes) - 1, 1)
    return {c: cmap(i if len(classes) <= 10 else i / n) for i, c in enumerate(classes)}


def _scatter(ax, codes, labels, legend="axes"):
    """Scatter codes coloured by label (one call, points in the given order); returns handles."""
    from matplotlib.lines import Line2D

    xy, xlabel, ylabel = _project(codes)
    if labels is None:                   # unlabelled data: one colour, no legend
        labels = np.zeros(len(xy), dtype=np.int64)
        legend = None
    classes = sorted(int(c) for c in np.unique(labels))
    colours = _class_colours(classes)
    if xy.shape[1] == 1:  # L = 1: μ against the label, spread by a fixed low-discrepancy jitter
        jitter = (np.arange(len(xy)) * 0.6180339887) % 1.0 - 0.5
        xy = np.column_stack([xy[:, 0], labels.astype(np.float64) + 0.6 * jitter])
        ylabel = "label"
        ax.set_yticks(classes)
    ax.scatter(xy[:, 0], xy[:, 1], c=[colours[int(c)] for c in labels], s=5, alpha=0.7,
               linewidths=0, rasterized=True)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    handles = [Line2D([], [], marker="o", linestyle="", color=colours[c], label=str(c)) for c in classes]
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
        _scatter(ax, mu, None if labels is None else labels[idx])
        how = "" if model.latent <= 2 else f", PCA of {model.latent}-D μ"
        ax.set_title(f"Latent means of {len(idx)} test images{how}\n{_describe(model)}", fontsize=10)
    return Path(path)


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
            ax.set_ylabel("z1 at the start of each row (rising left to right, row by row)")
        else:
            ax.set_ylabel(f"z{v + 1}")
            ax.set_xlabel(f"z{u + 1}")
        chosen = "" if L <= 2 else (f"\nunits {u + 1}, {v + 1}: highest {g.score_what} ({g.score[u]:.3g}, "
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
    """Decodes of ``n`` codes z ~ N(0, I) from stream ``seed``.

    ``draw=False``: decoder means (what ``model.sample(n, eps=z)`` returns); ``draw=True``:
    pixels drawn from p(x|z) (Bernoulli: u < mean; Gaussian: mean + σ·ε, clipped to [0, 1]
    for display), with this module's own uniforms/normals rather than ``model.rng['eval']``.
    """
    n = _positive("n", n)
    side = _tile(model, image_shape=image_shape)
    z = _stream(model, seed, "samples").normal((n, model.latent), model.dtype.name)
    mean = model.decode_mean(z)
    if draw:
        mean = model.likelihood.draw(mean, model.params, _stream(model, seed, "samples-draw"))
    what = "pixels drawn from p(x|z)" if draw else "decoder means"
    return grid_figure(model.backend.to_host(mean), side, path, f"{n} decodes of z ~ N(0, I)"
                       f"{model.posterior.prior_note}: {what}\n{_describe(model)}, seed {seed}")


def grid_figure(images, image_shape, path, title):
    """Images (n, D) in [0, 1] (clipped) drawn as a near-square grid of ``image_shape`` tiles."""
    images = np.asarray(images, dtype=np.float64)
    rows, cols = _grid_shape(len(images))
    with _drawing("samples", path=path) as (plt, fig):
        ax = fig.add_subplot()
        _show(ax, _mosaic(images, rows, cols, tuple(image_shape))[0])
        ax.set_title(title, fontsize=10)
    return Path(path)


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
    """Two test digits of different labels (chosen by ``seed``); decodes along the linear and
    the spherical path between their μ's, the inputs at both ends."""
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
    with _drawing("interpolation", path=path) as (plt, fig):
        ax = fig.add_subplot()
        _show(ax, mosaic, xticks=(cx, xl), yticks=(ry, ["linear", "slerp"]))
        ax.set_xlabel("t (fraction of the way from μ(x_a) to μ(x_b))")
        named = (lambda i: f"test #{i}") if labels is None else (lambda i: f"test #{i} (label {labels[i]})")
        ax.set_title(f"Interpolation in μ-space: {named(a)} → {named(b)} — {_describe(model)}", fontsize=10)
    return Path(path)


# -- 7 attribute-vector arithmetic ---------------------------------------------------------------------
def arithmetic_figure(model, test, path, train=None, pairs=3, per_row=8, seed=0):
    """Class-mean vectors: for ``pairs`` class pairs (a, b) chosen by ``seed``, ``per_row`` test
    digits of class a decoded at z = μ(x) (upper row) and at z = μ(x) + m_b − m_a (lower row),
    m_c the mean μ of class c over ``train`` (up to ``MAX_CLASS_MEAN`` images) or, if None, the test set.

    Needs at least two classes (InputError otherwise).
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
    tiles, ylabels = [], []
    D = images.shape[1]
    for ca, cb in chosen:
        pool = np.flatnonzero(labels == ca)
        take = pool[stream.permutation(len(pool))[:per_row]]
        mu, _ = _encode(model, images[take])
        base, moved = _decode(model, mu), _decode(model, mu + (means[cb] - means[ca]))
        blank = np.full((per_row - len(take), D), np.nan)
        tiles += [base, blank, moved, blank]
        ylabels += [f"{ca}: z = μ", f"{ca}→{cb}: μ + m{cb} − m{ca}"]
    mosaic, ry, _ = _mosaic(np.concatenate(tiles), 2 * pairs, per_row, side,
                            row_gaps=tuple(range(1, 2 * pairs - 1, 2)))
    with _drawing("arithmetic", path=path) as (plt, fig):
        ax = fig.add_subplot()
        _show(ax, mosaic, yticks=(ry, ylabels))
        ax.set_title(f"Attribute vectors: test digits of class a moved by m_b − m_a\n"
                     f"(m_c = mean μ of class c over {ref_name}) — {_describe(model)}", fontsize=10)
    return Path(path)


# -- 8 loss curves ---------------------------------------------------------------------------------------
def loss_figure(history, path, title="", loss=None):
    """Per-epoch train and test −ELBO, reconstruction and KL (nats per image) from a run's history;
    ``loss`` names the first panel if its loss is not the −ELBO (an importance-weighted run's −L_K)."""
    if not history:
        raise InputError("history is empty: no epoch has finished yet")
    epochs = [r["epoch"] for r in history]
    with _drawing("losses", path=path) as (plt, fig):
        axes = fig.subplots(1, 3)
        for ax, key, name in zip(axes, ("loss", "recon", "kl"),
                                 (loss or "−ELBO (recon + KL)", "reconstruction −log p(x|z)", "KL(q(z|x) ‖ p(z))")):
            for split, style in (("train", "o-"), ("test", "s--")):
                ys = [r.get(f"{split}_{key}") for r in history]
                if all(y is not None for y in ys):
                    ax.plot(epochs, ys, style, markersize=4, label=split)
            ax.set_title(name, fontsize=10)
            ax.set_xlabel("epoch")
            ax.set_ylabel("nats per image")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
            ax.xaxis.get_major_locator().set_params(integer=True)
        fig.suptitle(f"Training curves{' — ' + title if title else ''}", fontsize=11)
    return Path(path)


# -- 9 model comparison -----------------------------------------------------------------------------------
def comparison_figure(results, path):
    """One column per model: its latent codes coloured by label (probe accuracy in the title) above
    the decodes of the same prior samples.

    results: dict name -> {"codes": (n, L) (L = 2 shown as is; else PCA), "labels": (n,),
    "decodes": (m, D) in [0, 1] with m a square number, "probe_accuracy": float}. At most
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
        handles = None
        for j, (name, (codes, labels, decodes, rows, side, acc)) in enumerate(checked.items()):
            handles = _scatter(axes[0, j], codes, labels, legend=None)
            acc_text = f"{acc:.1%}" if math.isfinite(acc) else "n/a"
            axes[0, j].set_title(f"{name}: latent codes ({len(codes)} points)\nlinear-probe accuracy {acc_text}",
                                 fontsize=10)
            _show(axes[1, j], _mosaic(decodes, rows, rows, side)[0])
            axes[1, j].set_title(f"{name}: decodes of the same {rows * rows} z ~ N(0, I)", fontsize=10)
        fig.legend(handles=handles, title="label", loc="outside lower center", ncol=len(handles),
                   fontsize=8, frameon=False)
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
        spread, what = np.zeros(len(mu)), "its codes z = μ(x): points"
    else:
        w, h, a = ellipse_axes(model.posterior.covariance((mu, second)))
        ax.add_collection(EllipseCollection(w, h, a, units="xy", offsets=mu, offset_transform=ax.transData,
                                            facecolors=[(*k[:3], 0.08) for k in c], edgecolors=c, linewidths=0.6))
        ax.add_patch(Circle((0, 0), 1.0, fill=False, linestyle="--", color="0.3", linewidth=0.8))
        spread, what = w / 2, f"{model.posterior.label} as 1-σ ellipses"
    lo = np.quantile(mu - spread[:, None], 0.01, axis=0)
    hi = np.quantile(mu + spread[:, None], 0.99, axis=0)
    centre, half = (lo + hi) / 2, 0.54 * (hi - lo).max()          # a square window: circles stay round
    ax.set_xlim(centre[0] - half, centre[0] + half)
    ax.set_ylim(centre[1] - half, centre[1] + half)
    ax.set_aspect("equal", adjustable="box")
    ax.set_xlabel("z₁")
    ax.set_ylabel("z₂")
    ax.set_title(f"{name}\n{what}", fontsize=9)


def posterior_figure(models, test, path, n=MAX_ELLIPSES, seed=0):
    """A distribution instead of a point: ``n`` test images (chosen by ``seed``, the same in every
    panel) through each model with a 2-D latent. A VAE's q(z|x) is drawn as its 1-σ ellipse,
    coloured by label (diagonal posterior: axis-aligned; full: rotated), with the prior's 1-σ
    circle dashed; an autoencoder's code as a point. ``models``: a VAE or a dict name -> VAE
    (one panel each, left to right)."""
    n = _positive("n", n)
    models = models if isinstance(models, dict) else {models.objective.model_name: models}
    bad = [k for k, m in models.items() if m.latent != 2]
    if not models or bad:
        raise InputError(f"the posterior figure draws 2-D latents: {', '.join(bad) or 'no model'} "
                         f"{'has' if len(bad) == 1 else 'have'} latent ≠ 2")
    images, labels = _check_split(test)
    labels = np.zeros(len(images), dtype=np.int64) if labels is None else labels   # unlabelled: one colour
    first = next(iter(models.values()))
    idx = _stream(first, seed, "posteriors").permutation(len(images))[:n]
    colours = _class_colours(sorted(int(c) for c in np.unique(labels)))
    with _drawing("posteriors", len(models), path=path) as (plt, fig):
        axes = fig.subplots(1, len(models), squeeze=False)[0]
        for ax, (name, model) in zip(axes, models.items()):
            _posterior_panel(ax, model, name, images[idx], labels[idx], colours)
        from matplotlib.lines import Line2D

        fig.legend(handles=[Line2D([], [], marker="o", linestyle="", color=v, label=str(k)) for k, v in colours.items()],
                   title="label", loc="outside lower center", ncol=len(colours), fontsize=8, frameon=False)
        fig.suptitle(f"Posteriors of {len(idx)} test images: a distribution instead of a point "
                     f"(dashed: the prior's 1-σ circle)", fontsize=11)
    return Path(path)


# -- everything for a run ----------------------------------------------------------------------------------
def _shaped(test, image_shape):
    """``test`` drawn as ``image_shape`` where one is given (a Dataset, checked by it)."""
    return test if image_shape is None else dataclasses.replace(test, image_shape=tuple(image_shape))


def figure_plan(run, train, test, image_shape=None):
    """{figure kind: None where :func:`plot_run` draws it, else why it does not} (see plot_run)."""
    model, test = run.model, _shaped(test, image_shape)
    images = None if tile_shape(model.input_dim, getattr(test, "image_shape", None)) is not None else (
        f"it draws images, and the data have no image shape ({model.input_dim} values per image; "
        f"--image-shape H,W[,C] gives one)")
    labelled = test.labels is not None and len(np.unique(np.asarray(test.labels))) >= 2 and \
        (train is None or train.labels is not None)
    return {
        "latent": None, "manifold": images, "reconstructions": images,
        "abstraction": images or model.posterior.no_q_why,
        "samples": images, "interpolation": images,
        "arithmetic": images or (None if labelled else "it needs labelled data of two classes or more"),
        "losses": None if run.history else "no epoch has finished yet",
        "posteriors": None if model.latent == 2 else f"it draws 2-D latents; the model's is {model.latent}-D",
    }


@contextlib.contextmanager
def _staged_figures(out):
    """A hidden folder beside ``out`` to draw into; once the block completes its files replace
    their namesakes in ``out`` (made if need be), so a plot that fails leaves ``out`` as it was."""
    made = [p for p in (out, *out.parents) if not p.exists()]          # the deepest first
    tmp = temp_path(out)
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        yield tmp
        out.mkdir(exist_ok=True)
        for f in sorted(tmp.iterdir()):
            os.replace(f, out / f.name)
    except OSError as err:
        raise InputError(f"could not write the figures into {out}: {err.strerror or err}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        for folder in made:                 # those still empty: the plot failed
            with contextlib.suppress(OSError):
                folder.rmdir()


def plot_run(run, train, test, out_dir, n=64, seed=0, draw=False, fmt="png", image_shape=None):
    """Write figures 1–9 of a loaded run into ``out_dir``; returns the paths written.

    ``n``: prior samples in samples.png (reconstructions show min(n, 32) inputs); ``seed``:
    every random choice (see the module docstring); ``draw``: samples as pixels drawn from
    p(x|z); ``fmt``: the files' format (png, pdf, svg or jpg). Images are drawn in
    ``image_shape``, else the test set's image shape. Skipped (:func:`figure_plan` says why):
    the figures that draw images when the data have no image shape (and their width is not a
    square); abstraction for mode 'ae'; arithmetic without labels or with fewer than two
    classes; losses when no epoch has finished; posteriors unless the latent is 2-D. All
    figures are drawn before any is written into ``out_dir``: a plot that fails changes nothing.
    """
    n = _positive("n", n)
    model, test = run.model, _shaped(test, image_shape)
    _check_split(test)
    figure_format(f"figure.{fmt}")
    plan = figure_plan(run, train, test)
    position = getattr(run, "position", None) if isinstance(getattr(run, "meta", None), dict) else None
    title = _describe(model) + (f", {position_label(position)}" if position and position["epoch"] else "")
    makers = {
        "latent": lambda p: latent_figure(model, test, p, seed=seed),
        "manifold": lambda p: manifold_figure(model, test, p),
        "reconstructions": lambda p: reconstruction_figure(model, test, p, n=min(n, 32), seed=seed),
        "abstraction": lambda p: abstraction_figure(model, test, p, seed=seed),
        "samples": lambda p: sample_figure(model, n, seed, draw, p, image_shape=_tile(model, test)),
        "interpolation": lambda p: interpolation_figure(model, test, p, seed=seed),
        "arithmetic": lambda p: arithmetic_figure(model, test, p, train=train, seed=seed),
        "losses": lambda p: loss_figure(run.history, p, title=title, loss=model.objective.long_label),
        "posteriors": lambda p: posterior_figure(model, test, p, seed=seed),
    }
    out = Path(out_dir)
    names = [Path(FILES[kind]).with_suffix(f".{fmt}").name for kind in makers if plan[kind] is None]
    with _staged_figures(out) as tmp:
        for kind, name in zip([k for k in makers if plan[k] is None], names):
            makers[kind](tmp / name)
    return [out / name for name in names]
