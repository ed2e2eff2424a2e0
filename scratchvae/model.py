"""The model: a VAE (and, for the classic comparison, a plain autoencoder and a KL-only model).

Architecture (D data, H hidden, L latent; ``hidden=(H1, H2)`` is mirrored in the decoder)::

    encoder   x (N,D) -> act(x W + b) (N,H1) -> ... -> head (N, 2L) = [μ | logvar]   (one GEMM)
    sample    z = μ + exp(½ logvar) ⊙ ε,  ε ~ N(0, I)                           (N, L)
    decoder   z -> act(z V + c) (N,H_last) -> ... -> y (N,D)   logits (Bernoulli) or means (Gaussian)
    loss      recon = −log p(x|z) summed;  kl = KL(q(z|x) ‖ N(0,I)) summed
              objective = recon + β·kl (what the gradients are of);  neg_elbo = recon + kl

The model composes parts and asks them instead of branching on names: two dense stacks, the
encoder's and the decoder's trunks (:mod:`scratchvae.stacks`); its **posterior**
(:mod:`scratchvae.posteriors`: the head's width, the sample and the KL); its **likelihood**
(:mod:`scratchvae.likelihoods`: −log p(x|z), its gradient, the decoder mean, draws); and its
**objective** (:mod:`scratchvae.objectives`): the ELBO with its β, the importance-weighted bound
L_K of K = ``iw_samples`` samples per image, a plain autoencoder's reconstruction (``mode='ae'``:
z = μ, a point, no KL) or KL-only (``mode='kl-only'``: β·KL alone; the reconstruction is still
computed and reported, but its gradient is never formed). It runs one forward path and one
backward path (:meth:`VAE._forward`, :meth:`VAE._backward`) that ask the objective where the
objectives differ.

The fused head. One weight ``enc.head.W`` of shape (H, 2L) and bias (2L,) produce μ and
logvar in one GEMM: columns [:L] are the μ head and [L:] the logvar head. Two separate
PyTorch heads ``fc21``/``fc22`` (``nn.Linear(H, L)``) map to it as
``fc21.weight = W[:, :L].T, fc21.bias = b[:L]``, ``fc22.weight = W[:, L:].T, fc22.bias = b[L:]``.
Every weight is stored (fan_in, fan_out): ``nn.Linear.weight`` is its transpose.

Memory. All parameters live in one flat buffer ``theta`` and all gradients in one flat
buffer ``grad`` (the per-name arrays are views), so an optimizer updates everything in one
pass. Each batch shape gets a :class:`Workspace` of preallocated buffers; after the first step
at a shape, a training step allocates nothing large.

Precision. The matrix products compute in the model's ``precision``
(:mod:`scratchvae.ops.precision`): 'fp32', 'tf32' or 'bf16'; the stacks ask that object for
each product's operands (bf16: bfloat16 words of θ, made from the float32 θ at the start of
each forward, and of each activation and output gradient, kept in the workspace) and never
branch on the name. Parameters, gradients and every elementwise block stay in ``dtype``.

The model holds no training state: β is its configured weight of the KL term, which a
training schedule overrides per step through ``loss_and_grads(..., beta=)`` without writing
it. Its random streams (``rng``) are its own: 'init' (parameters), 'noise' (ε) and 'eval'.
"""

from __future__ import annotations

import math

import numpy as np

from .backend import get_backend
from .backend.random import Streams
from .errors import InputError
from .hierarchy import Chain, make_chain_objective
from .likelihoods import make_likelihood
from .config import DTYPES, LATER_SETTINGS, ModelConfig
from .objectives import LossResult, make_objective
from .ops.precision import make_precision
from .posteriors import make_posterior
from .saving import load_model, save_model
from .stacks import DenseStack

__all__ = ["VAE", "LossResult", "ModelConfig", "Workspace", "DTYPES", "MODEL_STREAMS"]
MODEL_STREAMS = {"init": 0, "noise": 1, "eval": 4}
"""The model's random streams and their ids (the ids fix the numbers; see backend.random)."""
_ALIGN = 16  # parameter views start on 64-byte boundaries (float32)


