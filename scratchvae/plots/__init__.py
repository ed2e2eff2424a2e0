"""Figures of a trained model, written as PNG, PDF, SVG or JPEG files (matplotlib, imported lazily).

This is the only package that imports matplotlib, and only inside the functions, so
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
(the comparison figure is ``FIGSIZE["comparison"]`` per model column, the posteriors per
panel, the losses per panel: three, or one for a plain autoencoder); PDF and SVG have
the same size in points.

Randomness. Every random choice (which test digits, ε for z ~ q(z|x), prior samples,
drawn pixels) comes from a :class:`~scratchvae.backend.random.Stream` of ``seed`` and a
stream id of this package's own (``STREAM_IDS``, 200 and up), one per figure: a figure
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
    8 losses.png           train/test loss (as the objective names it), reconstruction and KL per
                           epoch (if any epoch is done); an AE's reconstruction alone
    9 posteriors.png       L = 2 only: each test image's q(z|x) as its 1-σ ellipse (an AE: its code, a point)

Mode 'ae' (a plain autoencoder) has no q(z|x) to sample and no KL: the abstraction figure
is skipped; the manifold picks the two units of largest variance of μ and spans each over
the empirical quantiles of μ at the same probabilities, holding the others at the mean of
μ; "samples" decode N(0, I) codes, which an AE was never trained to give meaning to (the
point of the AE/KL-only/VAE comparison).

The package, by figure family (every name above is public here, ``plots.posterior_figure``)::

    frame     matplotlib, sizes, formats, the atomic save, titles, images as tiles
    latent    the codes: latent scatter, the comparison, posteriors as ellipses
    decoded   decoded images: manifold, reconstructions, abstraction, samples, interpolation,
              arithmetic
    losses    training curves
    run       every figure of a run into a folder (plot_run) and which it skips (figure_plan)
"""

from .decoded import (abstraction_figure, arithmetic_figure, grid_figure, interpolation_figure, kl_per_unit,
                      manifold_figure, reconstruction_figure, sample_figure, slerp)
from .frame import (DPI, FIGSIZE, FILES, FORMATS, MAX_CLASS_MEAN, MAX_ELLIPSES, MAX_SCATTER, STREAM_IDS, _tile,  # noqa: F401
                    figure_format, image_tile, tile_shape)
from .latent import comparison_figure, ellipse_axes, latent_figure, posterior_figure
from .losses import loss_figure, loss_panels
from .run import figure_plan, plot_run

__all__ = ["DPI", "FIGSIZE", "FILES", "FORMATS", "MAX_CLASS_MEAN", "MAX_ELLIPSES", "MAX_SCATTER", "STREAM_IDS",
           "abstraction_figure", "arithmetic_figure", "comparison_figure", "ellipse_axes", "figure_format",
           "figure_plan", "grid_figure", "image_tile", "interpolation_figure", "kl_per_unit", "latent_figure",
           "loss_figure", "loss_panels", "manifold_figure", "plot_run", "posterior_figure", "reconstruction_figure",
           "sample_figure", "slerp", "tile_shape"]
