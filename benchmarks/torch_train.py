"""The 10-epoch MNIST run of ``scratchvae train`` written in PyTorch, for the training race.

    python -m benchmarks.torch_train --data-dir DIR --epochs 10 \\
        --batch-size 128 --hidden 400 --latent 20 --lr 1e-3 --out runs/torch-run

does what ``scratchvae train --dataset mnist --data-dir DIR --epochs 10 --batch-size 128
--hidden 400 --latent 20 --lr 1e-3`` does, the PyTorch way:

- the same IDX files read by the same loader (``scratchvae.data.load_dataset``: from DIR, else
  ``$SCRATCHVAE_MNIST_DIR``, else scratchvae's cache with its checksummed download), pixels / 255
  in float32, preloaded as tensors (no DataLoader);
- the same model (:func:`benchmarks.peers.torch_peer.build`: 784-400-20-400-784, ReLU, fused
  μ/logvar head, Bernoulli on logits, summed −ELBO), ``nn.Linear``'s default initialisation
  (the distribution scratchvae copies), ``Adam(lr, foreach=True)``, 2 threads;
- every epoch a new shuffle (``torch.randperm``), batches of 128 with the last partial batch
  kept (469 steps), the epoch's training loss summed on the device and read once;
- after every epoch the test −ELBO with z sampled (batches of 1000, like scratchvae's
  evaluation), a checkpoint of the model and optimizer (``torch.save``) and a metrics line,
  as ``scratchvae train`` writes a checkpoint and ``metrics.jsonl`` per epoch.

It prints one line per epoch (train/test loss per sample, seconds) like scratchvae does.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from .common import L, PARAM_SHAPES, THREADS, load_mnist
from .common import H as DEFAULT_H

EVAL_BATCH = 1000


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.torch_train",
                                description="scratchvae train's MNIST loop in PyTorch (CPU)")
    p.add_argument("--data-dir", help="folder holding the four MNIST IDX files (default "
                                      "$SCRATCHVAE_MNIST_DIR, else scratchvae's cache, filled by a "
                                      "checksummed download)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--hidden", type=int, default=DEFAULT_H, help="only 400 is supported (the benchmark model)")
    p.add_argument("--latent", type=int, default=L, help="only 20 is supported (the benchmark model)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="run folder for checkpoints and metrics.jsonl (default: a temporary one)")
    a = p.parse_args(argv)
    if a.hidden != DEFAULT_H or a.latent != L:
        p.error(f"--hidden {DEFAULT_H} --latent {L} is the model this loop implements, "
                f"got --hidden {a.hidden} --latent {a.latent}")
    return a


def main(argv=None):
    a = parse_args(argv)
    import torch

    from .peers.torch_peer import build

    torch.set_num_threads(THREADS)
    torch.manual_seed(a.seed)
    train, test, _ = load_mnist(a.data_dir)
    xtrain = torch.from_numpy(train.images.astype(np.float32) / np.float32(255))
    xtest = torch.from_numpy(test.images.astype(np.float32) / np.float32(255))

    # nn.Linear's default initialisation: build() copies parameters in, so hand it fresh ones
    init = {k: np.zeros(s, dtype=np.float32) for k, s in PARAM_SHAPES.items()}
    model = build(torch, torch.float32, torch.device("cpu"), init)
    for m in model.modules():
        if isinstance(m, torch.nn.Linear):
            m.reset_parameters()
    opt = torch.optim.Adam(model.parameters(), lr=a.lr, foreach=True)
    out = Path(a.out) if a.out else Path(tempfile.mkdtemp(prefix="torch-train-"))
    (out / "checkpoints").mkdir(parents=True, exist_ok=True)
    print(f"training torch {torch.__version__} VAE on mnist ({len(xtrain)} train, {len(xtest)} test) "
          f"-> {out}", flush=True)

    n, B = len(xtrain), a.batch_size
    n_batches = math.ceil(n / B)
    for epoch in range(1, a.epochs + 1):
        t0 = time.perf_counter()
        model.train()
        perm = torch.randperm(n)
        total = torch.zeros((), dtype=torch.float64)
        for bi in range(n_batches):
            xb = xtrain[perm[bi * B:(bi + 1) * B]]
            eps = torch.randn(xb.shape[0], L)
            loss = model(xb, eps)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.detach()
        train_loss = float(total) / n
        if not math.isfinite(train_loss):
            print(f"the loss became non-finite in epoch {epoch}", file=sys.stderr)
            return 1
        model.eval()
        test_total = torch.zeros((), dtype=torch.float64)
        with torch.no_grad():
            for i in range(0, len(xtest), EVAL_BATCH):
                xb = xtest[i:i + EVAL_BATCH]
                test_total += model(xb, torch.randn(xb.shape[0], L))
        test_loss = float(test_total) / len(xtest)
        torch.save({"model": model.state_dict(), "optim": opt.state_dict(), "epoch": epoch},
                   out / "checkpoints" / f"epoch-{epoch:04d}.pt")
        row = {"epoch": epoch, "train_loss": train_loss, "test_loss": test_loss,
               "seconds": time.perf_counter() - t0}
        with open(out / "metrics.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        print(f"epoch {epoch:3d}  train {train_loss:9.3f}  test {test_loss:9.3f}  {row['seconds']:6.1f}s",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
