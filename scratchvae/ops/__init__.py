"""Forward/backward pairs of every op, each backward's derivation in its docstring.

=====================  =====================================================
module                 ops
=====================  =====================================================
:mod:`.dense`          affine layer y = xW + b
:mod:`.activations`    relu, leaky_relu, tanh, sigmoid, softplus (+ bias fused)
:mod:`.gaussian`       reparameterize, KL(N(μ, σ²) ‖ N(0, I)), fused block
:mod:`.likelihoods`    Bernoulli on logits, Gaussian (fixed / learned σ)
=====================  =====================================================
"""

from .activations import (
    ACTIVATIONS,
    LEAKY_SLOPE,
    activation_backward,
    activation_derivative,
    activation_forward,
    bias_act_forward,
)
from .dense import dense_backward, dense_forward
from .gaussian import (
    kl_standard_normal,
    kl_standard_normal_backward,
    reparam_kl_backward,
    reparam_kl_forward,
    reparameterize,
    reparameterize_backward,
)
from .likelihoods import (
    LOG_SIGMA_FLOOR,
    bernoulli_nll,
    bernoulli_nll_backward,
    bernoulli_nll_forward_backward,
    gaussian_nll,
    gaussian_nll_forward_backward,
    sigmoid,
    softplus,
    soft_floor_log_sigma,
    soft_floor_log_sigma_backward,
)
