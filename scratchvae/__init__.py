"""scratchvae: a variational autoencoder written from scratch on NumPy (CuPy on a GPU).

Every layer is hand-written and every gradient hand-derived; see the README's map of
where each derivation lives.
"""

from .version import __version__
from .backend import available_backends, get_backend
from .errors import ScratchVAEError
from .gradcheck import gradcheck, gradcheck_model
from .model import VAE, LossResult
from .optim import SGD, Adam
from .train import TrainConfig, fit, load_run

__all__ = ["VAE", "LossResult", "Adam", "SGD", "gradcheck", "gradcheck_model",
           "get_backend", "available_backends", "ScratchVAEError", "fit", "load_run",
           "TrainConfig", "__version__"]
