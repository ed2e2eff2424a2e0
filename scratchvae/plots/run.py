"""Every figure of a run into one folder, drawn before any is written (see :mod:`scratchvae.plots`)."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
from pathlib import Path

import numpy as np

from ..checkpoint import temp_path
from ..errors import InputError
from ..runs import position_label
from .decoded import (abstraction_figure, arithmetic_figure, interpolation_figure, manifold_figure,
                      reconstruction_figure, sample_figure)
from .frame import FILES, _check_split, _describe, _positive, _tile, figure_format, tile_shape
from .latent import latent_figure, posterior_figure
from .losses import loss_figure


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
        "latent": None, "reconstructions": images,
        "manifold": images or (None if model.chain is None else
                               "it walks z through N(0, I)'s quantiles, and h1's prior is p(h1|h2), not N(0, I)"),
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
        "losses": lambda p: loss_figure(run.history, p, title=title, objective=model.objective),
        "posteriors": lambda p: posterior_figure(model, test, p, seed=seed),
    }
    out = Path(out_dir)
    names = [Path(FILES[kind]).with_suffix(f".{fmt}").name for kind in makers if plan[kind] is None]
    with _staged_figures(out) as tmp:
        for kind, name in zip([k for k in makers if plan[k] is None], names):
            makers[kind](tmp / name)
    return [out / name for name in names]
