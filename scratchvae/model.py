"""The model: a VAE (and, for the classic comparison, a plain autoencoder and a KL-only model).

Architecture (D data, H hidden, L latent; ``hidden=(H1, H2)`` is mirrored in the decoder)::

    encoder   x (N,D) -> act(x W + b) (N,H1) -> ... -> [μ | logvar] (N, 2L)   (one GEMM head)
    sample    z = μ + exp(½ logvar) ⊙ ε,  ε ~ N(0, I)                         (N, L)
    decoder   z -> act(z V + c) (N,H_last) -> ... -> y (N,D)   logits (Bernoulli) or means (Gaussian)
    loss      recon = −log p(x|z) summed;  kl = KL(q(z|x) ‖ N(0,I)) summed
              objective = recon + β·kl (what the gradients are of);  neg_elbo = recon + kl

The fused head. One weight ``enc.head.W`` of shape (H, 2L) and bias (2L,) produce μ and
logvar in one GEMM: columns [:L] are the μ head and [L:] the logvar head. Two separate
PyTorch heads ``fc21``/``fc22`` (``nn.Linear(H, L)``) map to it as
``fc21.weight = W[:, :L].T, fc21.bias = b[:L]``, ``fc22.weight = W[:, L:].T, fc22.bias = b[L:]``.
Every weight is stored (fan_in, fan_out): ``nn.Linear.weight`` is its transpose.

Modes. ``'vae'``: the above. ``'ae'``: a plain autoencoder, z = μ, no sampling, no KL and
no logvar head (the head is (H, L)). ``'kl-only'``: objective = β·kl; the reconstruction is
still computed and reported, but nothing of it reaches the gradients (the decoder's
gradients are zero).

Memory. All parameters live in one flat buffer ``theta`` and all gradients in one flat
buffer ``grad`` (the per-name arrays are views), so an optimizer updates everything in one
pass. Each batch shape gets a workspace of preallocated buffers; after the first step at a
shape, a training step allocates nothing large.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .backend import get_backend
from .backend.random import Streams
from .errors import InputError
from .ops import (
    activation_backward,
    bias_act_forward,
    dense_backward,
    reparam_kl_backward,
    reparam_kl_forward,
    reparameterize,
    sigmoid,
    soft_floor_log_sigma,
    soft_floor_log_sigma_backward,
)
from .ops.dense import matmul
from .ops.gaussian import LOGVAR_LIMIT
from .ops.activations import check_activation
from .ops.likelihoods import (
    bernoulli_nll_forward_backward,
    gaussian_nll_forward_backward,
)

MODES = ("vae", "ae", "kl-only")
LIKELIHOODS = ("bernoulli", "gaussian")
DTYPES = ("float32", "float64")
_ALIGN = 16  # parameter views start on 64-byte boundaries (float32)


def parse_sigma(sigma):
    """'fixed:V' or a number -> ('fixed', V); 'shared' / 'per-pixel' -> (kind, None)."""
    if isinstance(sigma, (int, float)) and not isinstance(sigma, bool):
        value = float(sigma)
    elif isinstance(sigma, str) and sigma in ("shared", "per-pixel"):
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


@dataclass
class LossResult:
    """Loss parts of one batch (batch **sums**, 0-d backend arrays) and the gradients.

    ``grads`` maps every parameter name to ∂objective/∂param; the arrays are views into
    the model's flat gradient buffer and are overwritten by the next call (copy to keep).
    """

    recon: object
    kl: object
    objective: object
    neg_elbo: object
    n: int
    grads: dict = field(default_factory=dict)

    def per_sample(self) -> dict:
        """The loss parts as Python floats divided by the batch size (a host sync)."""
        return {k: float(getattr(self, k)) / self.n for k in ("recon", "kl", "objective", "neg_elbo")}


class _Workspace:
    """Every buffer one training step at batch size ``n`` needs, allocated once."""

    def __init__(self, model, n):
        xp, dt = model.xp, model.dtype
        e = lambda *shape: xp.empty(shape, dtype=dt)  # noqa: E731
        L, D = model.latent, model.input_dim
        self.enc_a = [e(n, h) for h in model.hidden]          # activations
        self.enc_d = [e(n, h) for h in model.hidden]          # gradients w.r.t. them
        widest = max(model.hidden, default=1)
        self.mask = xp.empty((n, widest), dtype=bool)         # ReLU masks in the backward
        head = L if model.mode == "ae" else 2 * L
        self.ml = e(n, head)
        self.dml = e(n, head)
        self.eps = e(n, L)
        self.z = e(n, L)
        self.std = e(n, L)
        self.kl_scratch = e(n, L)
        self.dz = e(n, L)
        self.dec_a = [e(n, h) for h in model.dec_hidden]
        self.dec_d = [e(n, h) for h in model.dec_hidden]
        self.y = e(n, D)
        self.dy = e(n, D)
        self.scratch = e(n, D)


class VAE:
    """A variational autoencoder with hand-written forward and backward passes.

    Parameters
    ----------
    input_dim : pixels per example D (784 for MNIST).
    hidden : encoder hidden sizes, mirrored in the decoder; ``()`` gives a linear VAE.
    latent : latent size L.
    activation : 'relu', 'leaky_relu', 'tanh', 'sigmoid' or 'softplus'.
    likelihood : 'bernoulli' (decoder outputs logits; x in [0, 1]) or 'gaussian'
        (decoder outputs means).
    sigma : Gaussian only: a fixed σ (number or 'fixed:V', default 1), or 'shared' /
        'per-pixel' for a learned log σ (soft floor at log σ = −6, see
        :mod:`scratchvae.ops.likelihoods`).
    mode : 'vae', 'ae' (plain autoencoder) or 'kl-only'.
    beta : weight of the KL term in the objective.
    dtype : 'float32' (training) or 'float64' (gradient checks).
    seed : seeds every random stream (initialisation, noise, shuffling, binarisation,
        evaluation): see :class:`scratchvae.backend.random.Streams`.
    backend : 'numpy', 'cupy', 'auto' or a Backend.
    """

    def __init__(self, input_dim=784, hidden=(400,), latent=20, activation="relu",
                 likelihood="bernoulli", sigma=1.0, mode="vae", beta=1.0, dtype="float32",
                 seed=0, backend="numpy"):
        self.backend = get_backend(backend)
        self.xp = self.backend.xp
        self.input_dim = _positive_int("input_dim", input_dim)
        if isinstance(hidden, int):
            hidden = (hidden,)
        self.hidden = tuple(_positive_int("hidden", h) for h in hidden)
        self.dec_hidden = self.hidden[::-1]
        self.latent = _positive_int("latent", latent)
        self.activation = check_activation(activation)
        if likelihood not in LIKELIHOODS:
            raise InputError(f"likelihood must be one of {', '.join(LIKELIHOODS)}, got {likelihood!r}")
        self.likelihood = likelihood
        self.sigma_kind, self.sigma_value = parse_sigma(sigma)
        if mode not in MODES:
            raise InputError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        self.mode = mode
        beta = float(beta)
        if not (beta >= 0 and math.isfinite(beta)):
            raise InputError(f"beta must be a finite number >= 0, got {beta!r}")
        self.beta = beta
        if str(dtype) not in DTYPES:
            raise InputError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
        self.dtype = np.dtype(str(dtype))
        self.seed = seed
        self.rng = Streams(seed, xp=self.xp)

        self.shapes = self._param_shapes()
        self._offsets = {}
        off = 0
        for name, shape in self.shapes.items():
            self._offsets[name] = off
            off += -(-int(np.prod(shape)) // _ALIGN) * _ALIGN
        self.theta = self.xp.zeros(off, dtype=self.dtype)
        self.grad = self.xp.zeros(off, dtype=self.dtype)
        self.params = self._views(self.theta)
        self.grads = self._views(self.grad)
        self._init_params()
        self._workspaces = {}

    # -- structure --------------------------------------------------------------------
    @property
    def learned_sigma(self) -> bool:
        return self.likelihood == "gaussian" and self.sigma_kind != "fixed"

    def _param_shapes(self):
        D, L = self.input_dim, self.latent
        shapes = {}
        fan_in = D
        for i, h in enumerate(self.hidden):
            shapes[f"enc.{i}.W"], shapes[f"enc.{i}.b"] = (fan_in, h), (h,)
            fan_in = h
        head = L if self.mode == "ae" else 2 * L
        shapes["enc.head.W"], shapes["enc.head.b"] = (fan_in, head), (head,)
        fan_in = L
        for i, h in enumerate(self.dec_hidden):
            shapes[f"dec.{i}.W"], shapes[f"dec.{i}.b"] = (fan_in, h), (h,)
            fan_in = h
        shapes["dec.out.W"], shapes["dec.out.b"] = (fan_in, D), (D,)
        if self.learned_sigma:
            shapes["dec.logsigma"] = (1,) if self.sigma_kind == "shared" else (D,)
        return shapes

    def _views(self, flat):
        out = {}
        for name, shape in self.shapes.items():
            o = self._offsets[name]
            out[name] = flat[o:o + int(np.prod(shape))].reshape(shape)
        return out

    def _layers(self, prefix, count):
        return [(self.params[f"{prefix}.{i}.W"], self.params[f"{prefix}.{i}.b"],
                 self.grads[f"{prefix}.{i}.W"], self.grads[f"{prefix}.{i}.b"]) for i in range(count)]

    def _init_params(self):
        """PyTorch ``nn.Linear`` default: weight and bias ~ U(−1/√fan_in, 1/√fan_in).

        Drawn from the 'init' stream in float64 (identical on every backend), then cast.
        The learned raw log σ starts at 0 (σ ≈ 1).
        """
        stream = self.rng["init"]
        for name, shape in self.shapes.items():
            if name == "dec.logsigma":
                self.params[name][...] = 0
                continue
            wname = name[:-1] + "W"
            bound = 1.0 / math.sqrt(self.shapes[wname][0])
            u = stream.uniform(shape, "float64")
            self.params[name][...] = ((2.0 * u - 1.0) * bound).astype(self.dtype)

    def config(self) -> dict:
        """The constructor arguments as a JSON-able dict (enough to rebuild the model)."""
        sigma = (f"fixed:{self.sigma_value!r}" if self.sigma_kind == "fixed" else self.sigma_kind)
        return {"input_dim": self.input_dim, "hidden": list(self.hidden), "latent": self.latent,
                "activation": self.activation, "likelihood": self.likelihood, "sigma": sigma,
                "mode": self.mode, "beta": self.beta, "dtype": self.dtype.name, "seed": self.seed}

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

    def _check_eps(self, eps, n):
        self.backend.check("eps", eps)
        if tuple(eps.shape) != (n, self.latent) or eps.dtype != self.dtype:
            raise InputError(f"eps must be a {self.dtype.name} array of shape ({n}, {self.latent}), "
                             f"got {eps.dtype} {tuple(eps.shape)}")

    # -- the verbs ----------------------------------------------------------------------
    def _hidden_forward(self, h, layers, outs=None):
        for i, (W, b, _, _) in enumerate(layers):
            a = matmul(h, W, out=None if outs is None else outs[0][i])
            h = bias_act_forward(a, b, self.activation, out=a,
                                 scratch=None if outs is None else outs[1][i])
        return h

    def encode(self, x):
        """x (N, D) -> (μ, logvar), each (N, L) (logvar is None in 'ae' mode).

        logvar is clamped to ±LOGVAR_LIMIT = 30 as in training (see ops.gaussian).
        x must be finite, of the model's dtype and backend (uint8 images: divide by 255).
        """
        self._check_x(x)
        self._check_finite("x", x)
        h = self._hidden_forward(x, self._layers("enc", len(self.hidden)))
        ml = matmul(h, self.params["enc.head.W"]) + self.params["enc.head.b"]
        L = self.latent
        if self.mode == "ae":
            return ml, None
        return ml[:, :L].copy(), self.xp.clip(ml[:, L:], -LOGVAR_LIMIT, LOGVAR_LIMIT)

    def reparameterize(self, mu, logvar, eps=None):
        """z = μ + exp(½ logvar) ⊙ ε; ε drawn from the 'noise' stream unless given."""
        if eps is None:
            eps = self.rng["noise"].normal(mu.shape, self.dtype.name)
        return reparameterize(mu, logvar, eps)[0]

    def decode(self, z):
        """z (N, L) -> decoder output (N, D): logits (Bernoulli) or means (Gaussian).

        z must be finite, of the model's dtype and backend.
        """
        self._check_x(z, "z", width=self.latent)
        self._check_finite("z", z)
        return self._decode(z)

    def _decode(self, z):
        h = self._hidden_forward(z, self._layers("dec", len(self.dec_hidden)))
        return matmul(h, self.params["dec.out.W"]) + self.params["dec.out.b"]

    def decode_mean(self, z):
        """E[x | z]: σ(logits) for Bernoulli, the means for Gaussian."""
        y = self.decode(z)
        return sigmoid(y, out=y) if self.likelihood == "bernoulli" else y

    def log_sigma(self):
        """The decoder's log σ: a float (fixed σ) or an array (1,) / (D,) (learned)."""
        if not self.learned_sigma:
            return math.log(self.sigma_value)
        return soft_floor_log_sigma(self.params["dec.logsigma"])

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
        if not draw:
            return mean
        if self.likelihood == "bernoulli":
            u = self.rng["eval"].uniform(mean.shape, self.dtype.name)
            return (u < mean).astype(self.dtype)
        noise = self.rng["eval"].normal(mean.shape, self.dtype.name)
        return mean + self.xp.exp(self.xp.asarray(self.log_sigma(), dtype=self.dtype)) * noise

    def reconstruct(self, x, sample_z=False):
        """Decoder means of x's code: z = μ (default) or one z ~ q(z|x)."""
        mu, logvar = self.encode(x)
        z = self.reparameterize(mu, logvar) if (sample_z and logvar is not None) else mu
        return self.decode_mean(z)

    # -- loss and gradients ---------------------------------------------------------------
    def workspace(self, n):
        ws = self._workspaces.get(n)
        if ws is None:
            ws = self._workspaces[n] = _Workspace(self, n)
        return ws

    def loss_and_grads(self, x, eps=None, target=None, need_grads=True):
        """Loss parts of a batch and ∂objective/∂param for every parameter.

        x: (N, D) the encoder's input; ``target`` (default x) the reconstruction target
        (a denoising run passes the corrupted x and the clean target). ``eps``: (N, L)
        injected noise; drawn from the 'noise' stream when None (ignored in 'ae' mode).
        Returns a :class:`LossResult` of batch sums; gradients are of the **sum**
        ``objective = recon + β·kl``, as in the PyTorch VAE example.
        x is checked for backend, shape and dtype but not scanned for NaN/Inf (the hot
        path: ``fit`` checks its data once and the loss every few steps).
        """
        self._check_x(x)
        if target is None:
            target = x
        elif target is not x:
            self._check_x(target, "target")
            if target.shape != x.shape:
                raise InputError(f"target must have x's shape {tuple(x.shape)}, got {tuple(target.shape)}")
        n = x.shape[0]
        xp, ws, L, beta = self.xp, self.workspace(n), self.latent, self.beta
        enc = self._layers("enc", len(self.hidden))
        dec = self._layers("dec", len(self.dec_hidden))
        P, G = self.params, self.grads

        # forward: encoder, head, sample, decoder, likelihood
        h = self._hidden_forward(x, enc, (ws.enc_a, ws.enc_d))
        # (the head's and the output layer's biases are added inside the fused blocks)
        matmul(h, P["enc.head.W"], out=ws.ml)
        if self.mode == "ae":
            ws.ml += P["enc.head.b"]
            zin, kl = ws.ml, xp.zeros((), dtype=self.dtype)
        else:
            if eps is None:
                self.rng["noise"].normal((n, L), self.dtype.name, out=ws.eps)
            else:
                self._check_eps(eps, n)
                ws.eps[...] = eps
            kl = reparam_kl_forward(ws.ml, ws.eps, ws.z, ws.std, ws.kl_scratch,
                                    bias=P["enc.head.b"])
            zin = ws.z
        g = self._hidden_forward(zin, dec, (ws.dec_a, ws.dec_d))
        matmul(g, P["dec.out.W"], out=ws.y)
        dls = None
        if self.likelihood == "bernoulli":
            recon = bernoulli_nll_forward_backward(ws.y, target, ws.dy, ws.scratch,
                                                   overwrite_logits=True, bias=P["dec.out.b"])
        else:
            ws.y += P["dec.out.b"]
            log_sigma = self.log_sigma()
            recon, dls = gaussian_nll_forward_backward(
                ws.y, target, log_sigma, ws.dy, ws.scratch, per_pixel=self.sigma_kind == "per-pixel")

        if self.mode == "kl-only":
            objective = beta * kl
        else:
            objective = recon + beta * kl
        neg_elbo = recon + kl
        result = LossResult(recon=recon, kl=kl, objective=objective, neg_elbo=neg_elbo, n=n)
        if not need_grads:
            return result

        # backward: decoder (skipped in KL-only mode: its gradients are zero)
        if self.mode == "kl-only":
            for name in self.shapes:
                if name.startswith("dec."):
                    G[name][...] = 0
            dz = None
        else:
            dz = ws.dml if self.mode == "ae" else ws.dz
            layers = dec + [(P["dec.out.W"], P["dec.out.b"], G["dec.out.W"], G["dec.out.b"])]
            self._backward_stack(layers, [zin] + ws.dec_a, ws.dec_d, ws.dy, dz, ws.mask)
            if dls is not None:
                s = P["dec.logsigma"]
                G["dec.logsigma"][...] = soft_floor_log_sigma_backward(dls, s)

        # backward: sample and KL, head, encoder
        if self.mode != "ae":
            reparam_kl_backward(dz, ws.eps, ws.std, ws.ml, beta, ws.dml)
        layers = enc + [(P["enc.head.W"], P["enc.head.b"], G["enc.head.W"], G["enc.head.b"])]
        self._backward_stack(layers, [x] + ws.enc_a, ws.enc_d, ws.dml, None, ws.mask)
        result.grads = G
        return result

    def _backward_stack(self, layers, ins, dbufs, d, first_dx, mask):
        """Backpropagate ``d`` = ∂ℓ/∂(output of the last layer) down a stack of dense layers.

        Layer i maps ins[i] -> act(ins[i] W_i + b_i) (the last one has no activation).
        Each step forms dW_i, db_i (dense_backward), then dx into dbufs[i-1] and through
        the activation of ins[i] (written over the spent activation ins[i]). The first
        layer's input gradient goes to ``first_dx`` (None: not needed, e.g. w.r.t. x).
        """
        for i in range(len(layers) - 1, -1, -1):
            W, _, dW, db = layers[i]
            dx = dbufs[i - 1] if i > 0 else first_dx
            dense_backward(d, ins[i], W, dW, db, dx=dx, need_dx=dx is not None)
            if i > 0:
                d = activation_backward(self.activation, dx, ins[i], out=ins[i],
                                        mask=mask[:, :dx.shape[1]])

    def __repr__(self):
        c = self.config()
        return (f"VAE(D={c['input_dim']}, hidden={tuple(c['hidden'])}, L={c['latent']}, "
                f"{c['activation']}, {c['likelihood']}, mode={c['mode']}, β={c['beta']}, "
                f"{c['dtype']}, backend={self.backend.name})")


def _positive_int(name, v):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
        raise InputError(f"{name} must be a positive integer, got {v!r}")
    return int(v)
