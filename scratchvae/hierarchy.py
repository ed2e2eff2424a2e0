"""Several stochastic layers: the chain above the first, and the objectives that run it.

A model with layers h_1 … h_S (``latent=(L_1, …, L_S)``, h_1 next to the data):

    inference   q(h_1 | x) q(h_2 | h_1) … q(h_S | h_{S−1}), each a diagonal Gaussian from a trunk
    generative  p(h_S) = N(0, I), p(h_l | h_{l+1}) = N(μ_p, diag σ_p²) from a trunk (l < S),
                p(x | h_1) through the decoder

    log w = log p(x|h_1) + Σ_{l<S} [log p(h_l | h_{l+1}) − log q(h_l | ·)] + log p(h_S) − log q(h_S | h_{S−1})

Layer 1 is the model's own encoder and posterior; each :class:`UpperLayer` l ≥ 2 holds the
inference trunk of q(h_l | h_{l−1}) (``enc<l>``) and the prior trunk of p(h_{l−1} | h_l)
(``prior<l−1>``, its hidden sizes layer l's reversed, as the decoder mirrors the encoder). Its
prior block is :mod:`scratchvae.ops.hierarchy`'s. Write a_l = log q(h_l|·) − log p(h_l|h_{l+1}) for
l < S (sampled: neither has a closed form against the other).

**The ELBO** (:class:`ChainELBO`): −ELBO = recon + Σ_{l<S} a_l + KL(q(h_S | h_{S−1}) ‖ N(0, I)),
the top layer's KL in closed form given the sampled h_{S−1}. It has the expectation of the sampled
−log w (E_q[a_S] is that KL) with less variance, and it is the one-layer model's closed-form KL
where S = 1. β (and a warm-up of it) weighs the whole Σ a_l + KL_S. **The bound**
(:class:`ChainIW`): log w per (sample, image) by :func:`~scratchvae.ops.iwae.log_weight_rows`, the
one formula of the weights, its ``nll`` being −log p(x|h_1) + Σ_{l<S} a_l and its ε, z and
log-determinant the top layer's. Beside the bound it reports the ELBO's parts (recon, and the
Σ a_l + KL_S it reports as kl) as the mean over the K samples: the samples of a layer above the
first differ, so no one sample's parts stand for the image's as the one-layer model's do.

**The backward**, for either, each term weighted (β, or the row's w̃), after the decoder has
written ∂/∂h_1:

1. for l = 1 … S−1: the prior block of p(h_l | h_{l+1}) (∂ of a_l's prior half into its head, and
   added into ∂/∂h_l), then back through its trunk: ∂/∂h_{l+1} (the first term of it);
2. for l = S … 1: the posterior block of layer l with everything ∂/∂h_l holds (the top: its KL
   in closed form, or −log p(h_S) + log q as sampled; below: log q as sampled,
   :meth:`~scratchvae.posteriors._Gaussian.sampled_backward`), then back through its trunk, whose
   ∂/∂(its input) is added into ∂/∂h_{l−1}; layer 1's trunk is the encoder.

A sample h_l feeds the layer above, its own prior term and (h_1) the decoder: its gradients add.
"""

from __future__ import annotations

from types import SimpleNamespace

from .backend import xp_of
from .objectives import ELBO, ImportanceWeighted, LossResult, OUTPUT_BIAS
from .ops.gaussian import LOGVAR_LIMIT, log_normal_rows, log_standard_normal_rows
from .ops.hierarchy import cond_prior_backward, cond_prior_forward
from .ops.iwae import iw_bound_and_weights, log_weight_rows
from .posteriors import DiagonalGaussian
from .stacks import DenseStack


