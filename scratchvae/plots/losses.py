"""The training curves of a run's history (see :mod:`scratchvae.plots`)."""

from __future__ import annotations

from pathlib import Path

from ..errors import InputError
from .frame import _drawing

RECON, KL = "reconstruction −log p(x|z)", "KL(q(z|x) ‖ p(z))"


def loss_panels(objective=None):
    """[(metrics key, panel title)] of a run whose model has ``objective`` (None: the ELBO's):
    its loss as the objective names it at length, then its reconstruction and KL columns where
    they are more than the loss itself: the ELBO's two terms; beside a bound, one z's terms; a
    plain autoencoder's loss is its reconstruction, and it has no KL."""
    if objective is None:
        return [("loss", "−ELBO (recon + KL)"), ("recon", RECON), ("kl", KL)]
    if not objective.records_kl:
        return [("loss", objective.long_label)]
    one_z = "" if objective.adds_up else ", one z"
    return [("loss", objective.long_label), ("recon", RECON + one_z), ("kl", KL + one_z)]


# -- 8 loss curves ---------------------------------------------------------------------------------------
def loss_figure(history, path, title="", objective=None):
    """Per-epoch train and test losses (nats per image) from a run's history, one panel each of
    :func:`loss_panels` (``objective``: the run's model's, which names them); the figure is
    ``FIGSIZE["losses"]`` wide per panel."""
    if not history:
        raise InputError("history is empty: no epoch has finished yet")
    epochs, panels = [r["epoch"] for r in history], loss_panels(objective)
    with _drawing("losses", len(panels), path=path) as (plt, fig):
        axes = fig.subplots(1, len(panels), squeeze=False)[0]
        for ax, (key, name) in zip(axes, panels):
            for split, style in (("train", "o-"), ("test", "s--")):
                ys = [r.get(f"{split}_{key}") for r in history]
                if all(y is not None for y in ys):
                    ax.plot(epochs, ys, style, markersize=4, label=split)
            ax.set_title(name, fontsize=10)
            ax.set_xlabel("epoch")
            ax.set_ylabel("nats per image")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
            ax.xaxis.get_major_locator().set_params(integer=True)
        fig.suptitle(f"Training curves{' — ' + title if title else ''}", fontsize=11)
    return Path(path)
