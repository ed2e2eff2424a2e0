"""The dense (affine) layer: y = x W + b.

Shapes: x (N, I), W (I, O), b (O,), y (N, O). The weight is stored (fan_in, fan_out) so
the forward product needs no transpose; PyTorch's ``nn.Linear.weight`` is ``W.T``.

Training runs the forward in two pieces: the product x W (:func:`matmul`), then the fused
block that reads it anyway adds b (bias + activation in :func:`~.activations.bias_act_forward`;
the head's bias in :func:`~.gaussian.reparam_kl_forward`; the output bias in the likelihood's
block). The unfused ``dense_forward`` is kept as a test oracle in :mod:`.reference`.
"""

from __future__ import annotations

from ..backend import fused, xp_of


@fused("matmul")
def matmul(a, b, out=None):
    """a @ b into ``out`` (2-D; ``out`` must not overlap a or b), on the backend's GEMM path.

    NumPy: ``numpy.matmul``. CuPy: the backend's own cuBLAS binding
    (:mod:`scratchvae.backend.cublas`), which also works inside a CUDA-graph capture, so an
    eager step and a replayed one run the same GEMMs. Transposed views go in without a copy.
    """
    return xp_of(a).matmul(a, b, out=out)


@fused("sum_rows")
def sum_rows(a, out=None):
    """Σ_n a[n, :] -> (O,) (a bias gradient). CuPy: ones(1, N) @ a on the GEMM path."""
    return xp_of(a).sum(a, axis=0, out=out)


def dense_backward(dy, x, W, dW=None, db=None, dx=None, need_dx=True):
    """Gradients of a scalar loss ℓ through y = x W + b, given dy = ∂ℓ/∂y (N, O).

    Derivation: y_nj = Σ_i x_ni W_ij + b_j, so
      ∂ℓ/∂W_ij = Σ_n x_ni dy_nj   ->  dW = xᵀ dy        (I, O)
      ∂ℓ/∂b_j  = Σ_n dy_nj        ->  db = Σ_n dy_n     (O,)  (the bias is shared by rows)
      ∂ℓ/∂x_ni = Σ_j dy_nj W_ij   ->  dx = dy Wᵀ        (N, I)
    ``x.T`` and ``W.T`` are views: BLAS reads them transposed, nothing is copied.
    Returns (dW, db, dx) with dx None when ``need_dx`` is False (the first layer).
    """
    dW = matmul(x.T, dy, out=dW)
    db = sum_rows(dy, out=db)
    if need_dx:
        dx = matmul(dy, W.T, out=dx)
    else:
        dx = None
    return dW, db, dx