class UpperLayer:
    """Stochastic layer ``index`` ≥ 2 of latent size ``latent`` above one of size ``below``:
    q(h | h_below) through the trunk ``enc<index>`` (hidden sizes ``hidden``) and the conditional
    prior p(h_below | h) through the trunk ``prior<index−1>`` (``hidden`` reversed)."""

    def __init__(self, index, below, latent, hidden, activation, precision):
        self.index, self.below, self.latent = index, below, latent
        self.posterior = DiagonalGaussian()
        self.trunk = DenseStack(f"enc{index}", (below, *hidden, self.posterior.head_width(latent)), "head",
                                activation, precision)
        self.prior = DenseStack(f"prior{index - 1}", (latent, *hidden[::-1], 2 * below), "head", activation, precision)

    def q_params(self, below):
        """q(h | h_below)'s parameters (μ, logvar clamped as in training) for rows ``below``:
        the verbs' and evaluation's path (it allocates; training runs the workspace's)."""
        return self.posterior.split(self.trunk.forward(below) + self.trunk.last.b)

    def prior_params(self, h):
        """p(h_below | h)'s mean and log-variance for rows ``h``, the log-variance clamped to
        ±LOGVAR_LIMIT as the training block reads it (the verbs' and evaluation's path)."""
        out = self.prior.forward(h) + self.prior.last.b
        return out[:, :self.below], xp_of(out).clip(out[:, self.below:], -LOGVAR_LIMIT, LOGVAR_LIMIT)

    def workspace(self, xp, dtype, rows):
        """Its buffers at ``rows`` samples: both trunks' caches, its posterior's, the rows of
        −log p(h_below | h), and two (rows, L_below) scratches (the prior block's; the trunk's ∂/∂h_below)."""
        e = lambda *shape: xp.empty(shape, dtype=dtype)  # noqa: E731
        return SimpleNamespace(trunk=self.trunk.cache(xp, dtype, rows), prior=self.prior.cache(xp, dtype, rows),
                               q=self.posterior.workspace(xp, dtype, rows, self.latent), nlp=e(rows),
                               work=e(rows, self.below), dx=e(rows, self.below))


