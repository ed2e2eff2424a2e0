"""A folder written safely: one writer at a time, and a new folder that appears whole.

:class:`WriterLock` (and :func:`writing`, its context manager) is one writer per folder: an
exclusive ``fcntl.flock`` on FOLDER/.lock, which the operating system releases with its process
however the process ends. :func:`staged_dir` fills a hidden sibling and renames it onto the
new folder once complete, removing first what killed processes left staged beside it. A run
directory (:mod:`scratchvae.runs`) is written with both.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

try:
    import fcntl
except ImportError:            # no flock (Windows): there one writer per folder is not enforced
    fcntl = None

from .checkpoint import remove_stale_temps, temp_path
from .errors import InputError, ScratchVAEError

LOCK = ".lock"
"""A folder's writer lock (see :class:`WriterLock`); there while a process writes the folder."""


_HELD = {}
"""The writer locks this process holds: the real path of the run folder -> its WriterLock."""


def _same_file(fd, path):
    """Whether the open file ``fd`` is the one at ``path`` (not one unlinked or replaced since)."""
    try:
        here, there = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)


class WriterLock:
    """One writer per run folder: an exclusive ``fcntl.flock`` on RUN/.lock, taken by every command
    that writes the run and held until it ends (readers take none).

    The file holds the holder's PID, so a second writer is refused naming it. The lock is the
    operating system's, released when its process ends however it ends: the file a killed writer
    leaves, and the PID in it (perhaps another process's by now), block no one. The holder removes
    the file when it lets go; whoever opened it just before checks, once locked, that it is still
    the file at RUN/.lock. A process taking a lock it holds already gets that one back (its
    :meth:`release` then only undoes this :meth:`acquire`).
    """

    def __init__(self, folder):
        self.folder, self.fd, self.depth = Path(folder), None, 0

    def acquire(self):
        """Take the lock (or count another use of the one this process holds); returns the holder."""
        held = _HELD.get(os.path.realpath(self.folder))
        if held is not None:
            held.depth += 1
            return held
        if not self.folder.is_dir():
            raise InputError(f"{self.folder} is not a scratchvae run: there is no such folder")
        if fcntl is None:
            return self
        path = self.folder / LOCK
        while self.fd is None:
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as err:
                raise InputError(f"cannot lock {self.folder} for writing: {err.strerror or err}") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                raise InputError(f"{self.folder} is being written by another process (PID {holder}): wait for "
                                 f"it to end or stop it (one process writes a run at a time)") from None
            if _same_file(fd, path):
                self.fd = fd
            else:                           # its holder removed it as we opened it: take the new one
                os.close(fd)
        os.ftruncate(self.fd, 0)
        os.write(self.fd, f"{os.getpid()}\n".encode())
        self.depth = 1
        _HELD[os.path.realpath(self.folder)] = self
        return self

    def moved(self, folder):
        """The locked folder was renamed to ``folder`` (its lock file with it)."""
        _HELD.pop(os.path.realpath(self.folder), None)
        self.folder = Path(folder)
        _HELD[os.path.realpath(self.folder)] = self

    def release(self):
        """Undo one :meth:`acquire`; the last removes RUN/.lock and lets go of the lock."""
        self.depth -= 1
        if self.depth > 0 or self.fd is None:
            return
        _HELD.pop(os.path.realpath(self.folder), None)
        if _same_file(self.fd, self.folder / LOCK):
            with contextlib.suppress(OSError):
                (self.folder / LOCK).unlink()
        os.close(self.fd)
        self.fd = None


@contextlib.contextmanager
def writing(folder):
    """Hold ``folder``'s writer lock (:class:`WriterLock`) for the block; yields the holder."""
    lock = WriterLock(folder).acquire()
    try:
        yield lock
    finally:
        lock.release()


@contextlib.contextmanager
def staged_dir(target, replace=False):
    """A new folder ``.<name>.tmp-<pid>`` beside ``target`` to fill; renamed onto ``target``
    (which must not exist, or be an empty folder) when the block completes, removed if the
    block fails. What killed processes left staged in that folder, whatever its name, is
    removed first. With ``replace``, a folder already at ``target`` is moved aside (to
    ``.<name>.old.tmp-<pid>``) once the block completes, the new one renamed in its place and
    the old one removed; if the block fails, it is untouched."""
    target = Path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(target.parent)
        tmp = temp_path(target)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    except OSError as err:
        raise InputError(f"cannot create {target}: {err.strerror or err}") from None
    try:
        yield tmp
        if replace and target.exists():
            trash = temp_path(target.with_name(f"{target.name}.old"))
            os.replace(target, trash)
            os.replace(tmp, target)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError):
            raise ScratchVAEError(f"could not create {target}: {exc.strerror or exc}") from None
        raise
