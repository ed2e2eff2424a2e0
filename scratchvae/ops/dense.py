"""The dense (affine) layer: y = x W + b.

Shapes: x (N, I), W (I, O), b (O,), y (N, O). The weight is stored (fan_in, fan_out) so
the forward product needs no transpose; PyTorch's ``nn.Linear.weight`` is ``W.T``.
"""

from __future__ import annotations

from ._seam import xp_of


def dense_forward(x, W, b, out=None):
    """y = x W + b  (y_nj = Σ_i x_ni W_ij + b_j).  ``out``: (N, O), must not alias x."""
    xp = xp_of(x)
    out = xp.matmul(x, W, out=out)
    out += b
    return out


def dense_backward(dy, x, W, dW=None, db=None, dx=None, need_dx=True):
    """Gradients of a scalar loss ℓ through y = x W + b, given dy = ∂ℓ/∂y (N, O).

    Derivation: y_nj = Σ_i x_ni W_ij + b_j, so
      ∂ℓ/∂W_ij = Σ_n x_ni dy_nj   ->  dW = xᵀ dy        (I, O)
      ∂ℓ/∂b_j  = Σ_n dy_nj        ->  db = Σ_n dy_n     (O,)  (the bias is shared by rows)
      ∂ℓ/∂x_ni = Σ_j dy_nj W_ij   ->  dx = dy Wᵀ        (N, I)
    ``x.T`` and ``W.T`` are views: BLAS reads them transposed, nothing is copied.
    Returns (dW, db, dx) with dx None when ``need_dx`` is False (the first layer).
    """
    xp = xp_of(dy)
    dW = xp.matmul(x.T, dy, out=dW)
    db = xp.sum(dy, axis=0, out=db)
    if need_dx:
        dx = xp.matmul(dy, W.T, out=dx)
    else:
        dx = None
    return dW, db, dx