class Chain:
    """The layers above the first (see the module); ``first`` is layer 1's posterior."""

    def __init__(self, first, latents, hidden, activation, precision):
        self.first, self.latents = first, tuple(latents)
        self.layers = [UpperLayer(i + 2, latents[i], latents[i + 1], hidden[i + 1], activation, precision)
                       for i in range(len(latents) - 1)]

    def stacks(self):
        """Every trunk of the chain, in the flat buffer's order."""
        return [s for layer in self.layers for s in (layer.trunk, layer.prior)]

    def posteriors(self):
        return [self.first] + [layer.posterior for layer in self.layers]

    def workspace(self, xp, dtype, rows):
        return [layer.workspace(xp, dtype, rows) for layer in self.layers]

    def forward(self, ws, noise, stream):
        """The samples of layers 2 … S (each through its trunk from the one below, noise from
        ``noise`` or ``stream``) and each conditional prior's −log p rows, from layer 1's sample in ws.q."""
        below = ws.q
        for layer, lws, eps in zip(self.layers, ws.obj.chain, noise):
            head = layer.trunk.forward(below.z, lws.trunk)
            layer.posterior.fill_noise(lws.q, eps, stream)
            _, lws.kl = layer.posterior.forward(head, lws.q, layer.trunk.last.b)   # its KL to N(0, I)
            below = lws.q
        below = ws.q
        for layer, lws in zip(self.layers, ws.obj.chain):
            head = layer.prior.forward(lws.q.z, lws.prior)
            cond_prior_forward(head, below.z, lws.nlp, below.scratch, lws.work, bias=layer.prior.last.b)
            below = lws.q

    def lower_terms(self, ws, out):
        """Σ_{l<S} a_l per row into ``out``: a_l = −log p(h_l|h_{l+1}) + log q(h_l|·), constants
        cancelled (−½‖ε‖² − log |det ∂h/∂ε| for log q)."""
        xp = xp_of(out)
        out[...] = 0
        qs, heads = self._below(ws)
        for (posterior, q, head), lws in zip(zip(self.posteriors(), qs, heads), ws.obj.chain):
            out += lws.nlp                                  # spent: the rows below reuse it
            out -= posterior.head_log_det_rows(head, q.z.shape[1], out=lws.nlp)
            half = xp.sum(xp.multiply(q.eps, q.eps, out=q.scratch), axis=1, out=lws.nlp)
            half *= 0.5
            out -= half
        return out

    def _below(self, ws):
        """The workspaces and heads of layers 1 … S−1 (those with a conditional prior)."""
        qs = [ws.q] + [lws.q for lws in ws.obj.chain[:-1]]
        heads = [ws.obj.head] + [lws.trunk.out for lws in ws.obj.chain[:-1]]
        return qs, heads

    def top(self, ws):
        """(posterior, its workspace, its head) of the top layer S."""
        layer, lws = self.layers[-1], ws.obj.chain[-1]
        return layer.posterior, lws.q, lws.trunk.out

    def backward(self, ws, dz1, weight, top_backward):
        """Steps 1 and 2 of the module's backward down to ∂/∂h_1, which lands in ``dz1`` (it holds
        the decoder's). ``weight``: β or w̃ per row; ``top_backward(posterior, dz, q, head, dhead)``:
        the top layer's block (its KL in closed form, or as sampled)."""
        qs, _ = self._below(ws)
        dzs = [dz1] + [lws.q.dz for lws in ws.obj.chain]
        for i, (layer, lws) in enumerate(zip(self.layers, ws.obj.chain)):
            cond_prior_backward(lws.prior.out, qs[i].z, weight, lws.prior.dout, dzs[i], lws.work)
            layer.prior.backward(lws.prior.dout, lws.prior, dx=dzs[i + 1])      # writes ∂/∂h_{l+1}
        for i in range(len(self.layers) - 1, -1, -1):
            layer, lws = self.layers[i], ws.obj.chain[i]
            if i == len(self.layers) - 1:
                top_backward(layer.posterior, dzs[i + 1], lws.q, lws.trunk.out, lws.trunk.dout)
            else:
                layer.posterior.sampled_backward(dzs[i + 1], lws.q, lws.trunk.out, weight, lws.trunk.dout)
            dzs[i] += layer.trunk.backward(lws.trunk.dout, lws.trunk, dx=lws.dx)


    def log_weights(self, model, x, eps):
        """log w = log p(x, h_1 … h_S) − log q(h_1 … h_S | x) per (image, sample), in float64:
        x (n, D), ``eps`` one (n, k, L_l) array per layer, bottom first -> (n, k). Evaluation's
        formula (it allocates; constants kept, so log w estimates log p(x)): each layer's
        log q = log N(ε; 0, I) − log |det ∂h/∂ε|, each conditional prior's log N(h_l; μ_p, diag
        e^{lv_p}) with lv_p clamped as in training, log N(h_S; 0, I) and log p(x|h_1)."""
        f64 = "float64"
        n, k = eps[0].shape[:2]
        params = tuple(p[:, None] for p in model.encode(x))                   # (n, 1, L_1) each
        h = h1 = self.first.sample(params, eps[0])                             # (n, k, L_1)
        logw = -self.first.log_q_rows(eps[0], params, dtype=f64)
        for layer, e in zip(self.layers, eps[1:]):
            below = h.reshape(n * k, -1)
            params = layer.q_params(below)
            up = layer.posterior.sample(params, e.reshape(n * k, -1))
            logw -= layer.posterior.log_q_rows(e.reshape(n * k, -1), params, dtype=f64).reshape(n, k)
            mu, lv = layer.prior_params(up)
            logw += log_normal_rows(below, mu, lv, dtype=f64).reshape(n, k)
            h = up.reshape(n, k, -1)
        logw += log_standard_normal_rows(h, dtype=f64)
        y = model.decode(h1.reshape(n * k, -1)).reshape(n, k, -1)
        logw -= model.likelihood.nll_rows(y, x[:, None, :], model.params, dtype=f64)
        return logw


    # -- the verbs: codes per layer, ancestral samples, per-layer terms ------------------------------
    def encode_layers(self, model, x, stream=None):
        """Each layer's q parameters for images x (n, D), bottom first: a list of (μ_l, lv_l)
        (lv clamped as in training), and of the codes h_l passed up: μ_l (``stream`` None: the
        means' path, h_l = μ_l feeding q(h_{l+1}|h_l)) or h_l ~ q(h_l|h_{l−1}) drawn from ``stream``."""
        params, codes = [], []
        for i, q in enumerate(self.posteriors()):
            if i == 0:
                params.append(model.encode(x))
            else:
                params.append(self.layers[i - 1].q_params(codes[-1]))
            mu = params[-1][0]
            codes.append(mu if stream is None else q.sample(params[-1], stream.normal(mu.shape, mu.dtype.name)))
        return params, codes

    def down(self, model, h, layer, stream=None):
        """h_1 from codes ``h`` of ``layer`` (1-based; 1 returns h): each conditional prior's mean
        p(h_{l−1}|h_l) on the way down, or (``stream``) a draw from it."""
        for upper in self.layers[:layer - 1][::-1]:
            mu, lv = upper.prior_params(h)
            h = mu if stream is None else mu + model.xp.exp(0.5 * lv) * stream.normal(mu.shape, mu.dtype.name)
        return h

    def posterior_means(self, model, x, samples, stream, batch=100):
        """E_q[h_l | x] of each layer for images x (N, D), bottom first, as float64 backend arrays
        (N, L_l): μ_1(x) for the first; above it E_{q(h_1 … h_{l−1}|x)}[μ_l(h_{l−1})], the mean of μ_l
        over ``samples`` chains drawn from q (``stream``), ``batch`` images at a time (the encoder
        runs once per image, each layer above once per chain)."""
        xp, f64, out = model.xp, "float64", [[] for _ in self.latents]
        for i in range(0, x.shape[0], batch):
            params = model.encode(x[i:i + batch])
            n = params[0].shape[0]
            out[0].append(params[0].astype(f64))
            h = self.first.sample(tuple(p[:, None] for p in params),
                                  stream.normal((n, samples, self.latents[0]), params[0].dtype.name))
            h = h.reshape(n * samples, -1)
            for acc, layer in zip(out[1:], self.layers):
                up = layer.q_params(h)
                acc.append(xp.mean(up[0].reshape(n, samples, -1), axis=1, dtype=f64))
                h = layer.posterior.sample(up, stream.normal(up[0].shape, up[0].dtype.name))
        return [xp.concatenate(parts, axis=0) for parts in out]

    def layer_terms(self, model, x, eps):
        """Each layer's part of the ELBO's kl per image, bottom first, in float64: a_l = log q(h_l|·)
        − log p(h_l|h_{l+1}) as sampled below the top, the top's KL in closed form (their sum is
        what the ELBO reports as kl for the same ε, one (n, L_l) array per layer in ``eps``)."""
        xp, f64 = model.xp, "float64"
        params = model.encode(x)
        h = self.first.sample(params, eps[0])
        terms, below = [], (self.first, params, eps[0], h)
        for layer, e in zip(self.layers, eps[1:]):
            up_params = layer.q_params(h)
            up = layer.posterior.sample(up_params, e)
            mu, lv = layer.prior_params(up)
            q, p_, e_, h_ = below
            terms.append(q.log_q_rows(e_, p_, dtype=f64) - log_normal_rows(h_, mu, lv, dtype=f64))
            below, h = (layer.posterior, up_params, e, up), up
        terms.append(xp.sum(below[0].kl_terms(below[1]), axis=1, dtype=f64))
        return terms


