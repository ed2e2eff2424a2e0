"""The frame every figure shares: matplotlib (chosen lazily), the fixed sizes and formats, the
atomic save, the title's model description, and images laid out as tiles (see :mod:`scratchvae.plots`)."""

from __future__ import annotations

import contextlib
import math
import os
import sys
import textwrap
from pathlib import Path

import numpy as np

from ..backend.random import Stream
from ..checkpoint import temp_path
from ..codes import decode_batched, encode_batched
from ..errors import InputError
from ..inputs import prepare_images

DPI = 100
FIGSIZE = {
    "latent": (7.0, 6.0),
    "manifold": (7.0, 7.5),
    "reconstructions": (7.0, 8.0),
    "abstraction": (9.0, 3.8),
    "samples": (7.0, 7.5),
    "interpolation": (10.0, 3.0),
    "arithmetic": (8.0, 6.4),
    "losses": (4.4, 4.0),  # per panel
    "comparison": (4.5, 9.0),  # per model column
    "posteriors": (4.6, 5.0),  # per model panel
}
FILES = {kind: f"{kind}.png" for kind in FIGSIZE if kind != "comparison"}
FORMATS = {".png": "png", ".pdf": "pdf", ".svg": "svg", ".jpg": "jpg", ".jpeg": "jpg"}
"""File extension -> the format written."""
_UNDATED = {"png": {"Software": None}, "pdf": {"Creator": None, "Producer": None, "CreationDate": None},
            "svg": {"Creator": None, "Date": None}, "jpg": None}
STREAM_IDS = {"latent": 200, "reconstructions": 201, "abstraction": 202, "samples": 203,
              "samples-draw": 204, "interpolation": 205, "arithmetic": 206, "posteriors": 207,
              "samples-down": 208}
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


def _figure(kind, width_factor=1, height=None):
    plt = _pyplot()
    w, h = FIGSIZE[kind]
    return plt, plt.figure(figsize=(w * width_factor, h if height is None else height), dpi=DPI, layout="constrained")


@contextlib.contextmanager
def _drawing(kind, width_factor=1, *, path, height=None):
    """A figure of ``kind`` to draw on (``height`` inches where it fits its content, else the
    kind's): saved to ``path`` and closed on leaving the block, closed without saving if
    drawing raised."""
    plt, fig = _figure(kind, width_factor, height)
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
    latent = model.latent if model.chain is None else " + ".join(f"{L} (h{l})" for l, L in enumerate(model.chain.latents, 1))
    return (f"{model.objective.model_name}, L = {latent}, {model.likelihood.name}"
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


def _wrap(text, width, fontsize):
    """``text`` broken into lines that fit ``width`` inches at ``fontsize`` points (DejaVu Sans
    averages about 0.55 em a character), its own line breaks kept."""
    chars = max(20, int(width * 72 / (0.55 * fontsize)))
    return "\n".join(textwrap.fill(line, chars) for line in text.split("\n"))


def class_names(split, labels=None):
    """{label: name} of the labels of ``split`` (a Dataset; ``labels``: those to name, default its
    own): the data's names where they have them (``classes``: an image folder's sub-folder names,
    label k the k-th in string order), else the label itself as text. {} for unlabelled data."""
    labels = getattr(split, "labels", None) if labels is None else labels
    if labels is None:
        return {}
    names = getattr(split, "classes", None)
    return {int(c): str(names[int(c)]) if names is not None and int(c) < len(names) else str(int(c))
            for c in np.unique(np.asarray(labels))}


def _class_colours(classes):
    import matplotlib

    cmap = matplotlib.colormaps["tab10" if len(classes) <= 10 else "turbo"]
    n = max(len(classes) - 1, 1)
    return {c: cmap(i if len(classes) <= 10 else i / n) for i, c in enumerate(classes)}


def _class_handles(colours, names):
    """A legend entry per class: its colour, its name."""
    from matplotlib.lines import Line2D

    return [Line2D([], [], marker="o", linestyle="", color=colour, label=names.get(c, str(c)))
            for c, colour in colours.items()]


def _figure_legend(fig, handles, width, fontsize=8):
    """The classes' legend under the figure, in as many columns as fit ``width`` inches (an entry
    is its marker, 2.8 em, its name and 2 em between columns), so none is cut off."""
    longest = max((len(h.get_label()) for h in handles), default=1)
    fits = int((width * 72 - 2 * fontsize) // ((4.8 + 0.6 * longest) * fontsize))
    fig.legend(handles=handles, title="label", loc="outside lower center", ncol=max(1, min(len(handles), fits)),
               fontsize=fontsize, frameon=False)


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
