"""The decoder's likelihoods p(x | z), one object each, so no caller branches on a name.

A likelihood answers everything the model, evaluation, the figures and the data checks ask of
p(x|z); its formulas live in :mod:`scratchvae.ops.likelihoods`, and it calls them:

=======================================  ==============================================
``name``, ``sigma``                      what it is (the model's ``likelihood`` / ``sigma``)
``param_shapes(D)``, ``init_params(P)``  its own parameters (a learned log σ), if any
``check_data(x, what)``                  the pixel values it can model
``forward_backward(y, x, dy, ...)``      the fused −log p(x|z) sum and ∂/∂y (training)
``backward_params(extra, P, G)``         the gradients of its own parameters
``weighted_backward(y, x, w, dy, ...)``  ∂/∂y of Σ_r w_r (−log p(x_r|y_r)) (importance weights)
``nll_rows(y, x, P, dtype, out, buffers)``  −log p(x|z) per row (importance sampling)
``mean(y, P)``                           E[x | z] from the decoder output y
``output_for_mean(m)``                   the decoder output whose mean is m (to start its bias)
``draw(mean, P, stream)``                pixels drawn from p(x|z)
``log_sigma(P)``                         (Gaussian) log σ
``units``                                what its log p(x) values are
=======================================  ==============================================

``y`` is the decoder's output: logits (Bernoulli) or means (Gaussian); ``P`` and ``G`` the
model's parameter and gradient views by name.
"""

from __future__ import annotations

import math

import numpy as np

from .errors import InputError
from .ops import likelihoods as ops
from .ops.activations import sigmoid

SIGMA_KINDS = ("fixed", "shared", "per-pixel")
LOGSIGMA = "dec.logsigma"


class Bernoulli:
    """Pixels in [0, 1] as Bernoulli probabilities σ(y) of logits y; values in nats."""

    name = "bernoulli"
    has_sigma = False
    learned = False
    units = "nats"

    def __init__(self, kind="fixed", value=1.0):
        self.kind, self.value = kind, value     # no σ here: kept only to record the configuration

    @property
    def sigma(self):
        return sigma_text(self.kind, self.value)

    def param_shapes(self, D):
        return {}

    def init_params(self, params):
        pass

    def check_data(self, x, what):
        """Raise unless the float pixels ``x`` (finite) are probabilities, in [0, 1] (a host sync)."""
        lo, hi = float(x.min()), float(x.max())
        if lo < 0 or hi > 1:
            raise InputError(f"{what}: a Bernoulli likelihood needs pixel values in [0, 1], got values "
                             f"in [{lo:g}, {hi:g}]; scale the data or use likelihood='gaussian'")

    def forward_backward(self, y, x, dy, scratch, bias, params):
        """(Σ −log p(x|y), None), dy = σ(y + bias) − x; y is used as scratch."""
        return ops.bernoulli_nll_forward_backward(y, x, dy, scratch, overwrite_logits=True, bias=bias), None

    def backward_params(self, extra, params, grads):
        pass

    def weighted_backward(self, y, x, weights, dy, scratch, params):
        """dy = w_r (σ(y_r) − x_r) row by row (y: logits, bias added, used as scratch); returns None."""
        ops.bernoulli_nll_forward_backward(y, x, dy, scratch, overwrite_logits=True)
        dy *= weights[:, None]

    def nll_rows(self, y, x, params, dtype=None, out=None, buffers=None):
        return ops.bernoulli_nll_rows(y, x, dtype=dtype, out=out, buffers=buffers)

    def mean(self, y, params, out=None):
        return sigmoid(y, out=out)

    def output_for_mean(self, m):
        """The decoder output whose mean is ``m``: the logit log(m / (1 − m)), m clipped to
        [1e-3, 1 − 1e-3] so that never-lit pixels get a finite bias."""
        m = np.clip(np.asarray(m, dtype=np.float64), 1e-3, 1 - 1e-3)
        return np.log(m) - np.log1p(-m)

    def draw(self, mean, params, stream):
        u = stream.uniform(mean.shape, mean.dtype.name)
        return ops.sample_bernoulli(mean, u, out=u)

    def log_sigma(self, params):
        raise InputError("a Bernoulli likelihood has no σ (log_sigma is for likelihood='gaussian')")


