"""Dense stacks: the encoder's and the decoder's trunks, each a chain of affine layers.

    act(x W_0 + b_0) -> act(· W_1 + b_1) -> … -> · W_last      (+ b_last: the next block adds it)

A :class:`DenseStack` owns its layers' parameter names and their views into the model's flat θ
and gradient (:class:`Layer`), its activation, the precision its products compute in, and per
batch shape the buffers its forward keeps for its backward (:class:`StackCache`). Its last
layer has no activation and leaves its bias to the fused block that reads the product next (the
posterior's sample block, the likelihood's): a GPU reads each (N, O) output once. The pair, as
in CS231n's layers:

    out = stack.forward(x, cache)         the last product, its bias not yet added
    dx = stack.backward(dout, cache, dx)  dW, db of every layer into the gradient views, and
                                          ∂ℓ/∂x into ``dx`` (None: not formed; x is data)

Derivations: the affine layer in :func:`scratchvae.ops.dense.dense_backward` (dW = xᵀ dy,
db = Σ_n dy, dx = dy Wᵀ), each activation's derivative from its output in
:mod:`scratchvae.ops.activations`. With a cache, neither pass allocates an array.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .ops.activations import activation_backward, bias_act_forward
from .ops.dense import data_matmul, dense_backward


@dataclass
class Layer:
    """One affine layer ``name`` (e.g. 'enc.0'): W (I, O), b (O,), their gradients (views into
    the model's flat buffers) and W as the products read it (bf16: its words; else W)."""

    name: str
    W: object
    b: object
    dW: object
    db: object
    W_op: object


@dataclass
class StackCache:
    """What one stack's forward keeps for its backward at one batch shape (N rows).

    ``inputs[i]``   the input of layer i: the stack's x (set by each forward) for i = 0, else
                    hidden layer i−1's activation (N, H), which the backward overwrites with ∂ℓ/∂
                    of its pre-activation
    ``grads[i]``    ∂ℓ/∂(hidden layer i's activation) (N, H); scratch of the forward's blocks
    ``lows[i]``     ``inputs[i]`` as the products read it (bf16 words; None in fp32 and tf32)
    ``mask``        (N, max H) bool: ReLU's 1[a > 0]
    ``out``, ``dout``, ``dout_lo``  the last product (N, O), ∂ℓ/∂ of it, and its words (bf16)
    ``nonzeros``    (2N + 1, I + 1) int32: where a stack that reads data lists its x's nonzero columns
                    (:func:`~scratchvae.ops.dense.data_matmul`, NumPy): by row in rows 0 … N − 1,
                    by column in the rest; None for the others, on CuPy, and in tf32, bf16
    """

    inputs: list
    grads: list
    lows: list
    mask: object
    out: object
    dout: object
    dout_lo: object
    nonzeros: object = None


class DenseStack:
    """Layers ``prefix.0``, ``prefix.1``, … and ``prefix.<last>`` mapping ``sizes`` =
    (input, hidden…, output); see the module. ``activation``: of the hidden layers (a name of
    :data:`~scratchvae.ops.activations.ACTIVATIONS`); ``precision``: a
    :class:`~scratchvae.ops.precision.Precision`; ``reads_data``: the input is data, never
    differentiated and mostly zeros (the encoder's x), so the first layer's products may skip x's
    zeros (:func:`~scratchvae.ops.dense.data_matmul`) in fp32."""

    def __init__(self, prefix, sizes, last, activation, precision, reads_data=False):
        self.prefix, self.sizes, self.activation, self.precision = prefix, tuple(sizes), activation, precision
        self.reads_data = reads_data and precision.name == "fp32"
        self.names = [f"{prefix}.{i}" for i in range(len(sizes) - 2)] + [f"{prefix}.{last}"]
        self.layers = []

    def param_shapes(self):
        """{name: shape} of W and b of each layer, in order (the flat buffer's order)."""
        shapes = {}
        for name, fan_in, fan_out in zip(self.names, self.sizes[:-1], self.sizes[1:]):
            shapes[f"{name}.W"], shapes[f"{name}.b"] = (fan_in, fan_out), (fan_out,)
        return shapes

    def bind(self, params, grads, operands):
        """Take the layers' views of the model's parameters, gradients and product operands."""
        self.layers = [Layer(n, params[f"{n}.W"], params[f"{n}.b"], grads[f"{n}.W"], grads[f"{n}.b"],
                             operands[f"{n}.W"]) for n in self.names]

    @property
    def last(self):
        """The last layer, whose bias the block after the stack adds."""
        return self.layers[-1]

    def cache(self, xp, dtype, n):
        """The buffers of a forward and backward at batch size ``n`` (see :class:`StackCache`)."""
        hidden, lo = self.sizes[1:-1], self.precision.buffer
        empty = lambda *shape: xp.empty(shape, dtype=dtype)  # noqa: E731
        return StackCache(inputs=[None] + [empty(n, h) for h in hidden], grads=[empty(n, h) for h in hidden],
                          lows=[lo(xp, (n, w)) for w in self.sizes[:-1]],
                          mask=xp.empty((n, max(hidden, default=1)), dtype=bool),
                          out=empty(n, self.sizes[-1]), dout=empty(n, self.sizes[-1]),
                          dout_lo=lo(xp, (n, self.sizes[-1])),
                          nonzeros=self._nonzeros(xp, n))

    def _nonzeros(self, xp, n):
        """The list of x's nonzero columns a stack that reads data keeps (NumPy; None elsewhere),
        marked unused (−1) until a forward writes it."""
        if not (self.reads_data and xp is np):
            return None
        nz = np.empty((2 * n + 1, self.sizes[0] + 1), np.int32)
        nz[:, 0] = -1
        return nz

    def forward(self, x, cache=None):
        """act(…act(x W_0 + b_0)…) W_last: each hidden layer's product, then its bias and
        activation in one fused block; the last product without its bias. ``cache``: the
        buffers to fill (None: new arrays, nothing kept for a backward)."""
        p, c = self.precision, cache
        if c is not None:
            c.inputs[0] = x
        h = x
        for i, layer in enumerate(self.layers[:-1]):
            a = self._product(i, p.operand(h, None if c is None else c.lows[i]), c, None if c is None else c.inputs[i + 1])
            h = bias_act_forward(a, layer.b, self.activation, out=a, scratch=None if c is None else c.grads[i])
        h_op = p.operand(h, None if c is None else c.lows[-1])
        return self._product(len(self.layers) - 1, h_op, c, None if c is None else c.out)

    def _product(self, i, h_op, cache, out):
        """Layer i's product h W_i into ``out``: the first layer of a stack that reads data lists
        its zeros for the backward as it goes (``cache.nonzeros``), the others ``matmul``."""
        if i == 0 and cache is not None and cache.nonzeros is not None:
            return data_matmul(h_op, self.layers[0].W_op, out, cache.nonzeros)
        return self.precision.matmul(h_op, self.layers[i].W_op, out=out)

    def backward(self, dout, cache, dx=None):
        """From ``dout`` = ∂ℓ/∂(last product + its bias) (N, O), down the layers: dW_i = x_iᵀ d,
        db_i = Σ_n d and d x_i = d W_iᵀ (dense_backward), then through the activation of x_i,
        written over the spent activation, until ∂ℓ/∂x lands in ``dx`` (None: not formed).
        ``cache`` as the forward filled it. Returns ``dx``."""
        p, c = self.precision, cache
        d, d_lo = dout, c.dout_lo
        for i in range(len(self.layers) - 1, -1, -1):
            layer, into = self.layers[i], c.grads[i - 1] if i > 0 else dx
            dense_backward(d, p.kept(c.inputs[i], c.lows[i]), layer.W_op, layer.dW, layer.db, dx=into,
                           need_dx=into is not None, dy_op=p.operand(d, d_lo), precision=p.name,
                           nonzeros=c.nonzeros if i == 0 else None)
            if i > 0:
                d = activation_backward(self.activation, into, c.inputs[i], out=c.inputs[i],
                                        mask=c.mask[:, :into.shape[1]])
                d_lo = c.lows[i]
        return dx
