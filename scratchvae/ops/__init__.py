"""The blocks of the model, each with its derivation in its docstring.

=====================  =====================================================
module                 blocks
=====================  =====================================================
:mod:`.dense`          the affine layer's product (in a precision) and backward
:mod:`.bf16`           float32 -> bfloat16 words (round to nearest even) and back
:mod:`.precision`      fp32 / tf32 / bf16: what the model's products read and compute in
:mod:`.activations`    relu, leaky_relu, tanh, sigmoid, softplus (+ bias fused)
:mod:`.gaussian`       reparameterize + KL(N(μ, σ²) ‖ N(0, I)) fused; row log-densities
:mod:`.fullcov`        z = μ + Sε + KL(N(μ, SSᵀ) ‖ N(0, I)) fused; S, log det S, samples
:mod:`.iwae`           the importance-weighted bound L_K and its normalised weights
:mod:`.hierarchy`      a hierarchical model's conditional prior N(μ_p(h_up), diag e^{lv_p})
:mod:`.likelihoods`    Bernoulli on logits, Gaussian (fixed / learned σ); their draws
:mod:`.reference`      the unfused textbook forms, kept as test oracles
=====================  =====================================================

A fused block (declared with :func:`scratchvae.backend.fused`) is one function: its body is
the readable NumPy form, and the backend's kernel of the declared name runs it on a GPU.
"""

from .activations import (
    ACTIVATIONS,
    LEAKY_SLOPE,
    activation_backward,
    activation_derivative,
    activation_forward,
    bias_act_forward,
    sigmoid,
    softplus,
)
from .bf16 import from_bf16, to_bf16
from .dense import PRECISIONS, dense_backward, matmul, sum_rows
from .fullcov import (
    LOG_SCALE_LIMIT,
    fullcov_kl_terms,
    fullcov_log_det_rows,
    fullcov_reparam_kl_backward,
    fullcov_reparam_kl_forward,
    fullcov_sample,
    fullcov_std,
    scale_tril_from_head,
)
from .gaussian import (
    LOG_2PI,
    LOGVAR_LIMIT,
    kl_standard_normal_terms,
    log_normal_rows,
    log_standard_normal_rows,
    reparam_kl_backward,
    reparam_kl_forward,
    reparameterize,
)
from .hierarchy import cond_prior_backward, cond_prior_forward
from .iwae import iw_bound_and_weights
from .likelihoods import (
    LOG_SIGMA_FLOOR,
    bernoulli_nll_forward_backward,
    bernoulli_nll_rows,
    gaussian_nll_forward_backward,
    gaussian_nll_rows,
    sample_bernoulli,
    sample_gaussian,
    soft_floor_log_sigma,
    soft_floor_log_sigma_backward,
)

__all__ = [
    "ACTIVATIONS",
    "LEAKY_SLOPE",
    "LOGVAR_LIMIT",
    "LOG_2PI",
    "LOG_SCALE_LIMIT",
    "LOG_SIGMA_FLOOR",
    "PRECISIONS",
    "activation_backward",
    "activation_derivative",
    "activation_forward",
    "bernoulli_nll_forward_backward",
    "bernoulli_nll_rows",
    "bias_act_forward",
    "cond_prior_backward",
    "cond_prior_forward",
    "dense_backward",
    "from_bf16",
    "fullcov_kl_terms",
    "fullcov_log_det_rows",
    "fullcov_reparam_kl_backward",
    "fullcov_reparam_kl_forward",
    "fullcov_sample",
    "fullcov_std",
    "gaussian_nll_forward_backward",
    "gaussian_nll_rows",
    "iw_bound_and_weights",
    "kl_standard_normal_terms",
    "log_normal_rows",
    "log_standard_normal_rows",
    "matmul",
    "reparam_kl_backward",
    "reparam_kl_forward",
    "reparameterize",
    "sample_bernoulli",
    "sample_gaussian",
    "scale_tril_from_head",
    "sigmoid",
    "soft_floor_log_sigma",
    "soft_floor_log_sigma_backward",
    "softplus",
    "sum_rows",
    "to_bf16",
]
