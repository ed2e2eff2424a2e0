"""The CuPy side of the fused-block seam: one CUDA kernel per block, each the twin of a NumPy body.

Every kernel below repeats, operation for operation, the NumPy body of the block that
declared it (with :func:`scratchvae.backend.fused`, in :mod:`scratchvae.ops`,
:mod:`scratchvae.optim`, :mod:`scratchvae.step` and :mod:`scratchvae.backend.graph`): the same
roundings in the same order, with Python scalars rounded to the array's dtype first, as
NumPy does with its "weak" Python scalars. The module is compiled with ``--fmad=false`` so
that no ``a * b + c`` is fused into one FMA (that would round once where NumPy rounds twice).
CuPy compiles with ``-ftz=true``, so float32 subnormals flush to zero: the only block where
that matters (the Bernoulli exponent cap) says how it avoids them. What still differs from
NumPy is (i) ``exp``, ``log``, ``tanh``, ... (CUDA's libdevice and
NumPy's loops are each within a few ulp, not always the same ulp) and (ii) the order of the
sums: the reductions here add in float64 in a fixed tree, NumPy adds pairwise in the array's
dtype. The tests in ``tests/test_cupy.py`` bound both.

Each launcher (a method of :class:`Kernels`) takes exactly its block's arguments, so the
block's constants (the leaky-ReLU slope, the logvar clamp) arrive as arguments from the one
Python constant above; this module imports nothing of scratchvae above the backend.

Sums are deterministic: each reduction kernel writes one float64 partial sum per block into a
buffer of its own call, and a one-block kernel adds the partials in a fixed order; no atomics,
so a replayed CUDA graph and an eager step give the same bits. Results of reductions go to
fresh 0-d arrays; every other output is written to the caller's buffer. Nothing here
synchronises with the host, so every kernel can be captured into a CUDA graph (see
:mod:`scratchvae.backend.graph`).

Matrix products go through :mod:`scratchvae.backend.cublas` (a direct binding that also works
during stream capture, where CuPy refuses cuBLAS), in the precision the model asks for (fp32,
tf32, or bf16 operands given as the uint16 words ``to_bf16`` writes); ``sum_rows`` (a bias
gradient) is a product with a ones vector on the same path, always in FP32.
"""

from __future__ import annotations

import numpy as np

from ..errors import BackendError, InputError

THREADS = 256            # threads per block; the reductions' shared arrays are sized from it
MAX_BLOCKS = 8192        # grid-stride loops cover the rest
REDUCE_BLOCKS = 1024     # partial sums per reduction (fixed: the sum order depends on n only)
ACTIVATIONS = {"relu": 0, "leaky_relu": 1, "tanh": 2, "sigmoid": 3, "softplus": 4}
"""The activations compiled here, with the template code ``ACT`` each is instantiated for."""
_SUFFIX = {np.dtype(np.float32): "f32", np.dtype(np.float64): "f64"}

assert THREADS & (THREADS - 1) == 0, "the block reductions halve THREADS down to 1"