class Gaussian:
    """Pixels as N(mean, σ²): σ fixed, or a learned log σ shared by all pixels or per pixel.

    A learned log σ has a soft floor (see :mod:`scratchvae.ops.likelihoods`): the parameter
    ``dec.logsigma`` is its raw value s, starting at 0 (σ ≈ 1). Values are log densities.
    """

    name = "gaussian"
    has_sigma = True
    units = "log densities (not comparable with Bernoulli nats)"

    def __init__(self, kind="fixed", value=1.0):
        self.kind, self.value = kind, value
        self.learned = kind != "fixed"
        self._vectors = (None,)

    @property
    def sigma(self):
        return sigma_text(self.kind, self.value)

    def param_shapes(self, D):
        if not self.learned:
            return {}
        return {LOGSIGMA: (1,) if self.kind == "shared" else (D,)}

    def init_params(self, params):
        if self.learned:
            params[LOGSIGMA][...] = 0

    def check_data(self, x, what):
        """Any finite pixel values have a density."""

    def log_sigma(self, params):
        """log σ: a float (fixed σ) or an array (1,) / (D,) (learned, with its soft floor; a new one)."""
        if not self.learned:
            return math.log(self.value)
        return ops.soft_floor_log_sigma(params[LOGSIGMA])

    def _step_log_sigma(self, params):
        """(log σ, a spare vector of its shape) for a step's blocks: a learned σ's in two buffers
        the likelihood keeps (one pair per parameter array), so a step allocates no vector of D;
        valid until the next block of this likelihood."""
        if not self.learned:
            return math.log(self.value), None
        s = params[LOGSIGMA]
        key = (id(s), s.shape, s.dtype)
        if self._vectors[0] != key:
            self._vectors = (key, s.copy(), s.copy(), s.copy())
        _, log_sigma, spare, scratch = self._vectors
        return ops.soft_floor_log_sigma(s, out=log_sigma, scratch=scratch), spare

    def forward_backward(self, y, x, dy, scratch, bias, params):
        """(Σ −log p(x|y), ∂/∂log σ or None), dy = (y + bias − x)/σ²."""
        y += bias
        log_sigma, spare = self._step_log_sigma(params)
        return ops.gaussian_nll_forward_backward(y, x, log_sigma, dy, scratch, per_pixel=self.kind == "per-pixel",
                                                 vector=spare)

    def weighted_backward(self, y, x, weights, dy, scratch, params):
        """dy = w_r (y_r − x_r)/σ² row by row (y: means, bias added) and, for a learned σ,
        Σ_r w_r ∂(−log p(x_r|y_r))/∂log σ (for :meth:`backward_params`), else None."""
        log_sigma, spare = self._step_log_sigma(params)
        return ops.gaussian_nll_forward_backward(y, x, log_sigma, dy, scratch, per_pixel=self.kind == "per-pixel",
                                                 row_weights=weights, vector=spare)[1]

    def backward_params(self, dlog_sigma, params, grads):
        if self.learned:
            ops.soft_floor_log_sigma_backward(dlog_sigma, params[LOGSIGMA], out=grads[LOGSIGMA])

    def nll_rows(self, y, x, params, dtype=None, out=None, buffers=None):
        log_sigma = self._step_log_sigma(params)[0] if buffers is not None else self.log_sigma(params)
        return ops.gaussian_nll_rows(y, x, log_sigma, dtype=dtype, out=out, buffers=buffers)

    def output_for_mean(self, m):
        """The decoder output whose mean is ``m``: ``m`` itself."""
        return np.asarray(m, dtype=np.float64)

    def mean(self, y, params, out=None):
        if out is not None and out is not y:
            out[...] = y
            return out
        return y

    def draw(self, mean, params, stream):
        return ops.sample_gaussian(mean, self.log_sigma(params), stream.normal(mean.shape, mean.dtype.name))


LIKELIHOODS = {"bernoulli": Bernoulli, "gaussian": Gaussian}


def parse_sigma(sigma):
    """'fixed:V' or a number -> ('fixed', V); 'shared' / 'per-pixel' -> (kind, None)."""
    if isinstance(sigma, (int, float, np.floating)) and not isinstance(sigma, bool):
        value = float(sigma)
    elif isinstance(sigma, str) and sigma in SIGMA_KINDS[1:]:
        return sigma, None
    elif isinstance(sigma, str) and sigma.startswith("fixed:"):
        try:
            value = float(sigma[len("fixed:"):])
        except ValueError:
            raise InputError(f"sigma must be 'fixed:V' with a number V, got {sigma!r}") from None
    else:
        raise InputError(
            f"sigma must be a positive number, 'fixed:V', 'shared' or 'per-pixel', got {sigma!r}"
        )
    if not (value > 0 and math.isfinite(value)):
        raise InputError(f"sigma must be positive and finite, got {value!r}")
    return "fixed", value


def sigma_text(kind, value):
    """The recorded spelling of a σ setting: 'fixed:V', 'shared' or 'per-pixel'."""
    return f"fixed:{value!r}" if kind == "fixed" else kind


def make_likelihood(name, sigma=1.0):
    """The likelihood called ``name`` ('bernoulli' or 'gaussian'); ``sigma`` as :func:`parse_sigma`
    (checked for both, used by the Gaussian)."""
    if name not in LIKELIHOODS:
        raise InputError(f"likelihood must be one of {', '.join(LIKELIHOODS)}, got {name!r}")
    return LIKELIHOODS[name](*parse_sigma(sigma))
