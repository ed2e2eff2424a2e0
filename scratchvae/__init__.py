"""scratchvae: a variational autoencoder written from scratch on NumPy (CuPy on a GPU).

Every layer is hand-written and every gradient hand-derived; see the README's map of
where each derivation lives.
"""

__version__ = "0.1.0"
