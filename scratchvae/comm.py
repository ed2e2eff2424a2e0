"""The ranks of a run: the one place that knows about them (mpi4py here; NCCL between GPUs later).

``mpiexec -n N scratchvae train ...`` starts N processes, the *ranks*. Each holds the whole
model, the optimizer and the data, takes its rows of every global batch, and sums its
gradient and its loss row with the others' (one in-place all-reduce each per step), so every
rank takes the same optimizer step. Rank 0 is the *writer*: config.json, metrics, checkpoints
and figures are its, and so are the run's lock and what the command line prints.

:func:`world` is the run's :class:`Solo` (one process: every method does nothing, or does it
for the one rank) or, under an MPI launcher that started more than one rank, an
:class:`MPIComm` over ``MPI.COMM_WORLD``. Nothing else in scratchvae imports mpi4py (the
``dist`` extra), and nothing here knows a model: the callers hand it arrays.

=========================  =========================================================================
``size``, ``rank``         how many ranks, and which this is; ``writer``: rank 0
``rows(n)``                this rank's rows [lo, hi) of n (the first n % size ranks one more)
``sum_(buf)``              buf = Σ over ranks of buf, in place (an all-reduce)
``any(flag)``              whether any rank's flag is set (a stop asked for by a signal)
``together()``             a block of checks: an error on any rank is raised on every rank
``same(digest, what)``     stop every rank with :class:`RanksDifferError` unless all digests agree
``leave(failed)``          at the end of a command: leave together, or end the job (see below)
``describe()``             what a run records: ranks, ranks per machine, BLAS threads
=========================  =========================================================================

Leaving. A rank that ends normally waits for the others. A rank that ends by an error waits up
to :data:`LEAVE_TIMEOUT` seconds: when every rank ends by it too (an error every rank raised
together: bad input agreed by :meth:`together`, a non-finite loss in the summed loss row, an
interrupt all agreed on), they leave together; otherwise the others are still at work or
waiting in a collective that will never complete, and the rank ends the whole job
(``MPI_Abort``) rather than leave it hanging. A rank killed outright ends the job through the
launcher (MPICH's Hydra ends the other ranks as soon as one dies).
"""

from __future__ import annotations

import contextlib
import os
import sys
import time

import numpy as np

from .backend import NUMPY
from .errors import InputError, ScratchVAEError

LAUNCHER_SIZE = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE")
"""Environment variables in which an MPI launcher (MPICH's Hydra or Slurm's PMI; Open MPI) gives
the number of ranks; no launcher, or one rank, is one process: mpi4py is not imported."""
LAUNCHER_RANK = ("PMI_RANK", "OMPI_COMM_WORLD_RANK")
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
LEAVE_TIMEOUT = 20.0
"""Seconds a rank that failed waits for the others to end too before it ends the job."""


class RanksDifferError(ScratchVAEError):
    """The ranks of a run hold different parameters or streams (they must step identically)."""


def _launcher(names, environ):
    for var in names:
        if environ.get(var, "").strip().isdigit():
            return int(environ[var])
    return None


def launched_size(environ=os.environ) -> int:
    """The number of ranks an MPI launcher started (1 without one)."""
    return _launcher(LAUNCHER_SIZE, environ) or 1


def launched_rank(environ=os.environ) -> int:
    """This process's rank as the launcher says it (0 without one): known before mpi4py loads."""
    return _launcher(LAUNCHER_RANK, environ) or 0


def share(n, size, rank):
    """Rows [lo, hi) of n that rank ``rank`` of ``size`` takes: contiguous, the first n % size
    ranks one more than the others (a rank may get none when n < size)."""
    base, extra = divmod(n, size)
    lo = rank * base + min(rank, extra)
    return lo, lo + base + (rank < extra)


class Solo:
    """One process: the run as it is without ranks."""

    size, rank, local_size = 1, 0, 1

    @property
    def writer(self):
        return self.rank == 0

    def rows(self, n):
        return share(n, self.size, self.rank)

    def sum_(self, buf):
        return buf

    def any(self, flag):
        return bool(flag)

    @contextlib.contextmanager
    def together(self):
        yield

    def same(self, digest, what):
        """Nothing to compare with one rank."""

    def leave(self, failed):
        """Nothing to wait for."""

    def describe(self):
        return {"ranks": 1}


SOLO = Solo()


