"""NCCL communicator: GPU-to-GPU collectives, MPI for bootstrap and metadata.

The NCCL calls themselves live behind the backend seam
(:mod:`dlprimer.backend.nccl`); this class adds the Communicator contract on
top: argument checks, ``op="mean"``, statistics (timed with the CUDA backend's
timer, which synchronises the stream, so ``seconds`` is the finished transfer),
and barrier/object broadcast over the MPI communicator it was bootstrapped from.
"""
from __future__ import annotations

from .mpi import MPICommunicator


class NCCLCommunicator(MPICommunicator):
    """All-reduce and broadcast of device arrays through NCCL; the rest through MPI."""

    name = "nccl"

    def __init__(self, comm=None, device: int | None = None, timeout: float | None = None,
                 abort_on_exception: bool = True):
        super().__init__(comm, timeout=timeout, abort_on_exception=abort_on_exception)
        from ..backend import nccl as _nccl
        self.nccl = _nccl.create(self.comm, device)

    def _all_reduce(self, data, backend):
        if backend.host_memory:
            return super()._all_reduce(data, backend)
        wd = self._guard("all_reduce")
        try:
            self.nccl.all_reduce_sum(data)
        finally:
            self._release(wd)

    def _broadcast(self, data, backend, root):
        if backend.host_memory:
            return super()._broadcast(data, backend, root)
        wd = self._guard("broadcast")
        try:
            self.nccl.broadcast(data, root)
        finally:
            self._release(wd)

    def finalize(self):
        self.nccl.destroy()