class _ChainObjective:
    """What both chain objectives add to their one-layer form: noise per layer, the chain's
    buffers, and the chain run after layer 1's sample."""

    def __init__(self, chain):
        self.chain = chain

    def eps_shape(self, n, L):
        return tuple(super(_ChainObjective, self).eps_shape(n, L_l) for L_l in self.chain.latents)

    def noise(self, posterior, stream, n, L, dtype):
        return tuple(posterior.draw_noise(stream, s, dtype) for s in self.eps_shape(n, L))

    def noise_rows(self, eps, rows, ws):
        """Layer 1's ε rows; the others' kept for the chain's forward."""
        ws.obj.noise = [None] * len(self.chain.layers) if eps is None else [e.reshape(rows, -1) for e in eps[1:]]
        return None if eps is None else eps[0].reshape(rows, -1)

    def workspace(self, xp, dtype, head, dhead, width):
        own = super().workspace(xp, dtype, head, dhead, width)
        own.chain = self.chain.workspace(xp, dtype, own.head.shape[0])
        own.terms = xp.empty(own.head.shape[0], dtype=dtype)
        return own


class ChainELBO(_ChainObjective, ELBO):
    """recon + β (Σ_{l<S} a_l + KL(q(h_S|h_{S−1}) ‖ N(0, I))), see the module."""

    def __init__(self, beta, chain):
        ELBO.__init__(self, beta)
        _ChainObjective.__init__(self, chain)

    def loss(self, model, ws, y, target, kl, beta):
        self.chain.forward(ws, ws.obj.noise, ws.noise)
        recon, ws.obj.extra = model.likelihood.forward_backward(y, target, ws.dy, ws.scratch,
                                                                model.params[OUTPUT_BIAS], model.params)
        terms = self.chain.lower_terms(ws, ws.obj.terms)
        kl = xp_of(terms).sum(terms) + ws.obj.chain[-1].kl          # + the top layer's, closed form
        return LossResult(recon=recon, kl=kl, n=target.shape[0], beta=beta, fits_data=True, of=self)

    def head_grad(self, posterior, ws, dz, beta):
        self.chain.backward(ws, dz, beta, lambda p, dz_top, q, head, dhead: p.backward(dz_top, q, head, beta, dhead))
        posterior.sampled_backward(dz, ws.q, ws.obj.head, beta, ws.obj.dhead)
        return ws.obj.dhead


