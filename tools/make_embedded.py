"""Build scratchvae/data/mnist_embedded.npz: a class-stratified, seeded subset of MNIST.

    python tools/make_embedded.py --mnist-dir /path/to/mnist --out scratchvae/data/mnist_embedded.npz

Reads the four MNIST IDX files (raw or .gz), checks each against the pinned SHA-256 of its
decompressed bytes, then for every digit draws without replacement (numpy PCG64, ``--seed``)
500 training images from the train file and 100 from the test file. Each split keeps the
source order (indices sorted). Writes, with ``np.savez_compressed``: ``train_images`` (5000, 784)
uint8, ``train_labels`` (5000,) uint8, ``test_images`` (1000, 784), ``test_labels`` (1000,),
``train_indices`` / ``test_indices`` (int32 positions in the source files) and ``seed``.
The same inputs and seed give byte-identical output.
"""

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from scratchvae.data.datasets import find_idx_files, load_idx_split  # noqa: E402
from scratchvae.data.download import SHA256, payload_sha256  # noqa: E402


def stratified_indices(labels, per_class, rng):
    """Sorted indices with ``per_class`` of each label 0..9, drawn without replacement."""
    picks = []
    for c in range(10):
        pool = np.flatnonzero(labels == c)
        if len(pool) < per_class:
            raise SystemExit(f"label {c}: expected at least {per_class} examples, got {len(pool)}")
        picks.append(rng.choice(pool, size=per_class, replace=False))
    return np.sort(np.concatenate(picks)).astype(np.int32)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mnist-dir", required=True, type=Path)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--train-per-class", type=int, default=500)
    ap.add_argument("--test-per-class", type=int, default=100)
    args = ap.parse_args(argv)

    found, missing = find_idx_files(args.mnist_dir)
    if missing:
        raise SystemExit(f"--mnist-dir {args.mnist_dir}: missing {', '.join(missing)}")
    for name, path in found.items():
        got = payload_sha256(path)
        if got != SHA256["mnist"][name]:
            raise SystemExit(f"{path}: SHA-256 of decompressed bytes: expected "
                             f"{SHA256['mnist'][name]}, got {got}")
    train = load_idx_split(found["train-images-idx3-ubyte"], found["train-labels-idx1-ubyte"], "mnist-train")
    test = load_idx_split(found["t10k-images-idx3-ubyte"], found["t10k-labels-idx1-ubyte"], "mnist-test")

    rng = np.random.default_rng(args.seed)
    tr = stratified_indices(train.labels, args.train_per_class, rng)
    te = stratified_indices(test.labels, args.test_per_class, rng)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        args.out,
        train_images=train.images[tr], train_labels=train.labels[tr],
        test_images=test.images[te], test_labels=test.labels[te],
        train_indices=tr, test_indices=te, seed=np.int64(args.seed),
    )
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes): {len(tr)} train, {len(te)} test")


if __name__ == "__main__":
    main()
