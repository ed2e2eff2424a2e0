"""A model in one file: VAE.save / VAE.load, and VAE.load of a run's checkpoint."""

import numpy as np
import pytest

from scratchvae import VAE
from scratchvae.errors import CheckpointError, InputError
from scratchvae.train import TrainConfig, fit, load_run


@pytest.mark.parametrize("kw", [{}, {"likelihood": "gaussian", "sigma": "per-pixel", "latent": 3},
                                {"posterior": "full", "latent": 3}, {"mode": "ae", "dtype": "float64"}])
def test_save_and_load_give_the_same_model(kw, tmp_path):
    m = VAE(input_dim=12, hidden=(5,), seed=4, **{"latent": 2, **kw})
    m.theta[...] += np.linspace(-1, 1, m.theta.size).astype(m.dtype)     # not the initial values
    m.rng["eval"].normal(3, "float64")                                  # a stream has moved on
    path = m.save(tmp_path / "model.npz")
    back = VAE.load(path)
    assert back.config() == m.config() and back.dtype == m.dtype
    for name in m.params:
        np.testing.assert_array_equal(back.params[name], m.params[name])
    for name in m.rng:
        np.testing.assert_array_equal(back.rng.state()[name], m.rng.state()[name])
    x = np.random.default_rng(0).uniform(size=(3, 12)).astype(m.dtype)
    np.testing.assert_array_equal(back.decode_mean(back.encode(x)[0]), m.decode_mean(m.encode(x)[0]))
    with np.load(path, allow_pickle=False) as z:                        # plain numeric arrays only
        assert not [k for k in z.files if k.startswith("optim/")] and "param/dec.out.W" in z.files


def test_load_reads_a_runs_checkpoint(tmp_path):
    x = np.random.default_rng(1).integers(0, 256, (60, 16), dtype=np.uint8)
    m = VAE(input_dim=16, hidden=(4,), latent=2, seed=2)
    fit(m, x, config=TrainConfig(epochs=1, batch_size=20), run_dir=tmp_path / "run")
    path = sorted((tmp_path / "run" / "checkpoints").iterdir())[-1]
    back = VAE.load(path)
    np.testing.assert_array_equal(back.theta, load_run(tmp_path / "run").model.theta)
    assert back.config() == m.config()


def test_load_refuses_what_is_not_a_model(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        VAE.load(tmp_path / "missing.npz")
    np.savez(tmp_path / "arrays.npz", a=np.zeros(3))
    with pytest.raises(CheckpointError, match="no __meta__ entry"):
        VAE.load(tmp_path / "arrays.npz")
    from scratchvae.checkpoint import save_checkpoint

    save_checkpoint(tmp_path / "other.npz", {"a": np.zeros(2)}, {"something": 1})
    with pytest.raises(CheckpointError, match="neither a saved scratchvae model nor a run's checkpoint"):
        VAE.load(tmp_path / "other.npz")
    m = VAE(input_dim=6, hidden=(3,), latent=2)
    path = m.save(tmp_path / "m.npz")
    from scratchvae.checkpoint import load_checkpoint

    arrays, meta = load_checkpoint(path)
    arrays["param/enc.0.W"] = arrays["param/enc.0.W"][:2]
    save_checkpoint(tmp_path / "cut.npz", arrays, meta)
    with pytest.raises(CheckpointError, match=r"param/enc.0.W: expected shape \(6, 3\) float32, got \(2, 3\)"):
        VAE.load(tmp_path / "cut.npz")
    meta["model"]["activation"] = "swish"
    arrays["param/enc.0.W"] = np.zeros((6, 3), np.float32)
    save_checkpoint(tmp_path / "act.npz", arrays, meta)
    with pytest.raises(InputError, match="activation must be one of"):
        VAE.load(tmp_path / "act.npz")
    meta["model"]["activation"], meta["model"]["wings"] = "relu", 2
    save_checkpoint(tmp_path / "wings.npz", arrays, meta)
    with pytest.raises(CheckpointError, match="not one this scratchvae can build"):
        VAE.load(tmp_path / "wings.npz")
