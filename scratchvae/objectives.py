"""What a model is trained to minimise: one object per objective, so no caller compares names.

The model runs one forward and one backward path (:mod:`scratchvae.model`) and asks its
objective at the points where objectives differ: between the encoder's head and the decoder's
output, and back.

====================================  ==========================================================
``label``, ``long_label``, ``model_name``  what reports call its loss ("−ELBO", "−L_5", …), at length,
                                      and the model
``title_note``                        what figure titles add for it (", IWAE K = 5")
``columns``                           the names of the three recorded loss columns (batch sums)
``samples``, ``eps_shape(n, L)``      z per image, and the shape of one call's noise ε
``uses_beta``, ``what``, ``no_beta_why``  whether β and a KL warm-up apply (and, naming it, why not)
``adds_up``                           whether its loss is recon + kl (the ELBO's equation)
``parts``                             where it does not: whose recon and kl it reports beside it
``records_kl``                        whether its kl column holds a KL (a point code has none)
``workspace(xp, dtype, head, dhead, D)``  its buffers at one batch shape (``head``/``dhead``: the
                                      rows the posterior samples from and their gradient)
``rows(head, target, ws)``            the head and the target once per sample of z
``loss(model, ws, y, target, kl, β)`` decoder output -> the loss parts (a :class:`LossResult`)
``output_grad(model, ws)``            ∂/∂(decoder output), or None: the decoder gets no gradient
``head_grad(posterior, ws, dz, β)``   ∂/∂(encoder head) through the posterior's block
``record_terms(result)``              (a, b): the recorded loss is a + b in the model's dtype
                                      (b None: a alone)
====================================  ==========================================================

:class:`ELBO` (recon + β·KL; a VAE), :class:`ImportanceWeighted` (−L_K, Burda et al.; its
gradient in :mod:`scratchvae.ops.iwae`), :class:`Reconstruction` (a plain autoencoder's
−log p(x|z) with z = μ(x)) and :class:`KLOnly` (β·KL alone: the reconstruction is computed and
reported, but its gradient is never formed, so the decoder's gradients stay zero).
:func:`make_objective` is the one place a mode and an objective's name become an object.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace

from .backend import xp_of
from .errors import InputError
from .ops.iwae import iw_bound_and_weights, log_weight_rows

OUTPUT_BIAS = "dec.out.b"


@dataclass
class LossResult:
    """Loss parts of one batch (batch **sums**, 0-d backend arrays) and the gradients.

    ``objective`` (what the gradients are of: recon + β·kl for the ELBO, β·kl for KL-only,
    −Σ_n L_K for the importance-weighted bound) and ``neg_elbo`` (recon + kl) are formed when
    read, so a training step that records only its parts launches nothing for them. ``grads``
    maps every parameter name to ∂objective/∂param; the arrays are views into the model's flat
    gradient buffer and are overwritten by the next call (copy to keep). ``of`` is the
    objective object that made it.
    """

    recon: object
    kl: object
    n: int
    beta: object = 1.0
    fits_data: bool = True
    grads: dict = field(default_factory=dict)
    bound: object = None
    """The importance-weighted objective's −Σ_n L_K(x_n) (then recon is the first sample's and
    kl the closed form: the single-sample ELBO's parts); None for the others."""
    of: object = None

    def __post_init__(self):
        if self.of is None:
            self.of = ELBO(1.0)

    @property
    def objective(self):
        return self.of.value(self)

    @property
    def neg_elbo(self):
        return self.recon + self.kl

    @property
    def neg_iw_bound(self):
        return self.bound

    @property
    def loss(self):
        """What a run reports as its loss (the objective's ``label``)."""
        return self.of.reported(self)

    def per_sample(self) -> dict:
        """The loss parts as Python floats divided by the batch size (a host sync); with the
        importance-weighted objective also ``neg_iw_bound``."""
        return {k: float(getattr(self, k)) / self.n for k in self.of.per_sample_keys}