_CUDA_BODY = r"""
typedef long long i64;

/* m_f(x): the float or the double function of the math library, chosen by x's type. */
#define MATH_PAIR(NAME, F32, F64) \
    __device__ __forceinline__ float NAME(float x) { return F32(x); } \
    __device__ __forceinline__ double NAME(double x) { return F64(x); }
MATH_PAIR(m_exp, expf, exp) MATH_PAIR(m_expm1, expm1f, expm1) MATH_PAIR(m_log, logf, log)
MATH_PAIR(m_log1p, log1pf, log1p) MATH_PAIR(m_tanh, tanhf, tanh) MATH_PAIR(m_sqrt, sqrtf, sqrt)
__device__ __forceinline__ float  m_ln2(float)     { return 0.693147180559945309417232121458176568f; }
__device__ __forceinline__ double m_ln2(double)    { return 0.693147180559945309417232121458176568; }

/* numpy.maximum / numpy.minimum: NaN in the first argument propagates. */
template <typename T> __device__ __forceinline__ T np_max(T a, T b) { return (a >= b || a != a) ? a : b; }
template <typename T> __device__ __forceinline__ T np_min(T a, T b) { return (a <= b || a != a) ? a : b; }
/* numpy.clip(a, lo, hi) for lo <= hi: min(max(a, lo), hi); NaN stays NaN. */
template <typename T> __device__ __forceinline__ T np_clip(T a, T lo, T hi) { return np_min(np_max(a, lo), hi); }
/* numpy.sign: 1, -1, 0 (also for -0), NaN stays NaN. */
template <typename T> __device__ __forceinline__ T np_sign(T a) {
    return a > T(0) ? T(1) : (a < T(0) ? T(-1) : (a == T(0) ? T(0) : a));
}

#define GRID_STRIDE(i, n) \
    for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (i64)blockDim.x * gridDim.x)

/* Sum of v over the block (blockDim.x == SV_THREADS, a power of two), valid in thread 0.
   Fixed order. */
__device__ __forceinline__ double block_sum(double v) {
    __shared__ double sh[SV_THREADS];
    sh[threadIdx.x] = v;
    __syncthreads();
    for (int s = SV_THREADS / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) sh[threadIdx.x] += sh[threadIdx.x + s];
        __syncthreads();
    }
    return sh[0];
}

/* ---- activations ------------------------------------------------------------------------- */
/* a = f(z): relu, leaky_relu (s = slope), tanh, sigmoid = 1/2 + 1/2 tanh(z/2), softplus = logaddexp(z, 0) */
template <typename T, int ACT> __device__ __forceinline__ T act_fwd(T z, T s) {
    if (ACT == 0) return np_max(z, T(0));
    if (ACT == 1) { T sz = z * s; return np_max(z, sz); }
    if (ACT == 2) return m_tanh(z);
    if (ACT == 3) { T t = z * T(0.5); t = m_tanh(t); t = t * T(0.5); return t + T(0.5); }
    /* numpy's npy_logaddexp(z, 0) */
    if (z == T(0)) return T(0) + m_ln2(z);
    if (z > T(0)) return z + m_log1p(m_exp(-z));
    if (z <= T(0)) return T(0) + m_log1p(m_exp(z));
    return z;  /* NaN */
}

/* f'(z) from a = f(z), as activation_derivative: c1 = 1 - s, c0 = s (leaky_relu only). */
template <typename T, int ACT> __device__ __forceinline__ T act_deriv(T a, T c1, T c0) {
    if (ACT == 0) return np_sign(a);
    if (ACT == 1) { T d = np_sign(a); d = np_max(d, T(0)); d = d * c1; return d + c0; }
    if (ACT == 2) { T t = a * a; return T(1) - t; }
    if (ACT == 3) { T t = a - T(0.5); t = t * t; return T(0.25) - t; }
    T t = -a; t = m_expm1(t); return -t;
}

template <typename T, int ACT>
__device__ void bias_act(const T* pre, const T* b, T* out, i64 n, i64 h, T s) {
    GRID_STRIDE(i, n) { T z = pre[i] + b[i % h]; out[i] = act_fwd<T, ACT>(z, s); }
}

template <typename T, int ACT>
__device__ void act_backward(const T* da, const T* a, T* out, i64 n, T c1, T c0) {
    GRID_STRIDE(i, n) { T d = act_deriv<T, ACT>(a[i], c1, c0); out[i] = d * da[i]; }
}

#define ACT_KERNELS(NAME, ACT, T, SUF) \
extern "C" __global__ void bias_act_##NAME##_##SUF(const T* pre, const T* b, T* out, i64 n, i64 h, T s) \
    { bias_act<T, ACT>(pre, b, out, n, h, s); } \
extern "C" __global__ void act_backward_##NAME##_##SUF(const T* da, const T* a, T* out, i64 n, T c1, T c0) \
    { act_backward<T, ACT>(da, a, out, n, c1, c0); }

#define ALL_ACTS(T, SUF) \
    ACT_KERNELS(relu, 0, T, SUF) ACT_KERNELS(leaky_relu, 1, T, SUF) ACT_KERNELS(tanh, 2, T, SUF) \
    ACT_KERNELS(sigmoid, 3, T, SUF) ACT_KERNELS(softplus, 4, T, SUF)
ALL_ACTS(float, f32)
ALL_ACTS(double, f64)

/* ---- sums ------------------------------------------------------------------------------------ */
/* out = (T)(scale * sum of partials[0..nb)), one block of SV_THREADS threads, fixed order. */
template <typename T>
__device__ void finish_sum(const double* partials, int nb, double scale, T* out) {
    double acc = 0.0;
    for (int k = threadIdx.x; k < nb; k += blockDim.x) acc += partials[k];
    acc = block_sum(acc);
    if (threadIdx.x == 0) out[0] = (T)(scale * acc);
}

/* ---- reparameterize + KL --------------------------------------------------------------------- */
/* ml (N, 2L): mu = [:, :L], logvar = [:, L:]; b (2L) or null: ml += b in place first;
   logvar clamped in place to +-lim; eps, z, std (N, L). */
template <typename T>
__device__ void reparam_kl_fwd(T* ml, const T* b, const T* eps, T* z, T* std_, i64 n, i64 L, T lim,
                               double* partials) {
    double acc = 0.0;
    GRID_STRIDE(i, n) {
        i64 r = i / L, j = i - r * L;
        T mu = ml[r * 2 * L + j];
        T lv = ml[r * 2 * L + L + j];
        bool write_lv = b != nullptr;
        if (b) { mu = mu + b[j]; lv = lv + b[L + j]; ml[r * 2 * L + j] = mu; }
        if (lv > lim) { lv = lim; write_lv = true; }
        else if (lv < -lim) { lv = -lim; write_lv = true; }
        if (write_lv) ml[r * 2 * L + L + j] = lv;
        T s = lv * T(0.5); s = m_exp(s);
        T t = mu * mu; T e = m_expm1(lv); t = t + e; t = t - lv;
        acc += (double)t;
        std_[i] = s;
        T zz = s * eps[i]; z[i] = zz + mu;
    }
    acc = block_sum(acc);
    if (threadIdx.x == 0) partials[blockIdx.x] = acc;
}

/* dmu = beta mu (+ dz);  dlv = ((beta s (+ dz eps)) s - beta) / 2, 0 where |lv| >= lim.
   beta from *beta_p (a float64 device scalar) when beta_p is not null, else beta_s. */
template <typename T>
__device__ void reparam_kl_bwd(const T* dz, const T* eps, const T* std_, const T* ml, const double* beta_p,
                               T beta_s, T* dml, i64 n, i64 L, T lim) {
    T beta = beta_p ? (T)beta_p[0] : beta_s;
    GRID_STRIDE(i, n) {
        i64 r = i / L, j = i - r * L;
        T mu = ml[r * 2 * L + j], lv = ml[r * 2 * L + L + j], s = std_[i];
        T dmu = mu * beta, dlv = s * beta;
        if (dz) { T d = dz[i]; dmu = dmu + d; d = d * eps[i]; dlv = dlv + d; }
        dlv = dlv * s; dlv = dlv - beta; dlv = dlv * T(0.5);
        if (!(lv < lim && lv > -lim) && lv == lv) dlv = dlv * T(0);  /* clamped: zero gradient */
        dml[r * 2 * L + j] = dmu;
        dml[r * 2 * L + L + j] = dlv;
    }
}

/* ---- full-covariance reparameterize + KL (ops/fullcov.py) ------------------------------------ */
/* h (N, P), P = 2L + L(L-1)/2: mu = [:, :L], d = log diag S = [:, L:2L], the strict lower triangle
   of S row by row from column 2L (row i's entries at 2L + i(i-1)/2); b (P) or null: h += b in place
   first; d clamped in place to +-lim. One thread per (row r, unit i): row i of S (N, L, L) written
   whole (S_ij = c o_ij below the diagonal), z_i = (sum_{j<i} S_ij eps_j + S_ii eps_i) + mu_i, and
   the KL terms of unit i: (mu^2 + expm1(2d)) - 2d and S_ij^2 for j < i (their sum is halved by
   finish_sum). */
template <typename T>
__device__ void fullcov_fwd(T* h, const T* b, const T* eps, T* z, T* S, i64 n, i64 L, T lim, T c,
                            double* partials) {
    i64 P = 2 * L + L * (L - 1) / 2;
    double acc = 0.0;
    GRID_STRIDE(t, n) {
        i64 r = t / L, i = t - r * L, off = 2 * L + i * (i - 1) / 2;
        T* hr = h + r * P;
        const T* er = eps + r * L;
        T* Sr = S + (r * L + i) * L;
        T mu = hr[i], d = hr[L + i];
        bool write_d = b != nullptr;
        if (b) { mu = mu + b[i]; d = d + b[L + i]; hr[i] = mu; }
        if (d > lim) { d = lim; write_d = true; }
        else if (d < -lim) { d = -lim; write_d = true; }
        if (write_d) hr[L + i] = d;
        T lv = d * T(2);
        T u = mu * mu; T e = m_expm1(lv); u = u + e; u = u - lv;
        acc += (double)u;
        T zz = T(0);
        for (i64 j = 0; j < i; ++j) {
            T o = hr[off + j];
            if (b) { o = o + b[off + j]; hr[off + j] = o; }
            T so = o * c;
            Sr[j] = so;
            T sq = so * so; acc += (double)sq;
            T p = so * er[j]; zz = zz + p;
        }
        T s = m_exp(d);
        Sr[i] = s;
        for (i64 j = i + 1; j < L; ++j) Sr[j] = T(0);
        T p = s * er[i]; zz = zz + p;
        z[t] = zz + mu;
    }
    acc = block_sum(acc);
    if (threadIdx.x == 0) partials[blockIdx.x] = acc;
}

/* dmu = beta mu (+ dz);  dd = (beta S_ii (+ dz_i eps_i)) S_ii - beta, 0 where |d| >= lim;
   do_ij = (beta S_ij (+ dz_i eps_j)) c for j < i, S_ij = c o_ij. beta as in reparam_kl_bwd. */
template <typename T>
__device__ void fullcov_bwd(const T* dz, const T* eps, const T* S, const T* h, const double* beta_p, T beta_s,
                            T* dh, i64 n, i64 L, T lim, T c) {
    T beta = beta_p ? (T)beta_p[0] : beta_s;
    i64 P = 2 * L + L * (L - 1) / 2;
    GRID_STRIDE(t, n) {
        i64 r = t / L, i = t - r * L, off = 2 * L + i * (i - 1) / 2;
        const T* hr = h + r * P;
        const T* er = eps + r * L;
        T* dr = dh + r * P;
        T mu = hr[i], d = hr[L + i], s = S[(r * L + i) * L + i];
        T dmu = mu * beta, dd = s * beta, dzi = T(0);
        if (dz) { dzi = dz[t]; dmu = dmu + dzi; T g = dzi * er[i]; dd = dd + g; }
        dd = dd * s; dd = dd - beta;
        if (!(d < lim && d > -lim) && d == d) dd = dd * T(0);  /* clamped: zero gradient */
        dr[i] = dmu;
        dr[L + i] = dd;
        for (i64 j = 0; j < i; ++j) {
            T so = hr[off + j] * c;
            T g = so * beta;
            if (dz) { T p = dzi * er[j]; g = g + p; }
            dr[off + j] = g * c;
        }
    }
}

/* ---- Bernoulli NLL on logits ----------------------------------------------------------------- */
/* y = logits (+ b[i % D] when b is not null: the layer's bias, folded in);  t = exp(clip(-y, -cap, cap));
   term = (max(y, 0) - x y) + log1p(min(1/t, t));  dlogits = 1 / (1 + t) - x.
   max(y, 0) is the NumPy body's clip(y, 0, inf): the same value for every y, NaN included. */
template <typename T>
__device__ void bernoulli(const T* logits, const T* b, i64 D, const T* x, T* dy, i64 n, T cap,
                          double* partials) {
    double acc = 0.0;
    GRID_STRIDE(i, n) {
        T yi = logits[i], xi = x[i];
        if (b) yi = yi + b[i % D];
        T t = -yi; t = np_clip(t, -cap, cap);
        T xy = yi * xi;
        T a = np_max(yi, T(0)); a = a - xy;                    /* max(y, 0) - x y */
        t = m_exp(t);                                          /* e^{-y} */
        T e = T(1) / t; e = np_min(e, t); e = m_log1p(e);      /* log1p(e^{-|y|}) */
        e = e + a;
        acc += (double)e;
        T s = t + T(1);
        T sig = T(1) / s;
        dy[i] = sig - xi;
    }
    acc = block_sum(acc);
    if (threadIdx.x == 0) partials[blockIdx.x] = acc;
}

/* ---- Adam (PyTorch's rule) over a flat buffer ------------------------------------------------ */
/* m = m b1 + g (1-b1);  v = v b2 + g^2 (1-b2);  p -= (m / (sqrt(v) / sbc2 + eps)) step */
template <typename T>
__device__ __forceinline__ void adam_one(T* p, const T* g, T* m, T* v, i64 i, T step, T sbc2,
                                         T b1, T omb1, T b2, T omb2, T eps) {
    T gi = g[i];
    T mi = m[i] * b1; T t = gi * omb1; mi = mi + t;
    T vi = v[i] * b2; t = gi * gi; t = t * omb2; vi = vi + t;
    t = m_sqrt(vi); t = t / sbc2; t = t + eps; t = mi / t; t = t * step;
    m[i] = mi; v[i] = vi; p[i] = p[i] - t;
}

template <typename T>
__device__ void adam(T* p, const T* g, T* m, T* v, i64 n, T step, T sbc2, T b1, T omb1, T b2, T omb2, T eps) {
    GRID_STRIDE(i, n) adam_one(p, g, m, v, i, step, sbc2, b1, omb1, b2, omb2, eps);
}

/* The same, with (step, sqrt(1 - b2^t)) read from a float64 device array (a CUDA graph replays it). */
template <typename T>
__device__ void adam_from(T* p, const T* g, T* m, T* v, i64 n, const double* coef, T b1, T omb1, T b2, T omb2, T eps) {
    T step = (T)coef[0], sbc2 = (T)coef[1];
    GRID_STRIDE(i, n) adam_one(p, g, m, v, i, step, sbc2, b1, omb1, b2, omb2, eps);
}

/* ---- training-step plumbing for CUDA graphs ---------------------------------------------------- */
/* out[r, :] = src[perm[bi * B + r], :] for r < nb, with bi read from device memory. */
template <typename T>
__device__ void gather_rows(const T* src, const i64* perm, const i64* bi, i64 B, i64 nb, i64 d, T* out) {
    i64 base = bi[0] * B;
    GRID_STRIDE(i, nb * d) { i64 r = i / d, c = i - r * d; out[i] = src[perm[base + r] * d + c]; }
}

/* losses[bi] = (first + second, recon, kl): the objective's loss as the sum of two of its 0-d
   terms (second null: first alone); the first non-finite loss's index goes to flag; bi += 1. */
template <typename T>
__device__ void record_losses(const T* first, const T* second, const T* recon, const T* kl, double* losses,
                              i64* bi, i64* flag) {
    if (blockIdx.x == 0 && threadIdx.x == 0) {
        i64 b = bi[0];
        T loss = second ? first[0] + second[0] : first[0];
        losses[3 * b] = (double)loss; losses[3 * b + 1] = (double)recon[0]; losses[3 * b + 2] = (double)kl[0];
        if (!(loss - loss == T(0)) && flag[0] < 0) flag[0] = b;
        bi[0] = b + 1;
    }
}

/* ---- the conditional prior of a hierarchical model (ops/hierarchy.py) ---------------------------- */
/* head (N, 2L) = [mu_p | lv_p]; b (2L) or null: head += b in place first; lv_p clamped in place to
   +-lim; h (N, L). out[r] = 1/2 sum_j ((h - mu_p)^2 e^{-lv_p} + lv_p), one thread per row. */
template <typename T>
__device__ void cond_prior_fwd(T* head, const T* b, const T* h, T* out, i64 N, i64 L, T lim) {
    GRID_STRIDE(r, N) {
        double acc = 0.0;
        for (i64 j = 0; j < L; ++j) {
            T mu = head[r * 2 * L + j], lv = head[r * 2 * L + L + j];
            if (b) { mu = mu + b[j]; lv = lv + b[L + j]; head[r * 2 * L + j] = mu; }
            lv = np_clip(lv, -lim, lim);
            head[r * 2 * L + L + j] = lv;
            T u = m_exp(-lv), d = h[r * L + j] - mu;
            T t = d * d; t = t * u; t = t + lv;
            acc += (double)t;
        }
        out[r] = (T)(0.5 * acc);
    }
}

/* With w = w_rows[r] (w_rows not null), else *w_p (a float64 device scalar, not null), else w_s;
   d = h - mu_p, u = e^{-lv_p}:  dh += w d u;  dmu_p = -w d u;  dlv_p = w (1 - d^2 u) / 2, 0 where
   |lv_p| >= lim. In the NumPy body's order of operations. */
template <typename T>
__device__ void cond_prior_bwd(const T* head, const T* h, const T* w_rows, const double* w_p, T w_s, T* dhead,
                               T* dh, i64 n, i64 L, T lim) {
    T w0 = w_p ? (T)w_p[0] : w_s;
    GRID_STRIDE(i, n) {
        i64 r = i / L, j = i - r * L;
        T w = w_rows ? w_rows[r] : w0;
        T mu = head[r * 2 * L + j], lv = head[r * 2 * L + L + j];
        T u = m_exp(-lv), d = h[i] - mu;
        T du = d * u, dlv = d * du;
        dlv = T(1) - dlv; dlv = dlv * T(0.5); dlv = dlv * w;
        du = du * w;
        dh[i] = dh[i] + du;
        dhead[r * 2 * L + j] = -du;
        T inside = (lv < T(0) ? -lv : lv) < lim ? T(1) : T(0);
        dhead[r * 2 * L + L + j] = dlv * inside;
    }
}

#define TYPED_KERNELS(T, SUF) \
extern "C" __global__ void finish_sum_##SUF(const double* partials, int nb, double scale, T* out) \
    { finish_sum<T>(partials, nb, scale, out); } \
extern "C" __global__ void reparam_kl_forward_##SUF(T* ml, const T* b, const T* eps, T* z, T* s, i64 n, i64 L, \
        T lim, double* partials) \
    { reparam_kl_fwd<T>(ml, b, eps, z, s, n, L, lim, partials); } \
extern "C" __global__ void reparam_kl_backward_##SUF(const T* dz, const T* eps, const T* s, const T* ml, \
        const double* beta_p, T beta_s, T* dml, i64 n, i64 L, T lim) \
    { reparam_kl_bwd<T>(dz, eps, s, ml, beta_p, beta_s, dml, n, L, lim); } \
extern "C" __global__ void bernoulli_nll_##SUF(const T* y, const T* b, i64 D, const T* x, T* dy, i64 n, T cap, \
        double* partials) \
    { bernoulli<T>(y, b, D, x, dy, n, cap, partials); } \
extern "C" __global__ void adam_##SUF(T* p, const T* g, T* m, T* v, i64 n, T step, T sbc2, T b1, T omb1, \
        T b2, T omb2, T eps) \
    { adam<T>(p, g, m, v, n, step, sbc2, b1, omb1, b2, omb2, eps); } \
extern "C" __global__ void adam_from_##SUF(T* p, const T* g, T* m, T* v, i64 n, const double* coef, T b1, \
        T omb1, T b2, T omb2, T eps) \
    { adam_from<T>(p, g, m, v, n, coef, b1, omb1, b2, omb2, eps); } \
extern "C" __global__ void gather_rows_##SUF(const T* src, const i64* perm, const i64* bi, i64 B, i64 nb, \
        i64 d, T* out) \
    { gather_rows<T>(src, perm, bi, B, nb, d, out); } \
extern "C" __global__ void record_losses_##SUF(const T* first, const T* second, const T* recon, const T* kl, \
        double* losses, i64* bi, i64* flag) \
    { record_losses<T>(first, second, recon, kl, losses, bi, flag); } \
extern "C" __global__ void fullcov_reparam_kl_forward_##SUF(T* h, const T* b, const T* eps, T* z, T* S, i64 n, \
        i64 L, T lim, T c, double* partials) \
    { fullcov_fwd<T>(h, b, eps, z, S, n, L, lim, c, partials); } \
extern "C" __global__ void fullcov_reparam_kl_backward_##SUF(const T* dz, const T* eps, const T* S, const T* h, \
        const double* beta_p, T beta_s, T* dh, i64 n, i64 L, T lim, T c) \
    { fullcov_bwd<T>(dz, eps, S, h, beta_p, beta_s, dh, n, L, lim, c); } \
extern "C" __global__ void cond_prior_forward_##SUF(T* head, const T* b, const T* h, T* out, i64 N, i64 L, \
        T lim) \
    { cond_prior_fwd<T>(head, b, h, out, N, L, lim); } \
extern "C" __global__ void cond_prior_backward_##SUF(const T* head, const T* h, const T* w_rows, \
        const double* w_p, T w_s, T* dhead, T* dh, i64 n, i64 L, T lim) \
    { cond_prior_bwd<T>(head, h, w_rows, w_p, w_s, dhead, dh, n, L, lim); }

TYPED_KERNELS(float, f32)
TYPED_KERNELS(double, f64)

/* cur[k] = table[bi * w + k] for every k < w (a row of a per-step schedule, picked on the
   device); one block, its threads striding over the row, so any width is copied whole. */
extern "C" __global__ void load_row(const double* table, const i64* bi, i64 w, double* cur) {
    if (blockIdx.x != 0) return;
    for (i64 k = threadIdx.x; k < w; k += blockDim.x) cur[k] = table[bi[0] * w + k];
}

/* ---- bfloat16 words (ops/bf16.py) ------------------------------------------------------------ */
/* The float32s are read and written as their 32-bit patterns (unsigned int): integer operations
   only, so flush-to-zero cannot touch a subnormal. to_bf16: h = u >> 16 rounded to nearest even,
   (u + 0x7FFF + (h & 1)) >> 16; a NaN keeps h with the quiet bit 0x0040. from_bf16: h << 16. */
extern "C" __global__ void to_bf16(const unsigned int* x, unsigned short* out, i64 n) {
    GRID_STRIDE(i, n) {
        unsigned int u = x[i], h = u >> 16;
        out[i] = (unsigned short)((u & 0x7FFFFFFFu) > 0x7F800000u ? (h | 0x0040u) : ((u + 0x7FFFu + (h & 1u)) >> 16));
    }
}

extern "C" __global__ void from_bf16(const unsigned short* x, unsigned int* out, i64 n) {
    GRID_STRIDE(i, n) { out[i] = ((unsigned int)x[i]) << 16; }
}
"""