class Workspace:
    """Every buffer one training step at batch size ``n`` needs, allocated once, by part: the
    encoder's and the decoder's caches (``enc``, ``dec``: :class:`~scratchvae.stacks.StackCache`;
    the head is ``enc.out``, the decoder's output y and its gradient ``dec.out``, ``dec.dout``),
    the objective's (``obj``: the head's rows and their gradient, and its own), the posterior's
    (``q``: noise, sample, …), and the likelihood's scratch (rows, D). ``target`` is the
    reconstruction target of the current step, once per sample of z."""

    def __init__(self, model, n):
        xp, dt = model.xp, model.dtype
        self.enc = model.encoder.cache(xp, dt, n)
        self.obj = model.objective.workspace(xp, dt, self.enc.out, self.enc.dout, model.input_dim)
        rows = n * model.objective.samples                 # decoded rows: K samples per image
        self.dec = model.decoder.cache(xp, dt, rows)
        self.q = model.posterior.workspace(xp, dt, rows, model.latent)
        self.scratch = xp.empty((rows, model.input_dim), dtype=dt)
        self.target = None

    @property
    def y(self):
        return self.dec.out

    @property
    def dy(self):
        return self.dec.dout


class VAE:
    """A variational autoencoder with hand-written forward and backward passes.

    ``VAE(config)`` with a :class:`~scratchvae.config.ModelConfig`, or ``VAE(**settings)`` with
    its fields as keywords (``VAE(config, **settings)``: the config with those changed); every
    setting, its default and its rules are the config's (input_dim, hidden, latent, activation,
    likelihood, sigma, mode, beta, dtype, seed, posterior, offdiag_scale, objective, iw_samples,
    precision). ``backend``: 'numpy', 'cupy', 'auto' or a Backend: where the model runs, not
    what it is. ``settings`` keeps the config; ``config()`` is its JSON.
    """

    def __init__(self, config=None, *, backend="numpy", **settings):
        self.settings = _settings(config, settings)
        s = self.settings
        self.backend = get_backend(backend)
        self.xp = self.backend.xp
        layered = len(s.latents) > 1
        self.input_dim, self.activation = s.input_dim, s.activation
        self.hidden, self.latent = (s.hidden[0], s.latents[0]) if layered else (s.hidden, s.latent)
        self.dec_hidden = self.hidden[::-1]
        self.likelihood = make_likelihood(s.likelihood, s.sigma)
        self.mode, self.beta, self.seed = s.mode, s.beta, s.seed
        self.posterior = make_posterior(s)
        self.iw_samples = s.iw_samples or 1
        self.dtype = np.dtype(s.dtype)
        self.precision = _precision(s.precision, self.backend)
        self.chain = Chain(self.posterior, s.latents, s.hidden, s.activation, self.precision) if layered else None
        self.objective = (make_chain_objective(s, self.chain) if layered
                          else make_objective(s.mode, s.objective, s.beta, s.iw_samples))
        self.rng = Streams(self.seed, MODEL_STREAMS, xp=self.xp)
        self.encoder = DenseStack("enc", (self.input_dim, *self.hidden, self.posterior.head_width(self.latent)),
                                  "head", self.activation, self.precision, reads_data=True)
        self.decoder = DenseStack("dec", (self.latent, *self.dec_hidden, self.input_dim), "out", self.activation,
                                  self.precision)
        self._build_params()
        self._workspaces = {}

    # -- structure --------------------------------------------------------------------
    def _build_params(self):
        self.shapes = {}
        for stack in self.stacks():
            self.shapes.update(stack.param_shapes())
        self.shapes.update(self.likelihood.param_shapes(self.input_dim))
        self._offsets = {}
        off = 0
        for name, shape in self.shapes.items():
            self._offsets[name] = off
            off += -(-int(np.prod(shape)) // _ALIGN) * _ALIGN
        self.theta = self.xp.zeros(off, dtype=self.dtype)
        self.grad = self.xp.zeros(off, dtype=self.dtype)
        self.theta_lo = self.precision.buffer(self.xp, (off,))   # bf16: θ's words, for the products
        self.params = self._views(self.theta)
        self.grads = self._views(self.grad)
        self.params_lo = self.params if self.theta_lo is None else self._views(self.theta_lo)
        for stack in self.stacks():
            stack.bind(self.params, self.grads, self.params_lo)
        self._init_params()

    def stacks(self):
        """Every dense stack, in the flat buffer's order: the encoder, the chain's trunks (several
        stochastic layers: :mod:`scratchvae.hierarchy`), the decoder."""
        return [self.encoder, *(self.chain.stacks() if self.chain else ()), self.decoder]

    def _views(self, flat):
        out = {}
        for name, shape in self.shapes.items():
            o = self._offsets[name]
            out[name] = flat[o:o + int(np.prod(shape))].reshape(shape)
        return out

    def _init_params(self):
        """PyTorch ``nn.Linear`` default: weight and bias ~ U(−1/√fan_in, 1/√fan_in).

        Drawn from the 'init' stream in float64 (identical on every backend), then cast. The
        posterior adjusts its head (the full posterior starts S diagonal) and the likelihood
        initialises its own parameters (a learned raw log σ starts at 0, σ ≈ 1).
        """
        stream = self.rng["init"]
        own = self.likelihood.param_shapes(self.input_dim)
        for name, shape in self.shapes.items():
            if name in own:
                continue
            bound = 1.0 / math.sqrt(self.shapes[name[:-1] + "W"][0])
            u = stream.uniform(shape, "float64")
            self.params[name][...] = ((2.0 * u - 1.0) * bound).astype(self.dtype)
        head = self.encoder.last
        self.posterior.init_head(head.W, head.b, self.latent)
        self.likelihood.init_params(self.params)

    def config(self) -> dict:
        """The model's settings as JSON (``settings.to_json()``: 0.1.0's always, the later ones
        where not the default), enough to rebuild it: ``VAE(ModelConfig.from_json(d))``."""
        return self.settings.to_json()

    def config_extras(self) -> dict:
        """The settings added after 0.1.0 that this model records (where not the default)."""
        return {k: v for k, v in self.config().items() if k in LATER_SETTINGS}

    def host_params(self) -> dict:
        """A host NumPy copy of every parameter (checkpoint boundary: a sync on a GPU)."""
        return {k: self.backend.to_host(v).copy() for k, v in self.params.items()}

    def set_params(self, arrays: dict):
        """Copy host or backend arrays into the parameters (names and shapes must match)."""
        missing = [k for k in self.shapes if k not in arrays]
        extra = [k for k in arrays if k not in self.shapes]
        bad = [f"{k}: expected {self.shapes[k]}, got {tuple(arrays[k].shape)}"
               for k in self.shapes if k in arrays and tuple(arrays[k].shape) != self.shapes[k]]
        if missing or extra or bad:
            raise InputError("parameters do not match the model: " + "; ".join(
                ([f"missing {missing}"] if missing else []) + ([f"unexpected {extra}"] if extra else []) + bad))
        for k, v in arrays.items():
            self.params[k][...] = self.backend.asarray(v, dtype=self.dtype)

    def save(self, path):
        """Write the model, its configuration and parameters (and its random streams' state), to
        one ``.npz`` at ``path``: no optimizer state, nothing pickled (see :mod:`scratchvae.saving`)."""
        return save_model(self, path)

    @classmethod
    def from_json(cls, settings, backend="numpy", where="the model's configuration", unknown=InputError):
        """The model of recorded settings (a run's or a model file's ``config()``, read by
        :meth:`ModelConfig.from_json <scratchvae.config.ModelConfig.from_json>`), new parameters."""
        return cls(ModelConfig.from_json(settings, where, unknown), backend=backend)

    @classmethod
    def load(cls, path, backend=None):
        """The model saved at ``path`` by :meth:`save`, or the model of a run's checkpoint file,
        on ``backend`` (default numpy)."""
        return load_model(cls, path, backend)

    # -- validation ---------------------------------------------------------------------
    def _check_x(self, x, what="x", width=None):
        """Backend, shape (N, width) with N ≥ 1 (width: D by default), and dtype."""
        width = self.input_dim if width is None else width
        self.backend.check(what, x)
        if x.ndim != 2 or x.shape[1] != width:
            raise InputError(f"{what} must have shape (N, {width}), got {tuple(x.shape)}")
        if x.shape[0] < 1:
            raise InputError(f"{what} must hold at least one row, got shape {tuple(x.shape)}")
        if x.dtype != self.dtype:
            hint = (f"integer images: use {what}.astype('{self.dtype.name}') / 255 (fit does this for you)"
                    if x.dtype.kind in "ui" and width == self.input_dim else
                    f"convert with {what}.astype('{self.dtype.name}')")
            raise InputError(f"{what} must have dtype {self.dtype.name} (the model's), got {x.dtype}; {hint}")

    def _check_finite(self, what, a):
        """Refuse NaN/Inf in ``a``: one reduction and one host sync (the public verbs only).

        Its cost is about 1/H of the GEMM that follows; :meth:`loss_and_grads`, the hot
        path, skips it: ``fit`` checks its data once and the loss every few steps.
        """
        xp = self.xp
        if bool(xp.isfinite(a).all()):
            return
        bad = self.backend.to_host(~xp.isfinite(a))
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise InputError(f"{what} holds {int(bad.sum())} non-finite values (NaN or Inf); "
                         f"the first at index {first}")

    def eps_shape(self, n):
        """The shape of the noise ε of one :meth:`loss_and_grads` call on n images: (n, L), or
        (K, n, L) with ``objective='iwae'`` (a point code takes none; an ε given is ignored).
        Several stochastic layers: a tuple of one such shape per layer, bottom first."""
        return self.objective.eps_shape(n, self.latent)

    def noise(self, n, stream):
        """One :meth:`loss_and_grads` call's ε for n images drawn from ``stream`` (a tuple of one
        array per layer with several stochastic layers), or None when the model's code is a point."""
        return self.objective.noise(self.posterior, stream, n, self.latent, self.dtype.name)

    def _check_batch(self, x, eps, target):
        """x and target (N, D), eps :meth:`eps_shape` as :meth:`loss_and_grads` takes them;
        returns target."""
        self._check_x(x)
        n = x.shape[0]
        if eps is not None:
            self._check_eps(eps, self.eps_shape(n))
        if target is None:
            return x
        if target is not x:
            self._check_x(target, "target")
            if target.shape != x.shape:
                raise InputError(f"target must have x's shape {tuple(x.shape)}, got {tuple(target.shape)}")
        return target

    def _check_eps(self, eps, shape):
        """eps of ``shape``: one array, or (several stochastic layers) a tuple of one per layer."""
        if self.chain is None:
            self.backend.check("eps", eps)
            if tuple(eps.shape) != shape or eps.dtype != self.dtype:
                raise InputError(f"eps must be a {self.dtype.name} array of shape {shape}, "
                                 f"got {eps.dtype} {tuple(eps.shape)}")
            return
        if not isinstance(eps, (tuple, list)) or len(eps) != len(shape):
            raise InputError(f"eps must be a tuple of {len(shape)} arrays (one per stochastic layer) of shapes "
                             f"{shape}, got {type(eps).__name__}"
                             + (f" of {len(eps)}" if isinstance(eps, (tuple, list)) else ""))
        for i, (e, s) in enumerate(zip(eps, shape)):
            self.backend.check(f"eps[{i}]", e)
            if tuple(e.shape) != s or e.dtype != self.dtype:
                raise InputError(f"eps[{i}] (layer {i + 1}'s) must be a {self.dtype.name} array of shape {s}, "
                                 f"got {e.dtype} {tuple(e.shape)}")

    # -- the verbs ----------------------------------------------------------------------
    def _weights_for_products(self):
        """Before a forward: θ as the products read it (bf16: θ's words, from the float32 θ)."""
        self.precision.operand(self.theta, self.theta_lo)

    def encode(self, x):
        """x (N, D) -> the posterior's parameters: (μ, logvar), each (N, L), for the diagonal
        posterior; (μ, scale_tril) with scale_tril S (N, L, L) lower triangular, q = N(μ, SSᵀ),
        for the full one; (μ, None) in 'ae' mode. The log-scales are clamped as in training
        (logvar to ±30, log S_ii to ±15; see ops.gaussian, ops.fullcov).
        x must be finite, of the model's dtype and backend (uint8 images: divide by 255).
        """
        self._check_x(x)
        self._check_finite("x", x)
        self._weights_for_products()
        return self.posterior.split(self.encoder.forward(x) + self.encoder.last.b)

    def reparameterize(self, mu, logvar, eps=None):
        """z = μ + exp(½ logvar) ⊙ ε (full posterior: ``logvar`` is scale_tril S, z = μ + S ε);
        ε drawn from the 'noise' stream unless given."""
        if eps is None:
            eps = self.rng["noise"].normal(mu.shape, self.dtype.name)
        return self.posterior.sample((mu, logvar), eps)

    def decode(self, z):
        """z (N, L) -> decoder output (N, D): logits (Bernoulli) or means (Gaussian).

        z must be finite, of the model's dtype and backend.
        """
        self._check_x(z, "z", width=self.latent)
        self._check_finite("z", z)
        self._weights_for_products()
        return self.decoder.forward(z) + self.decoder.last.b

    def decode_mean(self, z):
        """E[x | z]: σ(logits) for Bernoulli, the means for Gaussian."""
        y = self.decode(z)
        return self.likelihood.mean(y, self.params, out=y)

    def log_sigma(self):
        """The Gaussian decoder's log σ: a float (fixed σ) or an array (1,) / (D,) (learned)."""
        return self.likelihood.log_sigma(self.params)

    def sample(self, n, eps=None, draw=False):
        """Decode n codes z ~ N(0, I) (from the 'eval' stream unless ``eps`` is given).

        Several stochastic layers: ancestral sampling, h_S ~ N(0, I) (``eps``, (n, L_S), or drawn),
        then each h_l drawn from p(h_l | h_{l+1}) (the 'eval' stream) down to h_1, decoded.
        Returns the decoder means (``draw=False``) or pixels drawn from p(x|h_1).
        """
        n = _positive_int("n", n)
        top = self.chain.latents[-1] if self.chain else self.latent
        if eps is not None:
            self._check_x(eps, "eps", width=top)
            if eps.shape[0] != n:
                raise InputError(f"eps must have shape ({n}, {top}) for n={n}, got {tuple(eps.shape)}")
            self._check_finite("eps", eps)
        z = eps if eps is not None else self.rng["eval"].normal((n, top), self.dtype.name)
        if self.chain:
            z = self.down(z, len(self.chain.latents), self.rng["eval"])
        mean = self.decode_mean(z)
        return self.likelihood.draw(mean, self.params, self.rng["eval"]) if draw else mean

    def down(self, h, layer, stream=None):
        """h_1 (N, L_1) from codes ``h`` (N, L_layer) of stochastic ``layer`` (1-based; 1 returns h):
        through each conditional prior p(h_{l−1} | h_l), its mean, or a draw from it where a random
        ``stream`` is given. For a model with several stochastic layers."""
        if self.chain is None:
            raise InputError("down needs several stochastic layers; this model has one")
        top = len(self.chain.latents)
        if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)) or not 1 <= layer <= top:
            raise InputError(f"layer must be a stochastic layer, 1 to {top}, got {layer!r}")
        self._check_x(h, "h", width=self.chain.latents[layer - 1])
        self._check_finite("h", h)
        self._weights_for_products()
        return self.chain.down(self, h, layer, stream)

    def reconstruct(self, x, sample_z=False):
        """Decoder means of x's code: z = μ (default) or one z ~ q(z|x) (a point code: μ)."""
        params = self.encode(x)
        eps = self.posterior.draw_noise(self.rng["noise"], params[0].shape, self.dtype.name) if sample_z else None
        return self.decode_mean(params[0] if eps is None else self.posterior.sample(params, eps))

    # -- loss and gradients ---------------------------------------------------------------
    def workspace(self, n):
        ws = self._workspaces.get(n)
        if ws is None:
            ws = self._workspaces[n] = Workspace(self, n)
        return ws

    def loss_and_grads(self, x, eps=None, target=None, need_grads=True, beta=None, noise=None):
        """Loss parts of a batch and ∂objective/∂param for every parameter.

        x: (N, D) the encoder's input; ``target`` (default x) the reconstruction target
        (a denoising run passes the corrupted x and the clean target). ``eps``: (N, L)
        injected noise, (K, N, L) with ``objective='iwae'`` (:meth:`eps_shape`); drawn from
        ``noise`` when None (default: the model's 'noise' stream; a training step on a rank
        passes its rows of it, :meth:`Stream.rows <scratchvae.backend.random.Stream.rows>`),
        ignored in 'ae' mode.
        ``beta``: the KL weight of this call (default the model's ``beta``): a number, or a
        float64 backend array of one value (a training schedule's, read on the device);
        'iwae' has none (a number must be 1; an array is not read).
        Returns a :class:`~scratchvae.objectives.LossResult` of batch sums; gradients are of the
        **sum** ``objective = recon + β·kl``, as in the PyTorch VAE example (with 'iwae': of
        −Σ_n L_K(x_n), ``LossResult.bound``).
        x is checked for backend, shape and dtype but not scanned for NaN/Inf (the hot
        path: ``fit`` checks its data once and the loss every few steps).
        """
        target = self._check_batch(x, eps, target)
        beta = self.objective.check_beta(self.beta if beta is None else beta)
        ws = self.workspace(x.shape[0])
        result = self._forward(x, eps, target, beta, ws, self.rng["noise"] if noise is None else noise)
        if need_grads:
            self._backward(ws, beta)
            result.grads = self.grads
        return result

    def _forward(self, x, eps, target, beta, ws, noise):
        """The encoder; the head and the target once per sample of z (the objective's rows); the
        posterior's sample and KL, its head bias folded in; the decoder; the objective's loss."""
        self._weights_for_products()
        head, ws.target = self.objective.rows(self.encoder.forward(x, ws.enc), target, ws)
        ws.noise = noise
        self.posterior.fill_noise(ws.q, self.objective.noise_rows(eps, head.shape[0], ws), noise)
        z, kl = self.posterior.forward(head, ws.q, self.encoder.last.b)
        return self.objective.loss(self, ws, self.decoder.forward(z, ws.dec), ws.target, kl, beta)

    def _backward(self, ws, beta):
        """The objective's gradient at the decoder's output (None: the decoder gets none, as in
        KL-only), back through the decoder into the posterior's dz; the objective's gradient at
        the encoder's head, through the posterior's block; back through the encoder."""
        dy = self.objective.output_grad(self, ws)
        dz = None
        if dy is not None:
            dz = self.posterior.dz_buffer(ws.q, ws.obj.dhead)
            self.decoder.backward(dy, ws.dec, dx=dz)
        self.encoder.backward(self.objective.head_grad(self.posterior, ws, dz, beta), ws.enc)

    def __repr__(self):
        """The settings that shape this model: the activation where there are hidden layers, σ
        where the likelihood has one, β where the objective weighs a KL term."""
        c = self.config()
        extra = "".join(f", {k}={c[k]}" for k in LATER_SETTINGS if k in c and k != "offdiag_scale")
        sigma = f" σ={c['sigma']}" if self.likelihood.has_sigma else ""
        beta = f", β={c['beta']}" if self.objective.uses_beta else ""
        hidden, latent = tuple(c["hidden"]), c["latent"]
        if self.chain is not None:          # one group per stochastic layer, bottom first
            hidden, latent = "/".join(str(tuple(h)) for h in hidden), tuple(latent)
        return (f"VAE(D={c['input_dim']}, hidden={hidden}, L={latent}, "
                f"{c['activation'] if self.hidden else 'linear'}, {c['likelihood']}{sigma}, mode={c['mode']}{beta}"
                f"{extra}, {c['dtype']}, backend={self.backend.name})")