class ELBO:
    """recon + β·KL: the negative evidence lower bound weighted by β (a β-VAE for β ≠ 1),
    one z per image, the KL in closed form (the posterior's block)."""

    name, model_name, label, title_note = "elbo", "VAE", "−ELBO", ""
    long_label = "−ELBO (recon + KL)"
    columns = ("neg_elbo", "recon", "kl")
    per_sample_keys = ("recon", "kl", "objective", "neg_elbo")
    samples, uses_beta, fits_data, adds_up = 1, True, True, True
    records_kl = True
    what, no_beta_why = "the ELBO", None

    def __init__(self, beta=1.0):
        self.beta = beta

    def eps_shape(self, n, L):
        return (n, L)

    def noise(self, posterior, stream, n, L, dtype):
        """One call's ε for n images from ``stream`` (None where the posterior takes none)."""
        return posterior.draw_noise(stream, self.eps_shape(n, L), dtype)

    def noise_rows(self, eps, rows, ws):
        """The first posterior's ε as rows (one per sample of z), or None (drawn by the block)."""
        return None if eps is None else eps.reshape(rows, -1)

    def workspace(self, xp, dtype, head, dhead, width):
        """The encoder's head buffers as they are (one z per image), and the likelihood's own
        gradient between the forward and the backward (a learned σ's)."""
        return SimpleNamespace(head=head, dhead=dhead, extra=None)


    def check_beta(self, beta):
        return beta

    def rows(self, head, target, ws):
        return head, target

    def loss(self, model, ws, y, target, kl, beta):
        """The likelihood's fused block: −log p(x|z) summed, and ∂/∂y into ws.dy (kept for the
        backward), the output bias folded in."""
        recon, ws.obj.extra = model.likelihood.forward_backward(y, target, ws.dy, ws.scratch,
                                                                model.params[OUTPUT_BIAS], model.params)
        return LossResult(recon=recon, kl=kl, n=target.shape[0], beta=beta, fits_data=self.fits_data, of=self)

    def output_grad(self, model, ws):
        model.likelihood.backward_params(ws.obj.extra, model.params, model.grads)
        ws.obj.extra = None                      # spent (a learned σ's (D,) vector: not kept)
        return ws.dy

    def head_grad(self, posterior, ws, dz, beta):
        """∂(recon + β·KL)/∂head: the posterior's fused backward (dz spent)."""
        posterior.backward(dz, ws.q, ws.obj.head, beta, ws.obj.dhead)
        return ws.obj.dhead

    def value(self, r):
        beta = r.beta
        if not isinstance(beta, (int, float)):   # a device value from a schedule
            beta = beta.astype(r.kl.dtype).reshape(())
        return r.recon + beta * r.kl

    def reported(self, r):
        return r.neg_elbo

    def record_terms(self, r):
        return r.recon, r.kl


class Reconstruction(ELBO):
    """A plain autoencoder's −log p(x|z) at its point code z = μ(x): the ELBO's path with a
    point posterior (no noise, no KL), and no β to weigh anything."""

    model_name, label = "AE", "reconstruction"
    long_label = "reconstruction −log p(x|z), z = μ(x)"
    uses_beta, records_kl = False, False
    what, no_beta_why = "mode 'ae'", "a plain autoencoder has no KL term to weigh"


class KLOnly(ELBO):
    """β·KL alone. The reconstruction is computed and reported, but nothing of it reaches the
    gradients: the decoder's backward is never run, so its gradients (and a learned σ's) stay
    at the zeros they were made with, and the posterior's block gets no dz."""

    model_name = "KL-only"
    fits_data = False

    def output_grad(self, model, ws):
        return None

    def value(self, r):
        beta = r.beta
        if not isinstance(beta, (int, float)):
            beta = beta.astype(r.kl.dtype).reshape(())
        return beta * r.kl


