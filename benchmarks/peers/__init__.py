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


RANKED = "scratchvae-numba"
"""The peer that also runs on several MPI ranks (``--ranks``): scratchvae's best CPU configuration."""


def ranked(ranks, threads):
    """The name of :data:`RANKED` on ``ranks`` ranks of ``threads`` BLAS threads each: 'scratchvae-numba-2x1'."""
    return f"{RANKED}-{ranks}x{threads}"


def base_peer(name):
    """(the peer a name runs, ranks, BLAS threads per rank or None for the harness's own)."""
    base, _, shape = name.rpartition("-")
    if base == RANKED and "x" in shape:
        ranks, threads = shape.split("x")
        return base, int(ranks), int(threads)
    return name, 1, None


def peers_for(device):
    """The peers of a ``cpu`` or ``gpu`` run, in the order they are interleaved."""
    return [name for name, (_, dev) in PEERS.items() if dev in (device, "any")]
