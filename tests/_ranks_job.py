"""Training on ranks, for tests/test_ranks.py: run by ``mpiexec -n N python tests/_ranks_job.py OUT``
(or by the test itself in one process, for the reference). Each case trains a small model on
small data and writes, per rank, its parameters, streams and history to OUT/<case>-<rank>.npz
(or the error it stopped with)."""

import json
import sys
from pathlib import Path

import numpy as np

from scratchvae.comm import world
from scratchvae.config import TrainConfig
from scratchvae.errors import ScratchVAEError
from scratchvae.model import VAE
from scratchvae.train import fit

DATA = np.random.default_rng(0).integers(0, 256, size=(37, 12), dtype=np.uint8)
TEST = np.random.default_rng(1).integers(0, 256, size=(9, 12), dtype=np.uint8)
SMALL = dict(input_dim=12, hidden=(10,), latent=3, seed=5)
CASES = {   # name: (model settings, train settings); 37 rows of batch 8: the last batch has 5 (3 + 2)
    "elbo": ({}, dict(batch_size=8, binarize="dynamic", corrupt="gaussian:0.1", kl_warmup=1.0)),
    "iwae-full": (dict(objective="iwae", iw_samples=3, posterior="full"), dict(batch_size=8, corrupt="mask:0.2")),
    "ae-batch-1": (dict(mode="ae"), dict(batch_size=1)),                 # every step, a rank has no rows
    "two-layer-elbo": (dict(hidden=((10,), (6,)), latent=(3, 2)), dict(batch_size=8, binarize="dynamic")),
    "two-layer-iwae": (dict(hidden=((10,), (6,)), latent=(3, 2), objective="iwae", iw_samples=3),
                       dict(batch_size=8)),                              # each layer's ε as K row ranges
}
FAULTS = {  # name: what one rank does to itself at step 3 (the others train on)
    "nan-on-the-last-rank": lambda m: m.params["dec.out.b"].__setitem__(0, np.nan),
    "theta-differs-on-the-last-rank": lambda m: m.params["dec.out.b"].__setitem__(0, 0.125),
}


def run(name, comm):
    model_kw, train_kw = CASES.get(name, ({}, dict(batch_size=8)))
    m = VAE(**{**SMALL, **model_kw})
    fault = FAULTS.get(name)

    def poison(event, info):
        if fault is not None and event == "batch" and info["step"] == 3 and comm.rank == comm.size - 1:
            fault(m)
    history = fit(m, DATA, TEST, config=TrainConfig(epochs=2, **train_kw), callback=poison, report_every=1,
                  comm=comm)
    rng = m.rng.state()
    return {"theta": m.theta.copy(), "rng": np.stack([rng[k] for k in sorted(rng)]),
            "history": json.dumps(history)}


def main(out, names, comm):
    for name in names:
        try:
            result = run(name, comm)
        except ScratchVAEError as e:
            result = {"error": f"{type(e).__name__}: {e}"}
        np.savez(Path(out) / f"{name}-{comm.rank}.npz", **result)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:] or list(CASES) + list(FAULTS), world())
