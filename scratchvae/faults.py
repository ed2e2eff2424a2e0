"""Named crash points, so tests can kill the process at an exact moment.

A test sets the environment variable ``SCRATCHVAE_FAULT`` and runs scratchvae in a
subprocess; when execution reaches the matching point the process sends itself SIGKILL —
no ``finally`` blocks, no atexit handlers, no flushed buffers: as close to a power cut as a
test can get. With the variable unset every point is a no-op costing one dict lookup.

Names
-----
``after-temp-write``
    :func:`scratchvae.checkpoint.save_checkpoint`: the temporary file is fully written and
    fsync'ed but not yet renamed onto the checkpoint's name.
``before-rename``
    :func:`scratchvae.checkpoint.save_checkpoint`: immediately before ``os.replace``.
``mid-epoch:N``
    the training loop calls :func:`mid_epoch_step` with the global step (batches done since
    the run began); the process dies when that step equals ``N``.
``before-metrics:E``
    the training loop: epoch ``E``'s checkpoint is written, its row not yet appended to
    ``metrics.jsonl`` (resuming rebuilds the row from the checkpoint).
``before-swap``
    ``train --overwrite``: the new run is complete, the old one not yet replaced.

The variable is read on every call, so a test may set it between two calls in the same
process (save a good checkpoint, set the fault, save again and die).
"""

import os
import signal

from .errors import InputError

ENV_VAR = "SCRATCHVAE_FAULT"
_MID_EPOCH = "mid-epoch:"


def _die():
    os.kill(os.getpid(), signal.SIGKILL)


def point(name):
    """Kill this process with SIGKILL if ``SCRATCHVAE_FAULT`` equals ``name``."""
    if os.environ.get(ENV_VAR) == name:
        _die()


def mid_epoch_step(step):
    """Kill this process with SIGKILL if ``SCRATCHVAE_FAULT`` is ``mid-epoch:<step>``."""
    spec = os.environ.get(ENV_VAR)
    if spec is None or not spec.startswith(_MID_EPOCH):
        return
    value = spec[len(_MID_EPOCH):]
    try:
        target = int(value)
    except ValueError:
        raise InputError(
            f"{ENV_VAR} must be 'mid-epoch:N' with an integer step N, got {spec!r}"
        ) from None
    if step == target:
        _die()