class ImportanceWeighted:
    """−Σ_n L_K(x_n), the importance-weighted bound of K samples per image (see
    :mod:`scratchvae.ops.iwae`): the encoder once, the head repeated K times (row k·n + i:
    image i, sample k), K samples through the posterior's block and the decoder, the per-row
    log-weights, the bound and its normalised weights w̃; back, each row's gradient weighted by
    w̃ and the K head gradients of an image summed (its head feeds all K samples)."""

    name, model_name = "iwae", "VAE"
    columns = ("neg_iw_bound", "recon", "kl")
    per_sample_keys = ("recon", "kl", "objective", "neg_elbo", "neg_iw_bound")
    uses_beta, fits_data, adds_up, records_kl = False, True, False, True
    parts = "one z's"
    what, no_beta_why = "objective 'iwae'", ("its bound has no separate KL term to weigh (the prior and the posterior sit "
                   "inside one log-mean-exp)")

    def __init__(self, samples):
        self.samples = samples
        self.label, self.title_note = f"−L_{samples}", f", IWAE K = {samples}"
        self.long_label = f"−L_{samples} (importance-weighted bound)"

    def eps_shape(self, n, L):
        return (self.samples, n, L)

    noise, noise_rows = ELBO.noise, ELBO.noise_rows

    def workspace(self, xp, dtype, head, dhead, width):
        """The head, its gradient and the target once per sample (the encoder's own head buffers
        when K = 1), the weights w̃ (K, N), and −log p(x|z) and log w per row."""
        (n, H), K = head.shape, self.samples
        rows = K * n
        e = lambda *shape: xp.empty(shape, dtype=dtype)  # noqa: E731
        if K == 1:
            return SimpleNamespace(head=head, dhead=dhead, target=None, w=e(K, n), nll=e(rows), logw=e(rows))
        return SimpleNamespace(head=e(rows, H), dhead=e(rows, H), target=e(rows, width), w=e(K, n),
                               nll=e(rows), logw=e(rows))


    def check_beta(self, beta):
        if isinstance(beta, (int, float)) and beta != 1:
            raise InputError(f"objective 'iwae' has no KL weight: beta must be 1, got {beta!r}")
        return beta

    def rows(self, head, target, ws):
        K, own = self.samples, ws.obj
        if K == 1:
            return head, target
        n = head.shape[0]
        own.head.reshape(K, n, -1)[...] = head
        own.target.reshape(K, n, -1)[...] = target
        return own.head, own.target

    def loss(self, model, ws, y, target, kl, beta):
        """log w = log p(x|z) + log p(z) − log q(z|x) per (sample, image), the bound and w̃.
        Returns −Σ_n L_K beside the first sample's recon and the closed-form KL."""
        K, P, own = self.samples, model.params, ws.obj
        n = target.shape[0] // K
        y += P[OUTPUT_BIAS]
        nll = model.likelihood.nll_rows(y, target, P, out=own.nll, buffers=(ws.dy, ws.scratch))
        log_det = model.posterior.head_log_det_rows(own.head, model.latent)
        logw = log_weight_rows(ws.q.eps, ws.q.z, log_det, nll, out=own.logw, scratch=ws.q.scratch)
        bound = iw_bound_and_weights(logw.reshape(K, n), own.w)
        return LossResult(recon=xp_of(nll).sum(nll[:n]), kl=kl / K, n=n, bound=-bound, of=self)

    def output_grad(self, model, ws):
        """dy = w̃_r ∂(−log p(x_r|y_r))/∂y_r row by row; a learned σ collects its weighted sum."""
        lik = model.likelihood
        w = ws.obj.w.reshape(-1)
        lik.backward_params(lik.weighted_backward(ws.y, ws.target, w, ws.dy, ws.scratch, model.params),
                            model.params, model.grads)
        return ws.dy

    def head_grad(self, posterior, ws, dz, beta):
        """log p(z) − log q(z|x)'s terms through each sample (the posterior's iw_backward, dz
        spent), then the K rows of an image summed into the encoder's head gradient."""
        K, rows_grad, dhead = self.samples, ws.obj.dhead, ws.enc.dout
        posterior.iw_backward(dz, ws.q, ws.obj.head, ws.obj.w.reshape(-1), rows_grad)
        if K > 1:
            xp_of(dhead).sum(rows_grad.reshape(K, dhead.shape[0], -1), axis=0, out=dhead)
        return dhead

    def value(self, r):
        return r.bound

    def reported(self, r):
        return r.bound

    def record_terms(self, r):
        return r.bound, None


MODES = ("vae", "ae", "kl-only")
OBJECTIVES = ("elbo", "iwae")
IW_SAMPLES = 5
"""K of ``objective='iwae'`` when ``iw_samples`` is not given (Burda et al.'s smaller K)."""


def objective_class(mode, objective):
    """The objective class of a model's ``mode`` and ``objective`` (names as the configuration
    records them): what the configuration asks of it (whether β applies) and what
    :func:`make_objective` builds. The rules between the names are the configuration's."""
    if mode == "ae":
        return Reconstruction
    if mode == "kl-only":
        return KLOnly
    return ImportanceWeighted if objective == "iwae" else ELBO


def make_objective(mode, objective, beta, iw_samples):
    """The objective object of a model's settings (see :func:`objective_class`)."""
    cls = objective_class(mode, objective)
    if cls is ImportanceWeighted:
        return cls(IW_SAMPLES if iw_samples is None else iw_samples)
    return cls(beta)
