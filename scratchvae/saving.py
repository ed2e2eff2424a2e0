"""A model in one file: ``VAE.save(path)`` and ``VAE.load(path)``.

The file is the checkpoint format of :mod:`scratchvae.checkpoint` (an uncompressed ``.npz`` of
numeric arrays plus JSON metadata; nothing pickled, so ``np.load(path, allow_pickle=False)``
opens it too), holding:

==================  ================================================================
``param/<name>``    every parameter, in the model's dtype
metadata            ``kind`` = ``"scratchvae model"``, ``model`` (the constructor's arguments,
                    ``VAE.config()``), ``rng`` (the model's random streams), ``scratchvae``
                    (the version that wrote it)
==================  ================================================================

No optimizer state. :func:`load_model` also reads a run's checkpoint (``RUN/checkpoints/*.npz``:
the same ``param/`` arrays, the model's configuration under ``config.model``), taking its
parameters and the model's streams and ignoring the rest.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .checkpoint import check_arrays, load_checkpoint, save_checkpoint
from .errors import CheckpointError
from .version import __version__

KIND = "scratchvae model"


def save_model(model, path):
    """Write ``model`` to ``path`` (atomically); returns the path."""
    arrays = {f"param/{k}": v for k, v in model.host_params().items()}
    rng = {k: [int(w) for w in v] for k, v in model.rng.state().items()}
    meta = {"kind": KIND, "model": model.config(), "rng": rng, "scratchvae": __version__}
    return save_checkpoint(Path(path), arrays, meta)


def load_model(cls, path, backend=None):
    """A ``cls`` (VAE) built from a file of :func:`save_model` or a run's checkpoint."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(
            f"{path} is a run folder, not a model file: load the run with scratchvae.load_run({str(path)!r}) "
            f"(its .model is the VAE), or one of its checkpoints with VAE.load" if (path / "config.json").is_file()
            else f"{path} is a folder, not a model file (VAE.load reads the .npz that VAE.save wrote)")
    arrays, meta = load_checkpoint(path)
    if meta.get("kind") == KIND and isinstance(meta.get("model"), dict):
        config = meta["model"]
    elif isinstance(meta.get("config"), dict) and isinstance(meta["config"].get("model"), dict):
        config = meta["config"]["model"]
    else:
        raise CheckpointError(f"{path} is neither a saved scratchvae model nor a run's checkpoint "
                              f"(its metadata has no model configuration)")
    model = cls.from_json(config, backend=backend or "numpy", unknown=CheckpointError,
                          where=f"{path}: its model configuration is not one this scratchvae can build")
    check_arrays(path, arrays, {f"param/{k}": (s, model.dtype.name) for k, s in model.shapes.items()})
    params = {k[len("param/"):]: v for k, v in arrays.items() if k.startswith("param/")}
    bad = [k for k, v in params.items() if not np.isfinite(v).all()]
    if bad:
        raise CheckpointError(f"{path} holds non-finite parameters ({', '.join(bad)})")
    model.set_params(params)
    rng = meta.get("rng")
    if isinstance(rng, dict) and set(model.rng) <= set(rng):
        model.rng.set_state({k: np.array(rng[k], dtype=np.uint32) for k in model.rng})
    return model
