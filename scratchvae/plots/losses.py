"""The training curves of a run's history (see :mod:`scratchvae.plots`)."""

from __future__ import annotations

from pathlib import Path

from ..errors import InputError
from .frame import _drawing


# -- 8 loss curves ---------------------------------------------------------------------------------------
def loss_figure(history, path, title="", loss=None):
    """Per-epoch train and test −ELBO, reconstruction and KL (nats per image) from a run's history;
    ``loss`` names the first panel if its loss is not the −ELBO (an importance-weighted run's −L_K)."""
    if not history:
        raise InputError("history is empty: no epoch has finished yet")
    epochs = [r["epoch"] for r in history]
    with _drawing("losses", path=path) as (plt, fig):
        axes = fig.subplots(1, 3)
        for ax, key, name in zip(axes, ("loss", "recon", "kl"),
                                 (loss or "−ELBO (recon + KL)", "reconstruction −log p(x|z)", "KL(q(z|x) ‖ p(z))")):
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
