"""Evaluation: importance-weighted log p(x), active units, a linear probe, and the
AE / KL-only / VAE comparison.

Importance-weighted log p(x) (Burda, Grosse & Salakhutdinov, "Importance weighted
autoencoders", ICLR 2016). For one image x and z_1..z_K ~ q(z|x),

    log w_k = log p(x|z_k) + log p(z_k) − log q(z_k|x)
    L_K(x)  = log (1/K) Σ_k w_k = LSE_k(log w_k) − log K,   LSE(a) = m + log Σ e^{a−m}, m = max a

E[L_1] is the ELBO, E[L_K] rises with K and tends to log p(x) (nats). Here log q uses the
noise itself, by the change of variables z -> ε: log q(z|x) = log N(ε; 0, I) − log |det ∂z/∂ε|,
with z = μ + σ ⊙ ε and log |det| = ½ Σ_j logvar_j for the diagonal posterior, z = μ + S ε and
log |det| = Σ_j log S_jj for the full one (nothing such as (z − μ)/σ is recomputed). The log-weights are summed over pixels in float64 and the log-sum-exp runs in
float64.

One set of K_max = max(ks) samples per image serves every K: it is cut into ⌊K_max/K⌋
disjoint groups of K, and L_K(x) is the mean of the groups' estimates (an unbiased estimate
of E[L_K(x)] with less noise than a single group, at no extra decoding). The reported
standard error is over the test images (std/√n); the estimates for different K share
samples, so their *differences* (the "gain" columns) are far less noisy than each mean.

Memory is bounded: images and samples are taken in chunks of at most ``batch``
(image, sample) rows per decode, by default what fits in about 256 MB
(:data:`MEMORY_BUDGET`), so K = 1000 over 784 pixels never allocates gigabytes.

All randomness comes from the model's 'eval' stream, so evaluating never disturbs training's
streams, and a run evaluated twice from the same checkpoint gives the same numbers (for the
same ``batch``, which fixes how the draws are cut).

On ranks (``comm``, :mod:`scratchvae.comm`) the test −ELBO's batches and the importance
sampling's chunks of images are shared out, whole, each rank drawing exactly what one process
draws for them (it skips, or draws and drops, the others' draws), so each batch's sums and
each image's estimate are the one-process ones, bit for bit, and so are the results.

Active units (Burda et al. 2016, §5.2): unit u is active when
A_u = Cov_x(E_{q(z|x)}[z_u]) = Var_x(μ_u(x)) exceeds a threshold (0.01).

Linear probe: a hand-written softmax (multinomial logistic) classifier on the codes, trained
on train codes and scored on test codes — how linearly readable the classes are (closed-form
ridge least squares onto one-hot labels is available too).
"""

from __future__ import annotations

import math

import numpy as np

from .backend import backend_of
from .comm import SOLO
from .config import LATER_SETTINGS
from .errors import InputError
from .codes import EVAL_BATCH, encode_batched
from .inputs import prepare_split
from .ops.iwae import log_weight_rows, logsumexp
from .runs import position_label

MEMORY_BUDGET = 256 * 2**20     # bytes per decode chunk (approximate)
ACTIVE_THRESHOLD = 0.01
LAYER_MEAN_SAMPLES = 100           # chains per image for E_q[h_l|x] above the first layer
PROBE_TRAIN_LIMIT = 10_000
DEFAULT_KS = (1, 10, 100, 1000)


# -- importance-weighted log p(x) ---------------------------------------------------------------
def check_ks(ks):
    """ks as a sorted tuple of distinct positive ints (InputError otherwise)."""
    try:
        ks = tuple(ks)
    except TypeError:
        raise InputError(f"ks must be a sequence of positive integers, got {ks!r}") from None
    bad = [k for k in ks if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1]
    if not ks or bad:
        raise InputError(f"ks must be a non-empty sequence of positive integers, got {ks!r}")
    return tuple(sorted({int(k) for k in ks}))