class ChainIW(_ChainObjective, ImportanceWeighted):
    """−Σ_n L_K(x_n) of the whole chain's log-weights, see the module."""

    parts = "the samples' mean"

    def __init__(self, samples, chain):
        ImportanceWeighted.__init__(self, samples)
        _ChainObjective.__init__(self, chain)

    def loss(self, model, ws, y, target, kl, beta):
        self.chain.forward(ws, ws.obj.noise, ws.noise)
        K, P, own = self.samples, model.params, ws.obj
        n = target.shape[0] // K
        y += P[OUTPUT_BIAS]
        nll = model.likelihood.nll_rows(y, target, P, out=own.nll, buffers=(ws.dy, ws.scratch))
        terms = self.chain.lower_terms(ws, own.terms)
        xp = xp_of(terms)
        recon, kl = xp.sum(nll) / K, (xp.sum(terms) + own.chain[-1].kl) / K   # the K samples' mean
        terms += nll                                     # −log p(x|h_1) + Σ a_l
        top, q, head = self.chain.top(ws)
        log_det = top.head_log_det_rows(head, q.z.shape[1], out=own.chain[-1].nlp)
        logw = log_weight_rows(q.eps, q.z, log_det, terms, out=own.logw, scratch=q.scratch)
        bound = iw_bound_and_weights(logw.reshape(K, n), own.w)
        return LossResult(recon=recon, kl=kl, n=n, bound=-bound, of=self)

    def head_grad(self, posterior, ws, dz, beta):
        K, w, dhead = self.samples, ws.obj.w.reshape(-1), ws.enc.dout
        self.chain.backward(ws, dz, w, lambda p, dz_top, q, head, dh: p.iw_backward(dz_top, q, head, w, dh))
        posterior.sampled_backward(dz, ws.q, ws.obj.head, w, ws.obj.dhead)
        if K > 1:
            xp_of(dhead).sum(ws.obj.dhead.reshape(K, dhead.shape[0], -1), axis=0, out=dhead)
        return dhead


def make_chain_objective(settings, chain):
    """The objective of a model of several stochastic layers (the configuration has refused the
    modes and posteriors that do not chain): the ELBO or the bound, over the chain."""
    if settings.objective == "iwae":
        return ChainIW(settings.iw_samples, chain)
    return ChainELBO(settings.beta, chain)
