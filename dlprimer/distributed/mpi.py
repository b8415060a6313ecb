"""MPI communicator through mpi4py: NumPy buffers, in-place ``Allreduce``.

MPI is the engine here; dlprimer only hands it whole contiguous buffers (one
gradient arena per param group) so each step is a few large messages rather
than one per parameter. Arrays of a device backend are staged through host
memory (the PyPI MPI builds are not CUDA-aware); the NCCL communicator is the
device-native path.

Failure handling, so a job never hangs silently:

* an uncaught exception on any rank prints its traceback, then a line naming
  the rank, and calls ``MPI_Abort``, which makes ``mpiexec`` end every rank;
* with ``timeout`` (or env ``DLPRIMER_DIST_TIMEOUT``, seconds), a watchdog
  thread aborts the job when one collective waits longer than that, i.e. when
  another rank is stuck or gone without the launcher noticing.
"""
from __future__ import annotations

import os
import sys
import threading
import time

from .comm import Communicator

# Seconds to let the launcher forward this rank's last stderr lines before
# MPI_Abort makes it kill every process (the lines are lost otherwise).
_FLUSH_GRACE = 0.25


def import_mpi():
    """``mpi4py.MPI``, or an ImportError saying how to install it."""
    try:
        from mpi4py import MPI
    except ImportError as e:
        raise ImportError(
            f"the MPI communicator needs mpi4py and an MPI library ({e}); install them "
            "with `pip install 'dlprimer[dist]'` (mpi4py plus MPICH from PyPI wheels)") from e
    return MPI


class _Watchdog(threading.Thread):
    """Aborts the MPI job when one collective has been waiting ``timeout`` seconds."""

    def __init__(self, comm, timeout: float):
        super().__init__(name="dlprimer-comm-watchdog", daemon=True)
        self.comm = comm
        self.timeout = float(timeout)
        self.op = None
        self.since = None

    def run(self):
        poll = min(0.25, self.timeout / 4)
        while True:
            time.sleep(poll)
            since, op = self.since, self.op
            if since is not None and time.monotonic() - since > self.timeout:
                c = self.comm
                sys.stderr.write(
                    f"dlprimer.distributed: rank {c.rank} of {c.world_size}: {op} waited more "
                    f"than {self.timeout:g} s (timeout); another rank is stuck or has died. "
                    "Aborting all ranks (MPI_Abort).\n")
                sys.stderr.flush()
                time.sleep(_FLUSH_GRACE)
                c.abort(3)


class MPICommunicator(Communicator):
    """Collectives over an MPI communicator (``MPI.COMM_WORLD`` by default)."""

    name = "mpi"

    def __init__(self, comm=None, timeout: float | None = None, abort_on_exception: bool = True):
        MPI = import_mpi()
        self.MPI = MPI
        self.comm = comm if comm is not None else MPI.COMM_WORLD
        super().__init__(self.comm.Get_rank(), self.comm.Get_size())
        if timeout is None and os.environ.get("DLPRIMER_DIST_TIMEOUT"):
            timeout = float(os.environ["DLPRIMER_DIST_TIMEOUT"])
        self.timeout = timeout
        self._watchdog = None
        if timeout is not None and timeout > 0 and self.world_size > 1:
            self._watchdog = _Watchdog(self, timeout)
            self._watchdog.start()
        if abort_on_exception and self.world_size > 1:
            install_abort_excepthook(self)

    def abort(self, code: int = 1):
        """``MPI_Abort``: the launcher ends every rank of the job."""
        try:
            self.comm.Abort(code)
        finally:
            os._exit(code)

    def _guard(self, op):
        wd = self._watchdog
        if wd is not None:
            wd.op, wd.since = op, time.monotonic()
        return wd

    @staticmethod
    def _release(wd):
        if wd is not None:
            wd.since = None

    def _all_reduce(self, data, backend):
        wd = self._guard("all_reduce")
        try:
            if backend.host_memory:
                self.comm.Allreduce(self.MPI.IN_PLACE, data, op=self.MPI.SUM)
            else:
                host = backend.to_numpy(data)
                self.comm.Allreduce(self.MPI.IN_PLACE, host, op=self.MPI.SUM)
                data[...] = backend.asarray(host)
        finally:
            self._release(wd)

    def _broadcast(self, data, backend, root):
        wd = self._guard("broadcast")
        try:
            if backend.host_memory:
                self.comm.Bcast(data, root=root)
            else:
                host = backend.to_numpy(data)
                self.comm.Bcast(host, root=root)
                data[...] = backend.asarray(host)
        finally:
            self._release(wd)

    def _barrier(self):
        wd = self._guard("barrier")
        try:
            self.comm.Barrier()
        finally:
            self._release(wd)

    def broadcast_object(self, obj, root: int = 0):
        self._check_root(root)
        if self.world_size == 1:
            return obj
        wd = self._guard("broadcast_object")
        try:
            return self.comm.bcast(obj, root=root)
        finally:
            self._release(wd)


def install_abort_excepthook(comm):
    """Make an uncaught exception on this rank abort the whole job (no hang).

    Without it the failing rank reaches ``MPI_Finalize`` at exit and waits there
    for ranks that are themselves waiting in a collective for it: a deadlock.
    """
    if getattr(sys.excepthook, "_dlprimer_abort", False):
        return
    previous = sys.excepthook

    def hook(exc_type, exc, tb):
        try:
            sys.stderr.write(
                f"dlprimer.distributed: rank {comm.rank} of {comm.world_size} failed with "
                f"{exc_type.__name__}: {exc}. Aborting all ranks (MPI_Abort).\n")
            sys.stderr.flush()
            previous(exc_type, exc, tb)
            sys.stderr.flush()
            time.sleep(_FLUSH_GRACE)
        finally:
            comm.abort(1)

    hook._dlprimer_abort = True
    sys.excepthook = hook
