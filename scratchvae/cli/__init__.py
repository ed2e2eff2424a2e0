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
"""

from __future__ import annotations

import sys

from ..errors import ScratchVAEError
from .parser import EXIT_INTERRUPTED, EXIT_USAGE, build_parser
from .render import Progress, _Progress, format_epoch  # noqa: F401  (public here: tests and callers render with them)
from .training import cmd_train
from .verbs import cmd_compare, cmd_decode, cmd_encode, cmd_evaluate, cmd_plot, cmd_sample

COMMANDS = {"train": cmd_train, "evaluate": cmd_evaluate, "sample": cmd_sample, "plot": cmd_plot,
            "encode": cmd_encode, "decode": cmd_decode, "compare": cmd_compare}


def main(argv=None):
    from .console import quiet_when_closed

    argv = sys.argv[1:] if argv is None else list(argv)
    with quiet_when_closed():      # a closed pipe (scratchvae train | head -1) ends no run
        return _run_command(argv)


def _run_command(argv):
    a = build_parser().parse_args(argv)
    a.argv, a.given = argv, getattr(a, "given", frozenset())
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
