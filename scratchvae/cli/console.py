"""Standard output and error of the command line, for a reader that may go away.

``scratchvae train --epochs 5 | head -1`` closes the pipe after one line. Python ignores
SIGPIPE, so the next write raises :class:`BrokenPipeError`: uncaught, it would end the run
with a traceback. While :func:`quiet_when_closed` holds, a stream whose reader is gone drops
what is written to it instead, and the command carries on: the run trains to its end, and
what goes to the other stream (progress and errors on stderr) is still written while that one
is open.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys


class QuietWhenClosed:
    """A text stream that, once a write or flush finds its reader gone (EPIPE), drops everything
    written to it instead of raising. Its file descriptor then points to the null device, so the
    interpreter's last flush at exit finds nowhere to fail either."""

    def __init__(self, stream):
        self._stream, self.gone = stream, False

    def write(self, text):
        self._guarded(self._stream.write, text)
        return len(text)

    def flush(self):
        self._guarded(self._stream.flush)

    def _guarded(self, call, *args):
        if self.gone:
            return
        try:
            call(*args)
        except BrokenPipeError:
            self.gone = True
            with contextlib.suppress(OSError, ValueError, AttributeError, io.UnsupportedOperation):
                null = os.open(os.devnull, os.O_WRONLY)
                try:
                    os.dup2(null, self._stream.fileno())
                finally:
                    os.close(null)

    def __getattr__(self, name):          # isatty, encoding, fileno, ...: the stream's own
        return getattr(self._stream, name)


@contextlib.contextmanager
def quiet_when_closed():
    """``sys.stdout`` and ``sys.stderr`` as :class:`QuietWhenClosed` streams for the block."""
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = QuietWhenClosed(sys.stdout), QuietWhenClosed(sys.stderr)
    try:
        yield
    finally:
        sys.stdout, sys.stderr = saved