def rows_per_chunk(model, budget=MEMORY_BUDGET):
    """How many (image, sample) rows one decode may hold within ``budget`` bytes.

    A row holds its decoder activations (Σ H), the output and two likelihood temporaries
    (≈ 3 D plus slack) and a few latent-sized arrays, in the model's dtype.
    """
    widths = 2 * sum(model.hidden) + 6 * model.latent
    if model.chain is not None:           # each layer above: both trunks' activations, its h and temporaries
        widths += sum(2 * sum(s.sizes[1:]) + 6 * layer.latent for layer in model.chain.layers
                      for s in (layer.trunk, layer.prior))
    per_row = model.dtype.itemsize * (4 * model.input_dim + widths)
    return max(1, int(budget // per_row))


def _chunking(x, k, batch, comm):
    """The importance sampling's chunks: (images per chunk, samples per k-chunk, draws per chunk
    of images, this rank's images [a, b) in whole chunks, and its chunks [lo, hi) of how many)."""
    N, k_chunk = x.shape[0], min(k, batch)
    n_img = max(1, min(N, batch // k_chunk))
    count = -(-N // n_img)
    lo, hi = comm.rows(count)
    return n_img, k_chunk, -(-k // k_chunk), (min(N, lo * n_img), min(N, hi * n_img)), (lo, hi, count)


def _log_weight_chunks(model, x, k, batch, comm=SOLO):
    """Yield (start, stop, log w) over chunks of images; log w: (n, k) float64 backend array.

    On ranks, this rank's share of the chunks: the stream skips the draws of the others', and
    ends where it ends after all of them. Several stochastic layers: each chunk of samples draws
    one ε per layer, bottom first, and :meth:`Chain.log_weights <scratchvae.hierarchy.Chain.log_weights>`
    gives its log w."""
    xp, L, dt = model.xp, model.latent, model.dtype
    q, lik, chain = model.posterior, model.likelihood, model.chain
    n_img, k_chunk, draws, (a, b), (lo, hi, count) = _chunking(x, k, batch, comm)
    draws *= 1 if chain is None else len(chain.latents)
    stream = model.rng["eval"]
    stream.skip(lo * draws)
    for i in range(a, b, n_img):
        xb = x[i:i + n_img]
        n = xb.shape[0]
        params = tuple(None if p is None else p[:, None] for p in model.encode(xb))   # each (n, 1, …)
        log_det = q.log_det_rows(params, dtype=np.float64)   # (n, 1): log |det ∂z/∂ε| (a point: refused)
        logw = xp.empty((n, k), dtype=np.float64)
        for k0 in range(0, k, k_chunk):
            kc = min(k_chunk, k - k0)
            if chain is not None:
                eps = [stream.normal((n, kc, L_l), dt.name) for L_l in chain.latents]
                logw[:, k0:k0 + kc] = chain.log_weights(model, xb, eps)
                continue
            eps = stream.normal((n, kc, L), dt.name)
            z = q.sample(params, eps)                                      # (n, kc, L)
            y = model.decode(z.reshape(n * kc, L)).reshape(n, kc, -1)
            nll = lik.nll_rows(y, xb[:, None, :], model.params, dtype=np.float64)
            del y
            logw[:, k0:k0 + kc] = log_weight_rows(eps, z, log_det, nll, dtype=np.float64)
        yield i, i + n, logw
    stream.skip((count - hi) * draws)


def log_importance_weights(model, x, k, batch=None):
    """(N, k) float64 backend array of log w = log p(x|z) + log p(z) − log q(z|x), z ~ q(z|x).

    x: (N, D) in the model's dtype and backend. Holds all N·k weights: for large N use
    :func:`iwae_estimates`, which reduces chunk by chunk.
    """
    k = check_ks([k])[0]
    batch = rows_per_chunk(model) if batch is None else _positive("batch", batch)
    parts = [w for _, _, w in _log_weight_chunks(model, x, k, batch)]
    return model.xp.concatenate(parts, axis=0)


def logmeanexp_groups(logw, K):
    """Mean over ⌊k/K⌋ disjoint groups of K columns of  LSE(group) − log K  -> (n,).

    logw: (n, k) float64. LSE is computed stably: m + log Σ e^{a − m}, m the group's max.
    """
    xp = backend_of(logw).xp
    n, k = logw.shape
    g = k // K
    lse = logsumexp(logw[:, :g * K].reshape(n, g, K), axis=2)
    return xp.mean(lse, axis=1) - math.log(K)


def iwae_estimates(model, x, ks=DEFAULT_KS, batch=None, progress=None, comm=SOLO):
    """Per-image importance-weighted estimates {K: (N,) host float64 array of L_K(x)}.

    Draws max(ks) samples per image once (see the module docstring); ``batch`` caps the
    (image, sample) rows decoded at once (default: :func:`rows_per_chunk`).
    ``progress(done, n)`` is called after each chunk of images (on ranks: this rank's share).
    ``comm``: ranks to share the chunks of images among; every rank returns every estimate.
    """
    ks = check_ks(ks)
    model._check_x(x)
    batch = rows_per_chunk(model) if batch is None else _positive("batch", batch)
    xp, N = model.xp, x.shape[0]
    est = {K: xp.zeros(N, dtype=np.float64) for K in ks}
    a, b = _chunking(x, ks[-1], batch, comm)[3]
    for i, j, logw in _log_weight_chunks(model, x, ks[-1], batch, comm):
        for K in ks:
            est[K][i:j] = logmeanexp_groups(logw, K)
        if progress is not None:
            progress(j - a, b - a)
    return {K: comm.sum_(model.backend.to_host(v)) for K, v in est.items()}   # others' images: 0 here


def iwae_log_px(model, x, ks=DEFAULT_KS, batch=None):
    """{K: (mean, standard error)} of the importance-weighted log p(x) estimate, in nats.

    K = 1 is the (Monte-Carlo) ELBO; the estimates rise with K towards log p(x). The
    standard error is over the images: std/√N (NaN for one image). See :func:`iwae_estimates`.
    """
    est = iwae_estimates(model, x, ks, batch)
    return {K: _mean_se(v) for K, v in est.items()}


def _mean_se(v):
    v = np.asarray(v, dtype=np.float64)
    se = float(v.std(ddof=1) / math.sqrt(v.size)) if v.size > 1 else float("nan")
    return float(v.mean()), se


# -- codes, active units, linear probe ---------------------------------------------------------
def evaluate_elbo(model, x, batch=EVAL_BATCH, comm=SOLO):
    """Test −ELBO per sample with z sampled (from the 'eval' stream), and its parts.

    Returns a dict of floats: loss (= recon + kl; with ``objective='iwae'`` the model's own
    loss, −L_K of its K samples, beside the first sample's recon and the closed-form kl), recon,
    kl; with several stochastic layers also ``kl_layers``, each layer's part of kl, bottom first
    (:meth:`Chain.layer_terms <scratchvae.hierarchy.Chain.layer_terms>` for the same ε; under the
    bound the K samples' mean, as its kl). One host sync at the end. ``comm``: ranks to share the
    batches among (each draws every batch's noise, and drops the others'); the sums are added in
    batch order, as one process does.
    """
    xp, chain = model.xp, model.chain
    starts = range(0, x.shape[0], batch)
    lo, hi = comm.rows(len(starts))
    width = 3 + (0 if chain is None else len(chain.latents))
    sums = xp.zeros((len(starts), width), dtype=np.float64)
    for b, i in enumerate(starts):
        xb = x[i:i + batch]
        eps = model.noise(xb.shape[0], model.rng["eval"])
        if lo <= b < hi:
            r = model.loss_and_grads(xb, eps=eps, need_grads=False)
            sums[b, 0], sums[b, 1], sums[b, 2] = r.loss, r.recon, r.kl
            if chain is not None:
                for j, term in enumerate(_layer_kl_sums(model, xb, eps)):
                    sums[b, 3 + j] = term
    tot = np.zeros(width)
    for row in comm.sum_(model.backend.to_host(sums)):     # others' batches: 0 here
        tot += row
    t = tot / x.shape[0]
    out = {"loss": float(t[0]), "recon": float(t[1]), "kl": float(t[2])}
    if chain is not None:
        out["kl_layers"] = [float(v) for v in t[3:]]
    return out


def _layer_kl_sums(model, xb, eps):
    """Each layer's kl term summed over the images xb for the ε of one loss call (a (K, n, L_l)
    array per layer under the bound: the K samples' mean)."""
    xp, n = model.xp, xb.shape[0]
    K = eps[0].shape[0] if eps[0].ndim == 3 else 1
    rows = xb if K == 1 else xp.concatenate([xb] * K, axis=0)         # row k·n + i is image i
    terms = model.chain.layer_terms(model, rows, [e.reshape(K * n, -1) for e in eps])
    return [xp.sum(t) / K for t in terms]


def encode_mean(model, x, batch=EVAL_BATCH):
    """μ(x) (N, L) on the model's backend, encoded in batches (the AE's code is its μ)."""
    return encode_batched(model, x, batch)[0]


def active_units(model, x, threshold=ACTIVE_THRESHOLD, batch=EVAL_BATCH):
    """(count, variances): A_u = Var_x(μ_u(x)) per latent unit (host float64 (L,)), and
    how many exceed ``threshold``. x: (N, D), N ≥ 2, in the model's dtype and backend.
    With several stochastic layers, layer 1's (see :func:`active_units_per_layer`)."""
    if x.shape[0] < 2:
        raise InputError(f"active_units needs at least 2 images, got {x.shape[0]}")
    mu = encode_mean(model, x, batch).astype(np.float64)
    var = model.backend.to_host(model.xp.var(mu, axis=0))
    return int(np.count_nonzero(var > threshold)), var


def active_units_per_layer(model, x, samples=LAYER_MEAN_SAMPLES, threshold=ACTIVE_THRESHOLD, batch=100):
    """[(count, variances)] per stochastic layer, bottom first, as the IWAE paper counts them:
    A_u = Var_x(E_q[h_u | x]) of each unit; E_q[h_1|x] = μ_1(x), and above it E_q[h_l|x] is the mean
    of μ_l(h_{l−1}) over ``samples`` chains h_1 … h_{l−1} drawn from q (the 'eval' stream)."""
    if x.shape[0] < 2:
        raise InputError(f"active_units needs at least 2 images, got {x.shape[0]}")
    samples = _positive("samples", samples)
    means = model.chain.posterior_means(model, x, samples, model.rng["eval"], batch)
    out = []
    for mu in means:
        var = model.backend.to_host(model.xp.var(mu, axis=0))
        out.append((int(np.count_nonzero(var > threshold)), var))
    return out


def _host(a, what):
    if isinstance(a, np.ndarray):
        return a
    try:
        return backend_of(a).to_host(a)
    except Exception:
        raise InputError(f"{what} must be a numpy or cupy array, got {type(a).__name__}") from None


def linear_probe(codes_train, y_train, codes_test, y_test, method="softmax", ridge=1e-3,
                 l2=1e-4, iters=500):
    """Test accuracy of a linear classifier trained on the codes (a float in [0, 1]).

    ``method='softmax'`` (default): multinomial logistic regression on standardised codes,
    A = [(codes − mean)/std | 1] (n, L+1), scores S = A W (n, C), probabilities
    P = softmax(S) row-wise, loss ℓ(W) = −(1/n) Σ_n log P[n, y_n] + ½ l2 ‖W_codes‖².
    Gradient: ∂ℓ/∂S = (P − Y)/n (Y one-hot; the softmax–cross-entropy pair collapses to
    P − Y), so ∇ℓ = Aᵀ (P − Y)/n + l2·W (bias row not penalised). The loss is convex with
    Lipschitz gradient ≤ ½ λ_max(AᵀA/n) + l2, so ``iters`` steps of Nesterov-accelerated
    gradient descent with step 1/Lip converge deterministically.
    ``method='lstsq'``: ridge least squares onto one-hot labels (closed form, weaker for
    small L: classes get masked).
    Runs on the host in float64: codes are (n, L) with L small; backend arrays are copied to
    the host here (a boundary).
    """
    Xtr = _host(codes_train, "codes_train").astype(np.float64)
    Xte = _host(codes_test, "codes_test").astype(np.float64)
    ytr = _host(y_train, "y_train").reshape(-1)
    yte = _host(y_test, "y_test").reshape(-1)
    if Xtr.ndim != 2 or Xte.ndim != 2 or Xtr.shape[1] != Xte.shape[1]:
        raise InputError(f"codes_train and codes_test must be (n, L) arrays with the same L, "
                         f"got shapes {Xtr.shape} and {Xte.shape}")
    if len(ytr) != len(Xtr) or len(yte) != len(Xte):
        raise InputError(f"labels must have one entry per code: got {len(ytr)} labels for "
                         f"{len(Xtr)} train codes and {len(yte)} for {len(Xte)} test codes")
    if len(Xtr) < 1 or len(Xte) < 1:
        raise InputError("linear_probe needs at least one train and one test code")
    if not (np.isfinite(Xtr).all() and np.isfinite(Xte).all()):
        raise InputError("linear_probe: the codes hold non-finite values (NaN or Inf)")
    if method not in ("softmax", "lstsq"):
        raise InputError(f"method must be 'softmax' or 'lstsq', got {method!r}")
    classes = np.unique(ytr)
    Y = (ytr[:, None] == classes[None, :]).astype(np.float64)
    if method == "lstsq":
        scores = _ridge_scores(Xtr, Y, Xte, ridge)
    else:
        scores = _softmax_scores(Xtr, Y, Xte, l2, iters)
    pred = classes[np.argmax(scores, axis=1)]
    return float(np.mean(pred == yte))


def _ridge_scores(Xtr, Y, Xte, ridge):
    """Test scores of ridge least squares onto the one-hot labels Y (closed form)."""
    L = Xtr.shape[1]
    A = np.hstack([Xtr, np.ones((len(Xtr), 1))])
    G = A.T @ A
    tr = float(np.trace(G[:L, :L]))
    G[np.arange(L), np.arange(L)] += ridge * (tr / L if tr > 0 else 1.0)
    B = np.linalg.solve(G, A.T @ Y)
    return np.hstack([Xte, np.ones((len(Xte), 1))]) @ B


def _softmax_scores(Xtr, Y, Xte, l2, iters):
    """Test scores of the softmax classifier of :func:`linear_probe` (Nesterov, step 1/Lip)."""
    L = Xtr.shape[1]
    mean, std = Xtr.mean(axis=0), Xtr.std(axis=0)
    std[std == 0] = 1.0
    A = np.hstack([(Xtr - mean) / std, np.ones((len(Xtr), 1))])
    n = len(A)
    lip = 0.5 * float(np.linalg.eigvalsh(A.T @ A / n).max()) + l2
    penal = np.ones((L + 1, 1))
    penal[L] = 0.0                         # the bias is not penalised
    W = np.zeros((L + 1, Y.shape[1]))
    V = W.copy()
    for t in range(iters):
        S = A @ V
        P = np.empty_like(S)
        logsumexp(S, axis=1, weights=P)    # P = softmax(S) row-wise: e^{S − max}/Σ, no overflow
        grad = A.T @ (P - Y) / n + l2 * penal * V
        W_next = V - grad / lip
        V = W_next + (t / (t + 3)) * (W_next - W)
        W = W_next
    return np.hstack([(Xte - mean) / std, np.ones((len(Xte), 1))]) @ W


# -- a whole run ---------------------------------------------------------------------------
def evaluate_run(run, train, test, ks=DEFAULT_KS, limit=None, probe_limit=PROBE_TRAIN_LIMIT,
                 batch=None, progress=None, comm=SOLO) -> dict:
    """Evaluate a loaded run (:func:`scratchvae.train.load_run`) on ``test``.

    train, test: :class:`scratchvae.data.Dataset`. ``limit``: use the first ``limit`` test
    images. If the run binarised its data, the test images are statically binarised exactly
    as :func:`scratchvae.train.fit` does (its test stream), so log p(x) is a probability of
    binary images; the probe's train images likewise (the train stream).

    Every product (the test −ELBO's, the importance sampling's encoder and decoder, the codes)
    runs in the model's precision (fp32, tf32 or bf16), which the result names.

    Returns a JSON-able dict: ``epoch`` (and ``batch`` for a mid-epoch checkpoint, see
    :attr:`Run.position <scratchvae.runs.Run.position>`), ``checkpoint`` (its file name), ``mode``,
    ``likelihood``, ``binarize``, ``n_test``, ``precision``, ``posterior`` / ``objective`` /
    ``iw_samples`` where not the defaults, ``test_elbo`` {loss, recon, kl} per image (one z per
    image; ``loss`` is −L_K for an ``objective='iwae'`` model, see :func:`evaluate_elbo`), ``log_px``
    {K: {mean, se, gain, gain_se}} (gain: mean rise over the smallest K with its paired SE;
    None for an 'ae' run, with ``log_px_note``), ``active_units`` {count, of, threshold,
    variances}, ``probe_accuracy`` (μ codes of up to ``probe_limit`` train images -> test
    labels; None for unlabelled data) and ``n_probe_train``. ``progress(done, n)``: see :func:`iwae_estimates`.
    """
    model, tc = run.model, run.train_config
    ks = check_ks(ks)
    if limit is not None:
        limit = _positive("limit", limit)
    probe_limit = _positive("probe_limit", probe_limit)
    images, labels = test.images, test.labels
    if limit is not None:
        images, labels = images[:limit], None if labels is None else labels[:limit]
    xtest = prepare_split(images, model, tc.binarize, "test")
    xtrain = prepare_split(train.images[:probe_limit], model, tc.binarize, "train")

    res = {**run.position, "checkpoint": run.checkpoint.name, "mode": model.mode, "likelihood": model.likelihood.name,
           "units": model.likelihood.units, "binarize": tc.binarize, "dataset": tc.dataset,
           "n_test": int(xtest.shape[0]), **model.config_extras(), "precision": model.precision.name}
    res["test_elbo"] = evaluate_elbo(model, xtest, comm=comm)
    res["loss_label"], res["loss_adds_up"] = model.objective.label, model.objective.adds_up
    if not model.objective.adds_up and model.objective.records_kl:
        res["loss_parts"] = model.objective.parts
    res["loss_has_kl"], res["sampled"] = model.objective.records_kl, model.posterior.stochastic
    if model.posterior.no_q_why is not None:          # a point code: nothing to importance-sample
        res["log_px"] = None
        res["log_px_note"] = f"IWAE needs a VAE: {model.posterior.no_q_why}"
    else:
        est = iwae_estimates(model, xtest, ks, batch, progress, comm)
        base = est[ks[0]]
        res["log_px"] = {}
        for K in ks:
            mean, se = _mean_se(est[K])
            gain, gain_se = _mean_se(est[K] - base)
            res["log_px"][K] = {"mean": mean, "se": se, "gain": gain,
                                "gain_se": 0.0 if K == ks[0] else gain_se}
    res["active_units"] = _active_report(model, xtest)
    labelled = labels is not None and train.labels is not None
    res["probe_accuracy"] = linear_probe(encode_mean(model, xtrain), train.labels[:probe_limit],
                                         encode_mean(model, xtest), labels) if labelled else None
    res["n_probe_train"] = int(xtrain.shape[0]) if labelled else 0
    return res


def _active_report(model, x):
    """evaluate_run's ``active_units``: count, of, threshold, variances (layer 1's); with several
    stochastic layers ``layers`` (one such dict per layer) and ``samples`` (the chains per image)."""
    def entry(count, var):
        return {"count": count, "of": int(var.size), "threshold": ACTIVE_THRESHOLD,
                "variances": [float(v) for v in var]}
    if x.shape[0] < 2:
        return entry(0, np.zeros(model.latent))
    if model.chain is None:
        return entry(*active_units(model, x))
    layers = [entry(*r) for r in active_units_per_layer(model, x)]
    return {**layers[0], "layers": layers, "samples": LAYER_MEAN_SAMPLES}


def format_report(res) -> str:
    """A readable multi-line report of :func:`evaluate_run`'s dict."""
    named = [k for k in LATER_SETTINGS if k in res and k not in ("offdiag_scale", "precision")]   # precision: below
    extras = "".join(f" · {k} {res[k]}" for k in named)
    lines = [f"{position_label(res)} · {res.get('mode')} · {res.get('likelihood')}{extras} · "
             f"binarize {res.get('binarize')} · {res['n_test']} test images · products in "
             f"{res.get('precision', 'fp32')}"]
    lines += _loss_lines(res)
    lp = res.get("log_px")
    if lp is None:
        lines.append(f"log p(x)        n/a ({res.get('log_px_note', 'no q(z|x)')})")
    else:
        ks = sorted(lp, key=int)
        lines.append("importance-weighted log p(x) ≥ estimate, nats/image (±SE over images);")
        lines.append(f"gain = rise over K={ks[0]} (paired ±SE)")
        lines.append(f"  {'K':>6}  {'log p(x)':>11}  {'±SE':>7}  {'gain':>8}  {'±SE':>7}")
        for K in ks:
            r = lp[K]
            lines.append(f"  {int(K):>6}  {r['mean']:11.3f}  {r['se']:7.3f}  {r['gain']:+8.3f}  "
                         f"{r['gain_se']:7.3f}")
        if res.get("units", "nats") != "nats":
            lines.append(f"  ({res['likelihood']} likelihood: {res['units']})")
    au, code = res["active_units"], "E_q[z_u]" if res.get("sampled", True) else "z_u"
    if "layers" in au:
        for l, a in enumerate(au["layers"], 1):
            below = "h1" if l == 2 else f"h1 … h{l - 1}"
            how = "" if l == 1 else f"; E_q over {au['samples']} draws of {below} ~ q"
            lines.append(f"active units h{l} {a['count']:>4d} / {a['of']}  (Var_x E_q[h{l}_u] > {a['threshold']:g}{how})")
    else:
        lines.append(f"active units    {au['count']:>4d} / {au['of']}  (Var_x {code} > {au['threshold']:g})")
    if res["probe_accuracy"] is None:
        lines.append("linear probe         n/a  (the data have no labels)")
    else:
        lines.append(f"linear probe    {res['probe_accuracy']:10.3f}  (μ codes: {res.get('n_probe_train')} "
                     f"train -> {res['n_test']} test images, softmax classifier)")
    return "\n".join(lines)


def _loss_lines(res):
    """The test loss as the run's objective labels it: the ELBO's recon + kl, a bound beside one
    z's recon and kl, a plain autoencoder's reconstruction alone; and, where z is drawn, that
    these draws are not the ones of training's last line."""
    e, label = res["test_elbo"], res.get("loss_label", "−ELBO")
    head = f"test {label:<11}{e['loss']:10.3f} nats/image"
    if not res.get("loss_has_kl", True):
        return [f"{head}  (−log p(x|z) at z = μ(x), as in training's test line)"]
    if res.get("loss_adds_up", True):
        line = f"{head}  (recon {e['recon']:.3f} + kl {e['kl']:.3f}; one z per image)"
    else:
        parts = res.get("loss_parts", "one z's")
        line = (f"{head}  (its bound, {res.get('iw_samples', 'K')} z per image; {parts} recon {e['recon']:.3f}, "
                f"kl {e['kl']:.3f})")
    if "kl_layers" in e:
        line += "\n                kl by layer: " + " + ".join(f"h{l} {v:.3f}" for l, v in enumerate(e["kl_layers"], 1))
    return [line, "                (fresh z from the model's eval stream: training's last test line drew others, so "
                  "the two differ by sampling noise)"]


# -- AE vs KL-only vs VAE ----------------------------------------------------------------------
def _positive(name, v):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
        raise InputError(f"{name} must be a positive integer, got {v!r}")
    return int(v)
