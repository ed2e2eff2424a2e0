"""``scratchvae compare``: a plain AE, a KL-only model and a VAE, side by side.

Sits above training and evaluation (it trains three models with :func:`~scratchvae.train.fit`
and scores them with :mod:`scratchvae.evaluate`); the figure is drawn by
:func:`scratchvae.plots.comparison_figure`. Given a ``run_dir``, it is written like a run::

    DIR/AE/, DIR/KL-only/, DIR/VAE/   each model's run: config.json, metrics.jsonl (with the
                                      test loss), checkpoints/ holding its final checkpoint
    DIR/compare.json                  the settings, the probe accuracies, the figures (compare.png
                                      and compare-posteriors.png), what the caller adds
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .checkpoint import write_text
from .errors import InputError
from .evaluate import PROBE_TRAIN_LIMIT, _positive, encode_mean, linear_probe
from .inputs import prepare_images
from .train import TrainConfig, fit

COMPARE_MODELS = (("AE", "ae"), ("KL-only", "kl-only"), ("VAE", "vae"))
COMPARE_GRID = 10               # the comparison decodes a COMPARE_GRID² set of prior draws


def _check_one_layer(hidden):
    if any(isinstance(h, (tuple, list)) for h in hidden):
        raise InputError("hidden: the comparison's models have one stochastic layer (a 2-D latent, and an AE and "
                         "a KL-only model have no chain of layers): expected one group of sizes like (400,) or "
                         f"(512, 256), got {tuple(tuple(h) if isinstance(h, (tuple, list)) else h for h in hidden)}")


def compare_models(train, test, *, epochs, batch_size, hidden, lr, seed, backend, out,
                   callback=None, probe_limit=PROBE_TRAIN_LIMIT, run_dir=None, run_info=None) -> dict:
    """Train a plain AE, a KL-only model and a VAE (latent 2, Bernoulli, ReLU) on the same
    data and draw their latent spaces and prior decodes side by side.

    Each model: ``fit`` with the test −ELBO per epoch; its test μ codes with labels; the
    linear-probe accuracy (μ codes of up to ``probe_limit`` train images -> test labels); and
    the decodes of the same COMPARE_GRID² codes z ~ N(0, I), drawn once from the 'eval'
    stream of a model seeded with ``seed`` (all three share it). ``callback(event, info)``
    gets fit's events with ``info["model"]`` naming the model. Writes the figure with
    :func:`scratchvae.plots.comparison_figure` to ``out``; with ``run_dir`` (absent or empty)
    also each model's run and compare.json (see the module docstring), ``run_info`` entries
    added to both.

    Beside it, ``<out stem>-posteriors<suffix>``: the three models' test posteriors
    (:func:`scratchvae.plots.posterior_figure`: ellipses for the VAEs, points for the AE).

    Returns {"probe_accuracy": {name: float}, "figure": str(out), "posterior_figure": str,
    "history": {name: rows}}.
    """
    _check_one_layer(hidden)
    if train.labels is None or test.labels is None:
        raise InputError("the comparison colours codes by label and scores a linear probe: it needs "
                         "labelled data, got unlabelled images")
    cfg = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr).validate()
    probe_limit = _positive("probe_limit", probe_limit)
    from .model import VAE

    results, history, models, z = {}, {}, {}, None
    for name, mode in COMPARE_MODELS:
        model = VAE(input_dim=train.images.shape[1], hidden=hidden, latent=2, activation="relu",
                    likelihood="bernoulli", mode=mode, seed=seed, backend=backend)
        if z is None:   # before fit's test evaluations draw from the same stream
            z = model.rng["eval"].normal((COMPARE_GRID * COMPARE_GRID, model.latent), model.dtype.name)
        cb = None
        if callback is not None:
            cb = (lambda nm: lambda event, info: callback(event, {**info, "model": nm}))(name)
        history[name] = fit(model, train.images, test.images, config=cfg, callback=cb, keep=1, keep_best=False,
                            run_dir=None if run_dir is None else Path(run_dir) / name, run_info=run_info)
        models[name] = model
        xtr = prepare_images(train.images[:probe_limit], model, "train")
        xte = prepare_images(test.images, model, "test")
        codes = encode_mean(model, xte)
        acc = linear_probe(encode_mean(model, xtr), train.labels[:probe_limit], codes, test.labels)
        results[name] = {"codes": model.backend.to_host(codes), "image_shape": test.image_shape,
                         "labels": np.asarray(test.labels), "classes": test.classes,
                         "decodes": model.backend.to_host(model.decode_mean(z)),
                         "probe_accuracy": acc}
    from .plots import comparison_figure, posterior_figure

    comparison_figure(results, out)
    posteriors = Path(out).with_name(f"{Path(out).stem}-posteriors{Path(out).suffix}")
    posterior_figure(models, test, posteriors)
    res = {"probe_accuracy": {k: v["probe_accuracy"] for k, v in results.items()},
           "figure": str(out), "posterior_figure": str(posteriors), "history": history}
    if run_dir is not None:
        settings = {"epochs": epochs, "batch_size": batch_size, "hidden": list(hidden), "lr": lr, "seed": seed,
                    "backend": model.backend.name, "probe_limit": probe_limit}
        _write_summary(Path(run_dir), (Path(out), posteriors), settings, res["probe_accuracy"], run_info)
    return res


def _write_summary(run_dir, figures, settings, accuracy, run_info):
    """DIR/compare.json: the settings, the probe accuracies, the runs and the figures (relative to
    DIR): ``figure`` the comparison, ``figures`` it and the posteriors'."""
    names = [str(f.relative_to(run_dir) if f.is_relative_to(run_dir) else f) for f in figures]
    doc = {"settings": settings, "probe_accuracy": accuracy, "runs": [name for name, _ in COMPARE_MODELS],
           "figure": names[0], "figures": names, **(run_info or {})}
    write_text(run_dir / "compare.json", json.dumps(doc, indent=2) + "\n")
