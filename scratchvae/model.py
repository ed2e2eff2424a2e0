"""The model: a VAE (and, for the classic comparison, a plain autoencoder and a KL-only model).

Architecture (D data, H hidden, L latent; ``hidden=(H1, H2)`` is mirrored in the decoder)::

    encoder   x (N,D) -> act(x W + b) (N,H1) -> ... -> head (N, 2L) = [μ | logvar]   (one GEMM)
    sample    z = μ + exp(½ logvar) ⊙ ε,  ε ~ N(0, I)                           (N, L)
    decoder   z -> act(z V + c) (N,H_last) -> ... -> y (N,D)   logits (Bernoulli) or means (Gaussian)
    loss      recon = −log p(x|z) summed;  kl = KL(q(z|x) ‖ N(0,I)) summed
              objective = recon + β·kl (what the gradients are of);  neg_elbo = recon + kl

The model composes two objects and asks them instead of branching: its **posterior**
(:mod:`scratchvae.posteriors`: the head's width, the sample and the KL) and its
**likelihood** (:mod:`scratchvae.likelihoods`: −log p(x|z), its gradient, the decoder mean,
draws). The mode is decided once, in :data:`MODES`:

``'vae'``      a Gaussian posterior (``posterior='diagonal'`` or ``'full'``, N(μ, SSᵀ));
               objective = recon + β·kl.
``'ae'``       a plain autoencoder: z = μ (a point), no sampling, no KL, the head is (H, L).
``'kl-only'``  objective = β·kl; the reconstruction is still computed and reported, but
               nothing of it reaches the gradients (the decoder's gradients are zero).

The objective is decided once too: ``'elbo'`` (above), or ``'iwae'``, the importance-weighted
bound L_K of K = ``iw_samples`` samples per image (:mod:`scratchvae.ops.iwae`; its
forward and backward are :meth:`VAE._forward_iw` and :meth:`VAE._backward_iw`).

The fused head. One weight ``enc.head.W`` of shape (H, 2L) and bias (2L,) produce μ and
logvar in one GEMM: columns [:L] are the μ head and [L:] the logvar head. Two separate
PyTorch heads ``fc21``/``fc22`` (``nn.Linear(H, L)``) map to it as
``fc21.weight = W[:, :L].T, fc21.bias = b[:L]``, ``fc22.weight = W[:, L:].T, fc22.bias = b[L:]``.
Every weight is stored (fan_in, fan_out): ``nn.Linear.weight`` is its transpose.

Memory. All parameters live in one flat buffer ``theta`` and all gradients in one flat
buffer ``grad`` (the per-name arrays are views), so an optimizer updates everything in one
pass. Each batch shape gets a workspace of preallocated buffers; after the first step at a
shape, a training step allocates nothing large.

Precision. The matrix products compute in the model's ``precision``
(:mod:`scratchvae.ops.precision`): 'fp32', 'tf32' or 'bf16'; the model asks that object for
each product's operands (bf16: bfloat16 words of θ, made from the float32 θ at the start of
each forward, and of each activation and output gradient, kept in the workspace) and never
branches on the name. Parameters, gradients and every elementwise block stay in ``dtype``.

The model holds no training state: β is its configured weight of the KL term, which a
training schedule overrides per step through ``loss_and_grads(..., beta=)`` without writing
it. Its random streams (``rng``) are its own: 'init' (parameters), 'noise' (ε) and 'eval'.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .backend import get_backend
from .backend.random import Streams
from .errors import InputError
from .likelihoods import make_likelihood
from .ops.activations import activation_backward, bias_act_forward, check_activation
from .ops.dense import dense_backward
from .ops.iwae import iw_bound_and_weights
from .ops.precision import PRECISIONS, make_precision
from .posteriors import POSTERIORS, PointMass
from .saving import load_model, save_model

MODES = {"vae": (None, True), "ae": (PointMass, True), "kl-only": (None, False)}
"""mode -> (its posterior: None for the Gaussian family ``posterior=`` names, whether the
reconstruction is in the objective)."""
OBJECTIVES = ("elbo", "iwae")
IW_SAMPLES = 5
"""K of ``objective='iwae'`` when ``iw_samples`` is not given (Burda et al.'s smaller K)."""
DTYPES = ("float32", "float64")
MODEL_STREAMS = {"init": 0, "noise": 1, "eval": 4}
"""The model's random streams and their ids (the ids fix the numbers; see backend.random)."""
_ALIGN = 16  # parameter views start on 64-byte boundaries (float32)


@dataclass
class LossResult:
    """Loss parts of one batch (batch **sums**, 0-d backend arrays) and the gradients.

    ``objective`` (recon + β·kl, or β·kl in KL-only mode) and ``neg_elbo`` (recon + kl) are
    formed when read, so a training step that records only recon and kl launches nothing for
    them. ``grads`` maps every parameter name to ∂objective/∂param; the arrays are views into
    the model's flat gradient buffer and are overwritten by the next call (copy to keep).
    """

    recon: object
    kl: object
    n: int
    beta: object = 1.0
    fits_data: bool = True
    grads: dict = field(default_factory=dict)
    bound: object = None
    """``objective='iwae'``: −Σ_n L_K(x_n), the negative importance-weighted bound (then recon
    is the first sample's and kl the closed form: the single-sample ELBO's parts)."""

    @property
    def objective(self):
        if self.bound is not None:
            return self.bound
        beta = self.beta
        if not isinstance(beta, (int, float)):   # a device value from a schedule
            beta = beta.astype(self.kl.dtype).reshape(())
        return self.recon + beta * self.kl if self.fits_data else beta * self.kl

    @property
    def neg_elbo(self):
        return self.recon + self.kl

    @property
    def loss(self):
        """What a run reports as its loss: −L_K (``objective='iwae'``), else −ELBO."""
        return self.neg_elbo if self.bound is None else self.bound

    def per_sample(self) -> dict:
        """The loss parts as Python floats divided by the batch size (a host sync); with
        ``objective='iwae'`` also ``neg_iw_bound``."""
        keys = ("recon", "kl", "objective", "neg_elbo") + (() if self.bound is None else ("neg_iw_bound",))
        return {k: float(self.bound if k == "neg_iw_bound" else getattr(self, k)) / self.n for k in keys}


class _Workspace:
    """Every buffer one training step at batch size ``n`` needs, allocated once."""

    def __init__(self, model, n):
        xp, dt = model.xp, model.dtype
        e = lambda *shape: xp.empty(shape, dtype=dt)  # noqa: E731
        D, head = model.input_dim, model.posterior.head_width(model.latent)
        K = model.iw_samples
        rows = n * K                                          # decoded rows: K samples per image
        self.enc_a = [e(n, h) for h in model.hidden]          # activations
        self.enc_d = [e(n, h) for h in model.hidden]          # gradients w.r.t. them
        self.mask = xp.empty((rows, max(model.hidden, default=1)), dtype=bool)   # ReLU masks
        self.ml, self.dml = e(n, head), e(n, head)            # the head's output and its gradient
        self.q = model.posterior.workspace(xp, dt, rows, model.latent)
        self.z = None                                         # the decoder's input (set per step)
        self.dec_a = [e(rows, h) for h in model.dec_hidden]
        self.dec_d = [e(rows, h) for h in model.dec_hidden]
        self.y, self.dy, self.scratch = e(rows, D), e(rows, D), e(rows, D)
        lo = lambda *shape: model.precision.buffer(xp, shape)  # noqa: E731  (None but for bf16)
        self.enc_lo = [lo(n, w) for w in (D, *model.hidden)]      # the products' copies of their
        self.dec_lo = [lo(rows, w) for w in (model.latent, *model.dec_hidden)]   # inputs (bf16)
        self.dy_lo, self.dml_lo = lo(rows, D), lo(n, head)
        if model.objective == "iwae":                         # the head and target once per sample
            self.mlk, self.dmlk = (e(rows, head), e(rows, head)) if K > 1 else (self.ml, self.dml)
            self.xt = e(rows, D) if K > 1 else None
            self.w, self.target = e(K, n), None               # normalised weights w̃ (K, N)
            self.nll, self.logw = e(rows), e(rows)            # −log p(x|z) and log w per row


class VAE:
    """A variational autoencoder with hand-written forward and backward passes.

    Parameters
    ----------
    input_dim : pixels per example D (784 for MNIST).
    hidden : encoder hidden sizes, mirrored in the decoder; ``()`` gives a linear VAE.
    latent : latent size L.
    activation : 'relu', 'leaky_relu', 'tanh', 'sigmoid' or 'softplus'.
    likelihood : 'bernoulli' (decoder outputs logits; x in [0, 1]) or 'gaussian'
        (decoder outputs means); see :mod:`scratchvae.likelihoods`.
    sigma : Gaussian only: a fixed σ (number or 'fixed:V', default 1), or 'shared' /
        'per-pixel' for a learned log σ (soft floor at log σ = −6, see
        :mod:`scratchvae.ops.likelihoods`).
    mode : 'vae', 'ae' (plain autoencoder) or 'kl-only' (see :data:`MODES`).
    posterior : 'diagonal' (N(μ, diag σ²)) or 'full' (N(μ, SSᵀ), S lower triangular); not
        for mode 'ae', whose code is a point.
    offdiag_scale : posterior 'full' only: the fixed c of S_ij = c·o_ij, o the head's outputs
        below the diagonal; default 1/√latent (:class:`~scratchvae.posteriors.FullGaussian`
        says why).
    objective : 'elbo' (recon + β·KL) or 'iwae' (the importance-weighted bound of
        ``iw_samples`` samples, K; default :data:`IW_SAMPLES`). 'iwae' needs mode 'vae' and
        β = 1: its weights p(x|z)p(z)/q(z|x) hold the prior and the posterior inside one
        log-mean-exp, with no separate KL term for β to weight.
    beta : weight of the KL term in the objective.
    dtype : 'float32' (training) or 'float64' (gradient checks).
    seed : seeds the model's random streams ('init', 'noise', 'eval'; see :data:`MODEL_STREAMS`).
    backend : 'numpy', 'cupy', 'auto' or a Backend.
    precision : what the matrix products compute in: 'fp32' (default), 'tf32' or 'bf16'
        (bfloat16 operands, FP32 accumulation); parameters, optimizer state, elementwise blocks
        and loss sums stay float32. tf32 and bf16 need a float32 model on the cupy backend
        (see :mod:`scratchvae.ops.precision`).
    """

    def __init__(self, input_dim=784, hidden=(400,), latent=20, activation="relu",
                 likelihood="bernoulli", sigma=1.0, mode="vae", beta=1.0, dtype="float32",
                 seed=0, backend="numpy", posterior="diagonal", objective="elbo", iw_samples=None,
                 precision="fp32", offdiag_scale=None):
        self.backend = get_backend(backend)
        self.xp = self.backend.xp
        self.input_dim = _positive_int("input_dim", input_dim)
        hidden = (hidden,) if isinstance(hidden, int) else hidden
        self.hidden = tuple(_positive_int("hidden", h) for h in hidden)
        self.dec_hidden = self.hidden[::-1]
        self.latent = _positive_int("latent", latent)
        self.activation = check_activation(activation)
        self.likelihood = make_likelihood(likelihood, sigma)
        if mode not in MODES:
            raise InputError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        self.mode = mode
        self.beta = _beta(beta)
        self.posterior, self.fits_data = _posterior(mode, posterior, offdiag_scale, self.latent)
        self.objective, self.iw_samples = _objective(objective, iw_samples, mode, self.beta)
        if str(dtype) not in DTYPES:
            raise InputError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
        self.dtype = np.dtype(str(dtype))
        self.precision = _precision(precision, self.backend, self.dtype)
        self.seed = seed
        self.rng = Streams(seed, MODEL_STREAMS, xp=self.xp)
        self._build_params()
        self._workspaces = {}

    # -- structure --------------------------------------------------------------------
    def _build_params(self):
        self.shapes = self._param_shapes()
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
        enc, dec = self._layers("enc", len(self.hidden)), self._layers("dec", len(self.dec_hidden))
        self._enc, self._dec = enc, dec
        self._enc_head = enc + self._layers("enc", ["head"])
        self._dec_out = dec + self._layers("dec", ["out"])
        self._init_params()

    def _param_shapes(self):
        D, L = self.input_dim, self.latent
        shapes = {}
        fan_in = D
        for i, h in enumerate(self.hidden):
            shapes[f"enc.{i}.W"], shapes[f"enc.{i}.b"] = (fan_in, h), (h,)
            fan_in = h
        head = self.posterior.head_width(L)
        shapes["enc.head.W"], shapes["enc.head.b"] = (fan_in, head), (head,)
        fan_in = L
        for i, h in enumerate(self.dec_hidden):
            shapes[f"dec.{i}.W"], shapes[f"dec.{i}.b"] = (fan_in, h), (h,)
            fan_in = h
        shapes["dec.out.W"], shapes["dec.out.b"] = (fan_in, D), (D,)
        shapes.update(self.likelihood.param_shapes(D))
        return shapes

    def _views(self, flat):
        out = {}
        for name, shape in self.shapes.items():
            o = self._offsets[name]
            out[name] = flat[o:o + int(np.prod(shape))].reshape(shape)
        return out

    def _layers(self, prefix, which):
        """(W, b, dW, db, W as the products read it) of each layer."""
        keys = range(which) if isinstance(which, int) else which
        return [(self.params[f"{prefix}.{i}.W"], self.params[f"{prefix}.{i}.b"],
                 self.grads[f"{prefix}.{i}.W"], self.grads[f"{prefix}.{i}.b"],
                 self.params_lo[f"{prefix}.{i}.W"]) for i in keys]

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
        self.posterior.init_head(self.params["enc.head.W"], self.params["enc.head.b"], self.latent)
        self.likelihood.init_params(self.params)

    def config(self) -> dict:
        """The constructor arguments as a JSON-able dict (enough to rebuild the model).

        The arguments added after 0.1.0 (``posterior``, ``objective``, ``iw_samples``,
        ``precision``) appear only when they differ from the defaults, so a model of 0.1.0's
        kind has 0.1.0's config; a full posterior always records its ``offdiag_scale``.
        """
        return {"input_dim": self.input_dim, "hidden": list(self.hidden), "latent": self.latent,
                "activation": self.activation, "likelihood": self.likelihood.name,
                "sigma": self.likelihood.sigma, "mode": self.mode, "beta": self.beta,
                "dtype": self.dtype.name, "seed": self.seed, **self.config_extras()}

    def config_extras(self) -> dict:
        """``posterior`` (and a full one's ``offdiag_scale``), ``objective``, ``iw_samples`` and
        ``precision`` where they differ from the defaults."""
        c = {}
        if self.posterior.name not in ("diagonal", "point"):
            c["posterior"] = self.posterior.name
        if self.posterior.name == "full":
            c["offdiag_scale"] = self.posterior.offdiag_scale
        if self.objective != "elbo":
            c["objective"], c["iw_samples"] = self.objective, self.iw_samples
        if self.precision.name != "fp32":
            c["precision"] = self.precision.name
        return c

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
            hint = (f"integer images: use x.astype('{self.dtype.name}') / 255 (fit does this for you)"
                    if x.dtype.kind in "ui" else f"convert with x.astype('{self.dtype.name}')")
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
        (K, n, L) with ``objective='iwae'``."""
        return (n, self.latent) if self.objective == "elbo" else (self.iw_samples, n, self.latent)

    def _check_batch(self, x, eps, target):
        """x and target (N, D), eps :meth:`eps_shape` as :meth:`loss_and_grads` takes them;
        returns target."""
        self._check_x(x)
        n = x.shape[0]
        if eps is not None and self.posterior.stochastic:
            self.backend.check("eps", eps)
            if tuple(eps.shape) != self.eps_shape(n) or eps.dtype != self.dtype:
                raise InputError(f"eps must be a {self.dtype.name} array of shape {self.eps_shape(n)}, "
                                 f"got {eps.dtype} {tuple(eps.shape)}")
        if target is None:
            return x
        if target is not x:
            self._check_x(target, "target")
            if target.shape != x.shape:
                raise InputError(f"target must have x's shape {tuple(x.shape)}, got {tuple(target.shape)}")
        return target

    # -- the verbs ----------------------------------------------------------------------
    def _hidden_forward(self, h, layers, outs=None):
        """The hidden layers from input h: act(h W + b) each. ``outs``: the workspace's
        (activations, scratch, operand copies) lists, else new arrays. Returns the last output
        as the next product reads it (:meth:`Precision.operand`)."""
        p = self.precision
        for i, (_, b, _, _, W_op) in enumerate(layers):
            h_op = p.operand(h, None if outs is None else outs[2][i])
            a = p.matmul(h_op, W_op, out=None if outs is None else outs[0][i])
            h = bias_act_forward(a, b, self.activation, out=a,
                                 scratch=None if outs is None else outs[1][i])
        return p.operand(h, None if outs is None else outs[2][len(layers)])

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
        h = self._hidden_forward(x, self._enc)
        head = self.precision.matmul(h, self.params_lo["enc.head.W"])
        return self.posterior.split(head + self.params["enc.head.b"])

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
        h = self._hidden_forward(z, self._dec)
        return self.precision.matmul(h, self.params_lo["dec.out.W"]) + self.params["dec.out.b"]

    def decode_mean(self, z):
        """E[x | z]: σ(logits) for Bernoulli, the means for Gaussian."""
        y = self.decode(z)
        return self.likelihood.mean(y, self.params, out=y)

    def log_sigma(self):
        """The Gaussian decoder's log σ: a float (fixed σ) or an array (1,) / (D,) (learned)."""
        return self.likelihood.log_sigma(self.params)

    def sample(self, n, eps=None, draw=False):
        """Decode n codes z ~ N(0, I) (from the 'eval' stream unless ``eps`` is given).

        Returns the decoder means (``draw=False``) or pixels drawn from p(x|z).
        """
        n = _positive_int("n", n)
        if eps is not None:
            self._check_x(eps, "eps", width=self.latent)
            if eps.shape[0] != n:
                raise InputError(f"eps must have shape ({n}, {self.latent}) for n={n}, got {tuple(eps.shape)}")
            self._check_finite("eps", eps)
        z = eps if eps is not None else self.rng["eval"].normal((n, self.latent), self.dtype.name)
        mean = self.decode_mean(z)
        return self.likelihood.draw(mean, self.params, self.rng["eval"]) if draw else mean

    def reconstruct(self, x, sample_z=False):
        """Decoder means of x's code: z = μ (default) or one z ~ q(z|x)."""
        mu, logvar = self.encode(x)
        z = self.reparameterize(mu, logvar) if (sample_z and self.posterior.stochastic) else mu
        return self.decode_mean(z)

    # -- loss and gradients ---------------------------------------------------------------
    def workspace(self, n):
        ws = self._workspaces.get(n)
        if ws is None:
            ws = self._workspaces[n] = _Workspace(self, n)
        return ws

    def loss_and_grads(self, x, eps=None, target=None, need_grads=True, beta=None):
        """Loss parts of a batch and ∂objective/∂param for every parameter.

        x: (N, D) the encoder's input; ``target`` (default x) the reconstruction target
        (a denoising run passes the corrupted x and the clean target). ``eps``: (N, L)
        injected noise, (K, N, L) with ``objective='iwae'`` (:meth:`eps_shape`); drawn from
        the 'noise' stream when None (ignored in 'ae' mode).
        ``beta``: the KL weight of this call (default the model's ``beta``): a number, or a
        float64 backend array of one value (a training schedule's, read on the device);
        'iwae' has none (a number must be 1; an array is not read).
        Returns a :class:`LossResult` of batch sums; gradients are of the **sum**
        ``objective = recon + β·kl``, as in the PyTorch VAE example (with 'iwae': of
        −Σ_n L_K(x_n), ``LossResult.bound``).
        x is checked for backend, shape and dtype but not scanned for NaN/Inf (the hot
        path: ``fit`` checks its data once and the loss every few steps).
        """
        target = self._check_batch(x, eps, target)
        ws = self.workspace(x.shape[0])
        if self.objective == "iwae":
            if isinstance(beta, (int, float)) and beta != 1:
                raise InputError(f"objective 'iwae' has no KL weight: beta must be 1, got {beta!r}")
            recon, kl, bound = self._forward_iw(x, eps, target, ws)
            result = LossResult(recon=recon, kl=kl, n=x.shape[0], bound=bound)
            if need_grads:
                self._backward_iw(x, ws)
                result.grads = self.grads
            return result
        recon, kl, extra = self._forward(x, eps, target, ws)
        result = LossResult(recon=recon, kl=kl, n=x.shape[0], beta=self.beta if beta is None else beta,
                            fits_data=self.fits_data)
        if need_grads:
            self._backward(x, ws, result.beta, extra)
            result.grads = self.grads
        return result

    def _forward(self, x, eps, target, ws):
        """Encoder, head, the posterior's sample and KL, decoder, the likelihood's loss and ∂/∂y."""
        P, P_op, mm = self.params, self.params_lo, self.precision.matmul
        self._weights_for_products()
        h = self._hidden_forward(x, self._enc, (ws.enc_a, ws.enc_d, ws.enc_lo))
        mm(h, P_op["enc.head.W"], out=ws.ml)     # the head's bias: added in the posterior's block
        self.posterior.fill_noise(ws.q, eps, self.rng["noise"])
        ws.z, kl = self.posterior.forward(ws.ml, ws.q, P["enc.head.b"])
        g = self._hidden_forward(ws.z, self._dec, (ws.dec_a, ws.dec_d, ws.dec_lo))
        mm(g, P_op["dec.out.W"], out=ws.y)       # the output bias: added in the likelihood's block
        recon, extra = self.likelihood.forward_backward(ws.y, target, ws.dy, ws.scratch, P["dec.out.b"], P)
        return recon, kl, extra

    def _backward(self, x, ws, beta, extra):
        """Decoder (with the likelihood's own parameters), the posterior's block, encoder."""
        if self.fits_data:
            dz = self.posterior.dz_buffer(ws.q, ws.dml)
            self._backward_stack(self._dec_out, [ws.z] + ws.dec_a, ws.dec_d, ws.dy, dz, ws.mask,
                                 ws.dec_lo, ws.dy_lo)
            self.likelihood.backward_params(extra, self.params, self.grads)
        else:   # KL-only: nothing of the reconstruction reaches the gradients
            for name, g in self.grads.items():
                if name.startswith("dec."):
                    g[...] = 0
            dz = None
        self.posterior.backward(dz, ws.q, ws.ml, beta, ws.dml)
        self._backward_stack(self._enc_head, [x] + ws.enc_a, ws.enc_d, ws.dml, None, ws.mask,
                             ws.enc_lo, ws.dml_lo)

    def _forward_iw(self, x, eps, target, ws):
        """The importance-weighted forward: the encoder once; K samples per image through the
        posterior's block (the head repeated K times) and the decoder; per (sample, image) the
        log-weight log w = log p(x|z) + log p(z) − log q(z|x); the bound and its weights w̃
        (kept in ``ws.w``). Returns (recon, kl, −Σ_n L_K): recon of the first sample and the
        closed-form KL, the single-sample ELBO's parts, beside the bound."""
        P, q, lik, mm = self.params, self.posterior, self.likelihood, self.precision.matmul
        K, n = self.iw_samples, x.shape[0]
        self._weights_for_products()
        h = self._hidden_forward(x, self._enc, (ws.enc_a, ws.enc_d, ws.enc_lo))
        mm(h, self.params_lo["enc.head.W"], out=ws.ml)
        ws.target = target
        if K > 1:
            ws.mlk.reshape(K, n, -1)[...] = ws.ml        # row k·n + i: image i, sample k
            ws.target = ws.xt
            ws.xt.reshape(K, n, -1)[...] = target
        q.fill_noise(ws.q, None if eps is None else eps.reshape(K * n, -1), self.rng["noise"])
        ws.z, kl = q.forward(ws.mlk, ws.q, P["enc.head.b"])      # kl: K times the closed form
        g = self._hidden_forward(ws.z, self._dec, (ws.dec_a, ws.dec_d, ws.dec_lo))
        y = mm(g, self.params_lo["dec.out.W"], out=ws.y)
        y += P["dec.out.b"]
        nll = lik.nll_rows(y, ws.target, P, out=ws.nll, buffers=(ws.dy, ws.scratch))   # per (sample, image)
        logw = q.iw_log_ratio_rows(ws.q, ws.mlk, out=ws.logw)
        logw -= nll
        bound = iw_bound_and_weights(logw.reshape(K, n), ws.w)
        return self.xp.sum(nll[:n]), kl / K, -bound

    def _backward_iw(self, x, ws):
        """∂(−Σ_n L_K)/∂θ = Σ_{k,n} w̃_kn ∂(−log w_kn)/∂θ (see :mod:`scratchvae.ops.iwae`):
        the likelihood's gradient weighted row by row, back through the decoder; the prior's
        and log q's terms and the sample (:meth:`~scratchvae.posteriors._Gaussian.iw_backward`);
        the K head gradients of an image summed (its head feeds all K samples); the encoder."""
        K, n = self.iw_samples, x.shape[0]
        w = ws.w.reshape(-1)
        lik = self.likelihood
        lik.backward_params(lik.weighted_backward(ws.y, ws.target, w, ws.dy, ws.scratch, self.params),
                            self.params, self.grads)
        dz = self.posterior.dz_buffer(ws.q, ws.dmlk)
        self._backward_stack(self._dec_out, [ws.z] + ws.dec_a, ws.dec_d, ws.dy, dz, ws.mask,
                             ws.dec_lo, ws.dy_lo)
        self.posterior.iw_backward(dz, ws.q, ws.mlk, w, ws.dmlk)
        if K > 1:
            self.xp.sum(ws.dmlk.reshape(K, n, -1), axis=0, out=ws.dml)
        self._backward_stack(self._enc_head, [x] + ws.enc_a, ws.enc_d, ws.dml, None, ws.mask[:n],
                             ws.enc_lo, ws.dml_lo)

    def _backward_stack(self, layers, ins, dbufs, d, first_dx, mask, lows, d_lo):
        """Backpropagate ``d`` = ∂ℓ/∂(output of the last layer) down a stack of dense layers.

        Layer i maps ins[i] -> act(ins[i] W_i + b_i) (the last one has no activation).
        Each step forms dW_i, db_i (dense_backward), then dx into dbufs[i-1] and through
        the activation of ins[i] (written over the spent activation ins[i]). The first
        layer's input gradient goes to ``first_dx`` (None: not needed, e.g. w.r.t. x).
        ``lows[i]``: the products' copy of ins[i] made in the forward (bf16; None otherwise);
        ``d_lo``: the buffer for d's. Once dW_i is formed, lows[i] takes the words of the
        gradient written over ins[i].
        """
        p = self.precision
        for i in range(len(layers) - 1, -1, -1):
            _, _, dW, db, W_op = layers[i]
            dx = dbufs[i - 1] if i > 0 else first_dx
            dense_backward(d, p.kept(ins[i], lows[i]), W_op, dW, db, dx=dx, need_dx=dx is not None,
                           dy_op=p.operand(d, d_lo), precision=p.name)
            if i > 0:
                d = activation_backward(self.activation, dx, ins[i], out=ins[i],
                                        mask=mask[:, :dx.shape[1]])
                d_lo = lows[i]

    def __repr__(self):
        c = self.config()
        extra = "".join(f", {k}={c[k]}" for k in ("posterior", "objective", "iw_samples", "precision") if k in c)
        return (f"VAE(D={c['input_dim']}, hidden={tuple(c['hidden'])}, L={c['latent']}, "
                f"{c['activation']}, {c['likelihood']}, mode={c['mode']}, β={c['beta']}{extra}, "
                f"{c['dtype']}, backend={self.backend.name})")


def _positive_int(name, v):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
        raise InputError(f"{name} must be a positive integer, got {v!r}")
    return int(v)


def _posterior(mode, name, offdiag_scale, latent):
    """(the posterior object, whether the reconstruction is in the objective) of a mode."""
    posterior, fits_data = MODES[mode]
    if name not in POSTERIORS:
        raise InputError(f"posterior must be one of {', '.join(POSTERIORS)}, got {name!r}")
    if posterior is not None and name != "diagonal":
        raise InputError(f"posterior={name!r} does not apply to mode {mode!r}: its code is a point, "
                         f"with no posterior to shape")
    if offdiag_scale is not None and name != "full":
        raise InputError(f"offdiag_scale is the scale of a full posterior's off-diagonal; it does not "
                         f"apply to posterior={name!r}, got offdiag_scale={offdiag_scale!r}")
    if posterior is not None:
        return posterior(), fits_data
    if name == "full":
        c = 1.0 / math.sqrt(latent) if offdiag_scale is None else _offdiag_scale(offdiag_scale)
        return POSTERIORS[name](c), fits_data
    return POSTERIORS[name](), fits_data


def _precision(name, backend, dtype):
    """The :class:`~scratchvae.ops.precision.Precision` called ``name``, after the checks: a
    reduced precision needs a float32 model on a backend that computes it."""
    precision = make_precision(name)
    if precision is None:
        raise InputError(f"precision must be one of {', '.join(PRECISIONS)}, got {name!r}")
    if name != "fp32" and name not in backend.precisions:
        raise InputError(f"precision {name!r} needs the cupy backend (a CUDA GPU): the {backend.name} "
                         f"backend computes its matrix products in {' or '.join(backend.precisions)} only")
    if name != "fp32" and dtype != np.float32:
        raise InputError(f"precision {name!r} applies to float32 models (its products round float32 "
                         f"operands), got dtype {dtype.name}")
    return precision


def _objective(objective, iw_samples, mode, beta):
    """(objective, K) after the checks: 'iwae' needs mode 'vae' and β = 1 (see :class:`VAE`)."""
    if objective not in OBJECTIVES:
        raise InputError(f"objective must be one of {', '.join(OBJECTIVES)}, got {objective!r}")
    if objective == "elbo":
        if iw_samples not in (None, 1):
            raise InputError(f"iw_samples is the K of objective='iwae'; the ELBO draws one sample, "
                             f"got iw_samples={iw_samples!r}")
        return objective, 1
    if mode != "vae":
        why = ("an autoencoder has no q(z|x) to sample" if mode == "ae" else
               "without the reconstruction the weights p(z)/q(z|x) bound log ∫p(z)dz = 0: nothing to learn")
        raise InputError(f"objective 'iwae' needs mode 'vae', got {mode!r}: {why}")
    if beta != 1:
        raise InputError(f"objective 'iwae' needs beta = 1, got {beta!r}: its weights p(x|z)p(z)/q(z|x) "
                         f"hold the prior and the posterior in one log-mean-exp, with no KL term to weight")
    return objective, _positive_int("iw_samples", IW_SAMPLES if iw_samples is None else iw_samples)


def _offdiag_scale(c):
    if isinstance(c, bool) or not isinstance(c, (int, float, np.integer, np.floating)) \
            or not (math.isfinite(c) and c > 0):
        raise InputError(f"offdiag_scale must be a finite number > 0, got {c!r}")
    return float(c)


def _beta(beta):
    try:
        beta = float(beta)
    except (TypeError, ValueError):
        raise InputError(f"beta must be a finite number >= 0, got {beta!r}") from None
    if not (beta >= 0 and math.isfinite(beta)):
        raise InputError(f"beta must be a finite number >= 0, got {beta!r}")
    return beta
