"""The ``scratchvae`` command: train, evaluate, sample, plot, encode, decode, compare.

User errors (bad flags, bad files, bad data, a flag that does not apply) print one line,
``scratchvae: error: ...``, naming the flag, and exit with status 2; tracebacks are kept for
bugs. Every check that can fail runs before anything is written. The library never prints:
this package renders its callbacks.

==================  ===============================================================
``parser``          the verbs and their flags (train's from the configurations' fields)
``training``        train: a new run, --resume, --overwrite, an interrupt
``verbs``           evaluate, sample, plot, encode, decode, compare, and what they share
``render``          progress bars and the line per epoch
``console``         standard output and error that go quiet once their reader is gone
==================  ===============================================================

Under an MPI launcher (``mpiexec -n N scratchvae train ...``) every rank runs the command
(:mod:`scratchvae.comm`): train and evaluate share the work; sample, plot, encode, decode and
compare run on rank 0 alone and say so. Only rank 0 prints; a user error is one line there,
whichever rank met it, and every rank exits with its status. A failure on one rank alone (a
bug, whose traceback that rank prints) ends the job rather than leave the others waiting.
"""

from __future__ import annotations

import contextlib
import os
import sys

from ..errors import ScratchVAEError
from .parser import EXIT_INTERRUPTED, EXIT_USAGE, build_parser
from .render import Progress, _Progress, format_epoch  # noqa: F401  (public here: tests and callers render with them)
from .training import cmd_train
from .verbs import cmd_compare, cmd_decode, cmd_encode, cmd_evaluate, cmd_plot, cmd_sample, on_rank_zero

COMMANDS = {"train": cmd_train, "evaluate": cmd_evaluate,
            **{verb: on_rank_zero(verb, cmd) for verb, cmd in (("sample", cmd_sample), ("plot", cmd_plot),
                                                             ("encode", cmd_encode), ("decode", cmd_decode),
                                                             ("compare", cmd_compare))}}


def main(argv=None):
    from .console import quiet_when_closed

    argv = sys.argv[1:] if argv is None else list(argv)
    with quiet_when_closed():      # a closed pipe (scratchvae train | head -1) ends no run
        comm = _ranks()
        if comm is None:
            return EXIT_USAGE
        if comm.size == 1:
            return _run_command(argv, comm)
        with _rank_zero_prints(comm):
            return _on_ranks(argv, comm)


def _ranks():
    """The ranks this command runs among (:func:`scratchvae.comm.world`), or None after saying
    (on the launcher's rank 0 only) why there are none."""
    from ..comm import launched_rank, world

    try:
        return world()
    except ScratchVAEError as e:
        if launched_rank() == 0:
            print(f"scratchvae: error: {e}", file=sys.stderr)
        return None


def _on_ranks(argv, comm):
    """The command on one of several ranks: leave with the others (see the package docstring)."""
    import traceback

    status = 1
    try:
        status = _run_command(argv, comm)
    except BaseException as e:
        if comm.rank and isinstance(e, Exception):            # a bug's traceback, from where it was
            print(f"scratchvae: rank {comm.rank}:\n{traceback.format_exc()}", file=sys.__stderr__, flush=True)
        comm.leave(failed=True)
        raise
    comm.leave(failed=status != 0)
    return status


@contextlib.contextmanager
def _rank_zero_prints(comm):
    """Standard output and error to the null device on every rank but 0."""
    if comm.rank == 0:
        yield
        return
    saved = sys.stdout, sys.stderr
    with open(os.devnull, "w") as null:
        sys.stdout = sys.stderr = null
        try:
            yield
        finally:
            sys.stdout, sys.stderr = saved


def _run_command(argv, comm):
    a = build_parser().parse_args(argv)
    a.argv, a.given, a.comm = argv, getattr(a, "given", frozenset()), comm
    try:
        return COMMANDS[a.command](a)
    except ScratchVAEError as e:
        msg = " ".join(str(e).split())
        print(f"scratchvae: error: {msg}", file=sys.stderr)
        return EXIT_USAGE
    except MemoryError as e:      # sizes a user asked for (--latent 10**11) that do not fit
        print(f"scratchvae: error: not enough memory: {' '.join(str(e).split())}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("scratchvae: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
