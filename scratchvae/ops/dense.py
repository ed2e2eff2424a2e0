"""The dense (affine) layer: y = x W + b.

Shapes: x (N, I), W (I, O), b (O,), y (N, O). The weight is stored (fan_in, fan_out) so
the forward product needs no transpose; PyTorch's ``nn.Linear.weight`` is ``W.T``.

Training runs the forward in two pieces: the product x W (:func:`matmul`), then the fused
block that reads it anyway adds b (bias + activation in :func:`~.activations.bias_act_forward`;
the head's bias in :func:`~.gaussian.reparam_kl_forward`; on the ELBO path the output bias in
the Bernoulli block; the Gaussian likelihood and the importance-weighted path add the output
bias in a pass of its own). The unfused ``dense_forward`` is kept as a test oracle in :mod:`.reference`.
"""

from __future__ import annotations

import numpy as np

from ..backend import fused, xp_of
from ..errors import InputError
from .bf16 import bf16_values

PRECISIONS = ("fp32", "tf32", "bf16")
"""What a matrix product computes in (see :mod:`.precision`): fp32; tf32 (FP32 operands, TF32
tensor cores); bf16 (operands as bfloat16 words, FP32 accumulation and output)."""


@fused("matmul")
def matmul(a, b, out=None, precision="fp32"):
    """a @ b into ``out`` (2-D; ``out`` must not overlap a or b), on the backend's GEMM path.

    NumPy: ``numpy.matmul``. CuPy: the backend's own cuBLAS binding
    (:mod:`scratchvae.backend.cublas`), which also works inside a CUDA-graph capture, so an
    eager step and a replayed one run the same GEMMs. Transposed views go in without a copy.

    ``precision``: 'fp32'; 'tf32' (float32 operands; on a GPU the TF32 tensor cores round them
    to 10 mantissa bits, here the FP32 product stands for it); 'bf16' (the operands are
    bfloat16 words, uint16, as :func:`~.bf16.to_bf16` writes them; the product of their exact
    float32 values is accumulated and returned in float32).
    """
    if precision == "fp32":
        return xp_of(a).matmul(a, b, out=out)
    if precision not in PRECISIONS:
        raise InputError(f"matmul: precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "bf16":
        if a.dtype != np.uint16 or b.dtype != np.uint16:
            raise InputError(f"matmul: precision bf16 takes bfloat16 words (uint16), got {a.dtype} and {b.dtype}")
        a, b = bf16_values(a), bf16_values(b)
    elif a.dtype != np.float32 or b.dtype != np.float32:
        raise InputError(f"matmul: precision tf32 takes float32 operands, got {a.dtype} and {b.dtype}")
    return xp_of(a).matmul(a, b, out=out)


@fused("sum_rows")
def sum_rows(a, out=None):
    """Σ_n a[n, :] -> (O,) (a bias gradient). CuPy: ones(1, N) @ a on the GEMM path, in FP32."""
    return xp_of(a).sum(a, axis=0, out=out)


@fused("data_matmul")
def data_matmul(x, W, out, nonzeros):
    """x W for a stack's first layer, whose x is data (N, I) that is mostly zeros (MNIST's
    pixels: 81 % are 0; binarised, 87 %): the same product as :func:`matmul`, into ``out``.

    ``nonzeros`` (2N + 1, I + 1) int32: where the CPU twin lists each row's nonzero columns for the
    backward's :func:`data_weight_grad` (rows 0 … N − 1; column 0 the count, −1 in row 0 where it
    did not list), and where that backward lists them again by column (the N + 1 rows after). A zero
    term adds nothing to y_nj = Σ_i x_ni W_ij, so the twin sums over row n's nonzero i alone, in
    ascending i: about a fifth of the dense product's multiply-adds on MNIST. It does so where it is
    the faster of the two (the BLAS runs one thread and at most a quarter of x is nonzero,
    ``SPARSE_DENSITY`` in :mod:`scratchvae.backend._numba_dense`: each rank of a run that fills the
    cores, a run on one core) and runs this body otherwise. Its sums are in another order than the
    BLAS's, so its bits differ from the body's by float32 rounding (the NumPy bodies' figures,
    ``tools/param_hash.py``, are this body's). One difference in kind: a zero x_ni times an infinite
    W_ij is NaN in the product and skipped by the twin, which matters only once θ is no longer
    finite.
    """
    if nonzeros is not None:
        nonzeros[:1, :1] = -1            # no list of nonzeros: the backward runs the dense product
    return matmul(x, W, out=out)


@fused("data_weight_grad")
def data_weight_grad(x, dy, out, nonzeros):
    """dW = xᵀ dy (I, O) of the layer whose forward was :func:`data_matmul` on the same ``x``
    (∂ℓ/∂W_ij = Σ_n x_ni dy_nj, :func:`dense_backward`). The CPU twin reads the nonzero columns its
    forward listed in ``nonzeros`` and adds x_ni dy_n into row i of dW for those alone, column by
    column, rows n in order; where the forward listed none (column 0 of row 0 is −1) it runs this body."""
    return matmul(x.T, dy, out=out)


def dense_backward(dy, x, W, dW=None, db=None, dx=None, need_dx=True, dy_op=None, precision="fp32",
                   nonzeros=None):
    """Gradients of a scalar loss ℓ through y = x W + b, given dy = ∂ℓ/∂y (N, O).

    Derivation: y_nj = Σ_i x_ni W_ij + b_j, so
      ∂ℓ/∂W_ij = Σ_n x_ni dy_nj   ->  dW = xᵀ dy        (I, O)
      ∂ℓ/∂b_j  = Σ_n dy_nj        ->  db = Σ_n dy_n     (O,)  (the bias is shared by rows)
      ∂ℓ/∂x_ni = Σ_j dy_nj W_ij   ->  dx = dy Wᵀ        (N, I)
    ``x.T`` and ``W.T`` are views: BLAS reads them transposed, nothing is copied.
    Returns (dW, db, dx) with dx None when ``need_dx`` is False (the first layer).

    In a reduced ``precision`` the two products read x, W and dy as the products take them:
    x and W are given that way (bf16: the bfloat16 words of the forward's input and of the
    weight), and so is ``dy_op`` (bf16: dy's words; default dy itself); the bias gradient is
    summed from dy in FP32.

    ``nonzeros``: the list :func:`data_matmul` kept of x's nonzero columns (fp32 only): dW is
    then :func:`data_weight_grad`'s.
    """
    dy_op = dy if dy_op is None else dy_op
    if nonzeros is not None:
        dW = data_weight_grad(x, dy_op, dW, nonzeros)
    else:
        dW = matmul(x.T, dy_op, out=dW, precision=precision)
    db = sum_rows(dy, out=db)
    if need_dx:
        dx = matmul(dy_op, W.T, out=dx, precision=precision)
    else:
        dx = None
    return dW, db, dx
