"""The peers the harness times: name -> (module, device). Each module has TASKS['check'|'time']."""

PEERS = {
    "scratchvae-numpy": ("benchmarks.peers.scratchvae_peer", "cpu"),
    "scratchvae-numba": ("benchmarks.peers.scratchvae_peer", "cpu"),
    "scratchvae-cupy": ("benchmarks.peers.scratchvae_peer", "gpu"),
    "scratchvae-cupy-graph": ("benchmarks.peers.scratchvae_peer", "gpu"),
    "torch-eager": ("benchmarks.peers.torch_peer", "any"),
    "torch-compile": ("benchmarks.peers.torch_peer", "any"),
    "torch-graph": ("benchmarks.peers.torch_peer", "any"),       # skips on the CPU: it needs CUDA
    "jax-jit": ("benchmarks.peers.jax_peer", "any"),
}


def peers_for(device):
    """The peers of a ``cpu`` or ``gpu`` run, in the order they are interleaved."""
    return [name for name, (_, dev) in PEERS.items() if dev in (device, "any")]
