"""scratchvae's benchmark harness against PyTorch and JAX: see benchmarks/README.md.

``python -m benchmarks.run --device cpu`` (or ``gpu``) times every peer, each in its own
process, after checking that they all compute the same loss and gradients.
"""