def _settings(config, settings):
    """The :class:`~scratchvae.config.ModelConfig` of ``VAE(config, **settings)``: ``config``
    with ``settings`` changed, or the settings alone."""
    if config is None:
        return ModelConfig(**settings)
    if not isinstance(config, ModelConfig):
        raise InputError(f"config must be a ModelConfig (or give the settings as keywords: VAE(latent=20, ...)), "
                         f"got {type(config).__name__}")
    return config.replace(**settings) if settings else config


def _positive_int(name, v):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
        raise InputError(f"{name} must be a positive integer, got {v!r}")
    return int(v)


def precision_refusal(name, backend):
    """Why precision ``name`` cannot run on ``backend`` (None where it can): a reduced one needs a
    backend that computes it. The one statement of the rule (the model and the command line)."""
    if name in backend.precisions:
        return None
    return (f"needs the cupy backend (a CUDA GPU): the {backend.name} backend computes its matrix products in "
            f"{' or '.join(backend.precisions)} only")


def _precision(name, backend):
    """The :class:`~scratchvae.ops.precision.Precision` called ``name`` on ``backend`` (the
    configuration has checked the rest)."""
    precision = make_precision(name)
    why = precision_refusal(name, backend)
    if why is not None:
        raise InputError(f"precision {name!r} {why}")
    return precision