class MPIComm(Solo):
    """The ranks of ``MPI.COMM_WORLD`` (mpi4py); see the module."""

    def __init__(self, mpi):
        self.MPI, self.comm = mpi, mpi.COMM_WORLD
        self.size, self.rank = self.comm.Get_size(), self.comm.Get_rank()
        self.local_size = self.comm.Split_type(mpi.COMM_TYPE_SHARED).Get_size()
        self._exit = self.comm.Dup()            # the leaving barrier, apart from the run's collectives
        self._flag = np.zeros(1, dtype=np.int8)
        self.threads = limit_threads(self.local_size)

    def sum_(self, buf):
        """buf = Σ_ranks buf, in place (a host array; a GPU's needs NCCL, not built yet)."""
        self.comm.Allreduce(self.MPI.IN_PLACE, buf, op=self.MPI.SUM)
        return buf

    def any(self, flag):
        """Whether any rank's flag is set: one all-reduce of one byte (every step, for a stop)."""
        self._flag[0] = bool(flag)
        self.comm.Allreduce(self.MPI.IN_PLACE, self._flag, op=self.MPI.MAX)
        return bool(self._flag[0])

    @contextlib.contextmanager
    def together(self):
        """Run the block on every rank; if it raised on any, raise on every rank: the same error
        where it was raised, elsewhere its class and message (rank 0's if it failed, else the
        first failing rank's, named). The block must hold no collective."""
        err = None
        try:
            yield
        except Exception as e:               # noqa: BLE001 — every rank must hear of it
            err = e
        gathered = self.comm.allgather(None if err is None else (type(err), str(err)))
        if err is not None:
            raise err
        failed = [(r, f) for r, f in enumerate(gathered) if f]
        if failed:
            origin, (cls, msg) = failed[0]
            raise _rebuilt(cls, msg if origin == 0 else f"on rank {origin}: {msg}")

    def same(self, digest, what):
        """Raise :class:`RanksDifferError` on every rank unless every rank's ``digest`` is rank 0's."""
        digests = self.comm.allgather(digest)
        differ = [r for r, d in enumerate(digests) if d != digests[0]]
        if differ:
            raise RanksDifferError(f"the ranks hold different {what}: rank(s) {', '.join(map(str, differ))} "
                                   f"differ from rank 0; the ranks must step identically (a bug: please report it)")

    def leave(self, failed):
        """See the module: wait for the others; a rank that failed alone ends the job."""
        request = self._exit.Ibarrier()
        if not failed:
            request.Wait()
            return
        deadline = time.monotonic() + LEAVE_TIMEOUT
        while not request.Test():
            if time.monotonic() > deadline:
                print(f"scratchvae: error: rank {self.rank} stopped while the other ranks went on; ending "
                      f"the job", file=sys.__stderr__, flush=True)
                self.comm.Abort(2)
            time.sleep(0.01)

    def describe(self):
        return {"ranks": self.size, "ranks_per_machine": self.local_size, **self.threads}


def _rebuilt(cls, msg):
    """Another rank's error as this rank raises it: its class where that takes a message alone."""
    if issubclass(cls, ScratchVAEError):
        with contextlib.suppress(Exception):
            return cls(msg)
        return ScratchVAEError(msg)
    return ScratchVAEError(f"{cls.__name__}: {msg}")


def limit_threads(local_size, environ=os.environ):
    """One BLAS thread per rank when the ranks fill the cores: cores // ranks on this machine
    (at least 1), unless a thread variable (``OMP_NUM_THREADS``, ...) says otherwise. Returns what a
    run records: ``blas_threads`` and the cores (threadpoolctl, of the ``dist`` extra, sets them)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    given = {v: environ[v] for v in THREAD_VARS if v in environ}
    if given:
        return {"blas_threads": "as the environment sets them", "cores": cores}
    threads = max(1, cores // max(1, local_size))
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return {"blas_threads": "the BLAS default (threadpoolctl is not installed)", "cores": cores}
    threadpool_limits(limits=threads, user_api="blas")
    NUMPY.set_blas_threads(threads)          # the first layer's twin chooses its path by it
    return {"blas_threads": threads, "cores": cores}


_WORLD = []


def world():
    """The ranks this process runs among: :data:`SOLO` unless an MPI launcher started several,
    then an :class:`MPIComm` (made once). InputError where mpi4py is missing for them."""
    if _WORLD:
        return _WORLD[0]
    size = launched_size()
    if size <= 1:
        return SOLO
    try:
        from mpi4py import MPI
    except ImportError as err:
        raise InputError(f"started on {size} ranks by an MPI launcher, but mpi4py does not import ({err}): "
                         f"install the 'dist' extra (pip install 'scratchvae[dist]')") from None
    _WORLD.append(MPIComm(MPI))
    return _WORLD[0]
