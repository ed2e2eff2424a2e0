"""The command line's rendering: the library's callbacks as a progress bar and one line per epoch.

The library never prints; :class:`Progress` renders what :func:`scratchvae.train.fit`,
evaluation and downloads report (a tqdm bar on a terminal, cleared before anything else is
printed), and :func:`format_epoch` writes an epoch's metrics row as its line.
"""

from __future__ import annotations

import sys


# -- rendering ------------------------------------------------------------------------------

class Progress:
    """Renders the library's callbacks. On a terminal (stderr) and unless ``quiet``: a tqdm bar
    per epoch from its first step, with rate and ETA (also for downloads and evaluate's
    importance sampling), cleared before anything else is printed. Always: one labelled line
    per epoch on stdout. Use it as a context manager, so the bar is gone before an error shows."""

    def __init__(self, quiet, err=None, out=None):
        self.err, self.out = err or sys.stderr, out or sys.stdout
        self.bars = not quiet and self.err.isatty()
        self.bar, self.key = None, None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        if self.bar is not None:
            self.bar.close()
            self.bar, self.key = None, None

    def _bar(self, key, total, initial=0, **kw):
        if self.key != key:
            from tqdm import tqdm

            self.close()
            self.bar = tqdm(total=total, initial=initial, leave=False, file=self.err, dynamic_ncols=True, **kw)
            self.key = key
        return self.bar

    def __call__(self, event, info):
        """fit's callback (see scratchvae.train)."""
        if event == "batch" and self.bars:
            name = f"{info['model']} " if "model" in info else ""
            bar = self._bar((name, info["epoch"]), info["batches"], info["batch"], unit="batch",
                            desc=f"{name}epoch {info['epoch']}/{info['epochs']}")
            if info["batch"] > bar.n:
                bar.update(info["batch"] - bar.n)
        elif event == "epoch":
            self.say(format_epoch(info))
        elif event == "graph" and not info.get("enabled", True):
            self.say(f"scratchvae: CUDA graph off ({info['reason']}); training eagerly", err=True)

    def images(self, done, total):
        """evaluate's importance-sampling progress: ``done`` of ``total`` test images."""
        if self.bars:
            bar = self._bar("log p(x)", total, unit="image", desc="log p(x)")
            bar.update(done - bar.n)

    def download(self, done, total):
        """A download's progress in bytes (a new bar for each file)."""
        if self.bars:
            if done == 0:
                self.close()
            bar = self._bar("download", total, unit="B", unit_scale=True, desc="download")
            bar.update(done - bar.n)

    def say(self, text, err=False):
        """Print a line (stdout, or stderr with ``err``), the bar cleared first."""
        self.close()
        print(text, file=self.err if err else self.out, flush=True)


def format_epoch(row):
    """One epoch's line: the loss per image on train and test as the model's objective labels it
    (``row["objective"]``, as fit's "epoch" event gives it; without one, the ELBO's), and time.

    The ELBO (and KL-only) writes its equation, ``−ELBO = recon + KL``; a loss that is not their
    sum (the importance-weighted −L_K) stands alone, beside one z's recon and KL (no equation:
    they are not its parts); a loss without a KL term (a plain autoencoder's reconstruction) has no KL.
    With several stochastic layers the test KL is followed by each layer's part of it (h1 + h2 …).
    """
    total = row.get("epochs")
    at = f"{row['epoch']:>{len(str(total))}}/{total}" if total else f"{row['epoch']:>3}"
    s = f"epoch {at}  " + _split_loss(row, "train", row.get("objective"))
    if "test_loss" in row:
        s += "  " + _split_loss(row, "test", row.get("objective"))
    s += f"  {row['seconds']:6.1f} s"
    return f"{row['model']:8s} {s}" if "model" in row else s


def _split_loss(row, split, objective):
    """``train −ELBO 1.000 = recon 0.900 + KL 0.100`` (or its objective's way of saying it)."""
    label = "−ELBO" if objective is None else objective.label
    loss, recon, kl = (row[f"{split}_{key}"] for key in ("loss", "recon", "kl"))
    text = f"{split} {label} {loss:9.3f}"
    if objective is not None and not objective.records_kl:
        return text
    layers = row.get(f"{split}_kl_layers")
    by_layer = "" if not layers else " (" + " + ".join(f"h{l} {v:.3f}" for l, v in enumerate(layers, 1)) + ")"
    if objective is None or objective.adds_up:
        return f"{text} = recon {recon:9.3f} + KL {kl:7.3f}{by_layer}"
    return f"{text} ({objective.parts} recon {recon:9.3f}, KL {kl:7.3f}{by_layer})"


_Progress = Progress   # the name tests and older callers use