CUDA_SRC = f"#define SV_THREADS {THREADS}\n" + _CUDA_BODY
"""The module CuPy compiles: the kernels, with the block size of the launchers below."""

CUDA_OPTIONS = ("--std=c++14", "--fmad=false")


def _blocks(n, cap=MAX_BLOCKS):
    return max(1, min(cap, -(-int(n) // THREADS)))


class Kernels:
    """The fused kernels of one CuPy module (compiled on first use, cached by CuPy on disk).

    ``get(name)`` returns the launcher of the kernel a block declared under ``name``; each
    launcher takes exactly the arguments of its block. ``body(name)`` gives a block's NumPy
    form (``backend.body_of``), for the blocks whose CuPy launcher runs the body's own
    operations (as the Numba twins' ``fallback``).
    """

    def __init__(self, cupy, body):
        self.cp = cupy
        self.body = body
        self._module = None
        self._fns = {}
        self._cublas = None
        self._table = {name: getattr(self, name) for name in (
            "bias_act", "act_backward", "reparam_kl_forward", "reparam_kl_backward", "bernoulli_nll",
            "adam", "adam_from", "matmul", "sum_rows", "softplus", "bernoulli_nll_rows", "gather_rows",
            "load_row", "record_losses", "fullcov_reparam_kl_forward", "fullcov_reparam_kl_backward",
            "cond_prior_forward", "cond_prior_backward", "to_bf16", "from_bf16", "data_matmul",
            "data_weight_grad")}

    def get(self, name):
        """The launcher of kernel ``name`` (a Python callable), or None if there is none."""
        return self._table.get(name)

    def names(self):
        """Every kernel name this module launches."""
        return tuple(self._table)

    # -- plumbing -------------------------------------------------------------------------------
    def fn(self, name):
        f = self._fns.get(name)
        if f is None:
            if self._module is None:
                self._module = self.cp.RawModule(code=CUDA_SRC, options=CUDA_OPTIONS)
            f = self._fns[name] = self._module.get_function(name)
        return f

    def _launch(self, name, n, args, cap=MAX_BLOCKS):
        self.fn(name)((_blocks(n, cap),), (THREADS,), args)

    def _reduce(self, name, suffix, dtype, n, args, scale):
        """Launch reduction kernel ``name`` (its last argument: the partials) and add the
        partials in fixed order into a fresh 0-d result of ``dtype``."""
        nb = _blocks(n, REDUCE_BLOCKS)
        partials = self.cp.empty(nb, dtype=np.float64)      # this call's own, never shared
        self._launch(name, n, args + (partials,), REDUCE_BLOCKS)
        out = self.cp.empty((), dtype=dtype)
        self.fn("finish_sum_" + suffix)((1,), (THREADS,), (partials, np.int32(nb), np.float64(scale), out))
        return out

    @property
    def cublas(self):
        if self._cublas is None:
            from .cublas import Cublas

            self._cublas = Cublas(self.cp)
        return self._cublas

    def _c(self, a):
        """``a`` if C-contiguous, else a contiguous copy (kernels index flat memory)."""
        return a if a.flags.c_contiguous else self.cp.ascontiguousarray(a)

    def _out(self, out, like):
        """(buffer to write, final out): a contiguous stand-in when ``out`` is not contiguous."""
        if out is None:
            o = self.cp.empty_like(like)
            return o, o
        if out.flags.c_contiguous:
            return out, out
        return self.cp.empty(out.shape, dtype=out.dtype), out

    @staticmethod
    def _suffix(a):
        s = _SUFFIX.get(a.dtype)
        if s is None:
            raise InputError(f"the CuPy kernels take float32 or float64 arrays, got {a.dtype}")
        return s

    @staticmethod
    def _act(name):
        if name not in ACTIVATIONS:
            raise BackendError(f"no CUDA kernel for activation {name!r}; compiled: {', '.join(ACTIVATIONS)}")
        return name

    # -- activations ------------------------------------------------------------------------------
    def bias_act(self, pre, b, name, out, scratch, slope):
        suf, t = self._suffix(pre), pre.dtype.type
        w, out = self._out(out, pre)
        n = pre.size
        h = pre.shape[-1] if pre.ndim else 1
        if b.shape != (h,):
            b = self.cp.broadcast_to(b, (h,))
        self._launch(f"bias_act_{self._act(name)}_{suf}", n,
                     (self._c(pre), self._c(b), w, np.int64(n), np.int64(max(h, 1)), t(slope)))
        if w is not out:
            out[...] = w
        return out

    def act_backward(self, name, da, a, out, mask, slope):
        if out is not None and out is da:
            raise InputError("activation_backward: out must not be da (use out=a or a new buffer)")
        suf, t = self._suffix(a), a.dtype.type
        w, out = self._out(out, a)
        n = a.size
        self._launch(f"act_backward_{self._act(name)}_{suf}", n,
                     (self._c(da), self._c(a), w, np.int64(n), t(1 - slope), t(slope)))
        if w is not out:
            out[...] = w
        return out

    # -- reparameterize + KL ---------------------------------------------------------------------
    def reparam_kl_forward(self, mu_logvar, eps, z, std, scratch, bias, limit):
        ml = mu_logvar
        suf, t = self._suffix(ml), ml.dtype.type
        N, L = z.shape
        self._need_c("reparam_kl_forward", ml, eps, z, std)
        n = N * L
        return self._reduce(f"reparam_kl_forward_{suf}", suf, ml.dtype, n,
                            (ml, self._vector_or_null(bias, 2 * L, ml.dtype), eps, z, std, np.int64(n),
                             np.int64(L), t(limit)), 0.5)

    def reparam_kl_backward(self, dz, eps, std, mu_logvar, beta, dmu_logvar, limit):
        ml, dml = mu_logvar, dmu_logvar
        suf, t = self._suffix(ml), ml.dtype.type
        N, L = std.shape
        self._need_c("reparam_kl_backward", eps, std, ml, dml, *(() if dz is None else (dz,)))
        if isinstance(beta, self.cp.ndarray):
            if beta.dtype != np.float64 or beta.size != 1:
                raise InputError(f"a device beta must be one float64 value, got {beta.dtype} {beta.shape}")
            beta_p, beta_s = beta, t(0)
        else:
            beta_p, beta_s = np.uint64(0), t(beta)
        n = N * L
        self._launch(f"reparam_kl_backward_{suf}", n,
                     (np.uint64(0) if dz is None else dz, eps, std, ml, beta_p, beta_s, dml,
                      np.int64(n), np.int64(L), t(limit)))
        return dml

    # -- full-covariance reparameterize + KL --------------------------------------------------------
    def fullcov_reparam_kl_forward(self, head, eps, z, scale, scratch, bias, limit, offdiag):
        suf, t = self._suffix(head), head.dtype.type
        N, L = z.shape
        self._need_c("fullcov_reparam_kl_forward", head, eps, z, scale)
        n = N * L
        return self._reduce(f"fullcov_reparam_kl_forward_{suf}", suf, head.dtype, n,
                            (head, self._vector_or_null(bias, head.shape[1], head.dtype), eps, z, scale,
                             np.int64(n), np.int64(L), t(limit), t(offdiag)), 0.5)

    def fullcov_reparam_kl_backward(self, dz, eps, scale, head, beta, dhead, outer, gathered, limit, offdiag):
        suf, t = self._suffix(head), head.dtype.type
        N, L = eps.shape
        self._need_c("fullcov_reparam_kl_backward", eps, scale, head, dhead, *(() if dz is None else (dz,)))
        beta_p, beta_s = self._beta(beta, t)
        n = N * L
        self._launch(f"fullcov_reparam_kl_backward_{suf}", n,
                     (np.uint64(0) if dz is None else dz, eps, scale, head, beta_p, beta_s, dhead,
                      np.int64(n), np.int64(L), t(limit), t(offdiag)))
        return dhead

    # -- a hierarchical model's conditional prior ----------------------------------------------------
    def cond_prior_forward(self, head, h, out, scratch, work, bias, limit):
        suf, t = self._suffix(head), head.dtype.type
        N, L = h.shape
        self._need_c("cond_prior_forward", head, h, out)
        self.fn(f"cond_prior_forward_{suf}")((_blocks(N),), (THREADS,), (
            head, self._vector_or_null(bias, 2 * L, head.dtype), h, out, np.int64(N), np.int64(L), t(limit)))
        return out

    def cond_prior_backward(self, head, h, weights, dhead, dh, scratch, limit):
        suf, t = self._suffix(head), head.dtype.type
        N, L = h.shape
        self._need_c("cond_prior_backward", head, h, dhead, dh)
        rows = np.uint64(0)
        if isinstance(weights, self.cp.ndarray) and weights.dtype == head.dtype and weights.size == N:
            rows, w_p, w_s = self._c(weights.reshape(-1)), np.uint64(0), t(0)
        else:
            w_p, w_s = self._beta(weights, t)
        self._launch(f"cond_prior_backward_{suf}", N * L,
                     (head, h, rows, w_p, w_s, dhead, dh, np.int64(N * L), np.int64(L), t(limit)))
        return dhead

    def _beta(self, beta, t):
        """(device pointer or null, host value) of a β given as a number or a float64 device scalar."""
        if isinstance(beta, self.cp.ndarray):
            if beta.dtype != np.float64 or beta.size != 1:
                raise InputError(f"a device beta must be one float64 value, got {beta.dtype} {beta.shape}")
            return beta, t(0)
        return np.uint64(0), t(beta)

    # -- Bernoulli ----------------------------------------------------------------------------------
    def bernoulli_nll(self, logits, x, dlogits, scratch, overwrite_logits, bias):
        suf, t = self._suffix(logits), logits.dtype.type
        # CuPy compiles with -ftz=true: a float32 e^{-88} (subnormal) would flush to 0. With the
        # cap at 87, t, 1/t, σ and log1p(e^{-|y|}) all stay ≥ e^{-87} > FLT_MIN: normal. The
        # NumPy twin (cap 88) differs only where |y| > 87, by less than e^{-87} ≈ 1.6e-38 a term.
        cap = 87.0 if logits.dtype.itemsize == 4 else 708.0
        self._need_c("bernoulli_nll", dlogits)
        n = logits.size
        D = logits.shape[-1] if logits.ndim else 1
        return self._reduce(f"bernoulli_nll_{suf}", suf, logits.dtype, n,
                            (self._c(logits), self._vector_or_null(bias, D, logits.dtype), np.int64(max(D, 1)),
                             self._c(x), dlogits, np.int64(n), t(cap)), 1.0)

    # -- Adam -----------------------------------------------------------------------------------------
    def adam(self, p, g, m, v, step_size, sqrt_bc2, b1, b2, eps, scratch):
        suf, t = self._suffix(p), p.dtype.type
        self._need_c("adam", p, g, m, v)
        self._launch(f"adam_{suf}", p.size,
                     (p, g, m, v, np.int64(p.size), t(step_size), t(sqrt_bc2), t(b1), t(1 - b1),
                      t(b2), t(1 - b2), t(eps)))

    def adam_from(self, p, g, m, v, coef, b1, b2, eps, scratch):
        suf, t = self._suffix(p), p.dtype.type
        self._need_c("adam_from", p, g, m, v, coef)
        self._launch(f"adam_from_{suf}", p.size,
                     (p, g, m, v, np.int64(p.size), coef, t(b1), t(1 - b1), t(b2), t(1 - b2), t(eps)))

    # -- matrix products --------------------------------------------------------------------------------
    def matmul(self, a, b, out, precision):
        return self.cublas.matmul(a, b, out, precision)

    def data_matmul(self, x, W, out, nonzeros):
        """The dense product: cuBLAS gains nothing from skipping zeros (no stack keeps a list of
        nonzeros on CuPy, ``nonzeros`` is None there)."""
        return self.cublas.matmul(x, W, out, "fp32")

    def data_weight_grad(self, x, dy, out, nonzeros):
        return self.cublas.matmul(x.T, dy, out, "fp32")

    def bernoulli_nll_rows(self, logits, x, dtype, out, buffers):
        """The block's own body on CuPy arrays (importance sampling): its softplus is the kernel
        below, then − x·y and the row sums, each one CuPy operation."""
        return self.body("bernoulli_nll_rows")(logits, x, dtype, out, buffers)

    def softplus(self, z, out, scratch):
        """log(1 + e^z) as CuPy's logaddexp(z, 0): one elementwise pass (no scratch needed)."""
        return self.cp.logaddexp(z, 0, out=out)

    def sum_rows(self, a, out):
        """Σ_n a[n, :] (the bias gradient) as ones(1, N) @ a on the cuBLAS path."""
        return self.cublas.sum_rows(a, out)

    # -- bfloat16 words -----------------------------------------------------------------------------------
    def to_bf16(self, x, out):
        return self._convert("to_bf16", x, out, np.float32, np.uint16)

    def from_bf16(self, x16, out):
        return self._convert("from_bf16", x16, out, np.uint16, np.float32)

    def _convert(self, name, x, out, src, dst):
        """Launch the conversion ``name`` from ``src`` words to ``dst`` words into ``out`` (or a new array)."""
        if x.dtype != src:
            raise InputError(f"{name}: expected a {np.dtype(src).name} array, got {x.dtype}")
        if out is None:
            out = self.cp.empty(x.shape, dtype=dst)
        elif tuple(out.shape) != tuple(x.shape) or out.dtype != dst or not out.flags.c_contiguous:
            raise InputError(f"{name}: out must be a C-contiguous {np.dtype(dst).name} array of shape "
                             f"{tuple(x.shape)}, got {out.dtype} {tuple(out.shape)}")
        self._launch(name, x.size, (self._c(x), out, np.int64(x.size)))
        return out

    # -- CUDA-graph plumbing --------------------------------------------------------------------------
    def gather_rows(self, src, perm, bi, batch, out):
        suf = self._suffix(src)
        self._need_c("gather_rows", src, perm, out)
        nb, d = out.shape
        self._launch(f"gather_rows_{suf}", nb * d,
                     (src, perm, bi, np.int64(batch), np.int64(nb), np.int64(d), out))
        return out

    def load_row(self, table, bi, out):
        self._need_c("load_row", table, out)
        if out.shape != (table.shape[1],):
            raise InputError(f"load_row: out must have shape ({table.shape[1]},), got {tuple(out.shape)}")
        self.fn("load_row")((1,), (32,), (table, bi, np.int64(table.shape[1]), out))
        return out

    def record_losses(self, first, second, recon, kl, losses, bi, flag):
        suf = self._suffix(first)
        recon, kl = (a if a.dtype == first.dtype else a.astype(first.dtype) for a in (recon, kl))
        if second is not None and second.dtype != first.dtype:
            second = second.astype(first.dtype)
        args = (first, np.uint64(0) if second is None else second, recon, kl, losses, bi, flag)
        self.fn("record_losses_" + suf)((1,), (1,), args)

    def _vector_or_null(self, v, size, dtype):
        """A folded-in bias: a contiguous (size,) array of ``dtype``, or a null pointer for None."""
        if v is None:
            return np.uint64(0)
        if v.shape != (size,) or v.dtype != dtype:
            raise InputError(f"bias must be a ({size},) {dtype} array, got {v.dtype} {tuple(v.shape)}")
        return self._c(v)

    def _need_c(self, what, *arrays):
        for a in arrays:
            if not a.flags.c_contiguous:
                raise InputError(f"{what}: the CuPy kernel needs C-contiguous buffers, got strides {a.strides}")
