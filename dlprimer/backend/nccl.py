"""NCCL collectives on CuPy arrays (``cupy.cuda.nccl``), bootstrapped over MPI.

This is the one place that touches NCCL; ``dlprimer.distributed`` reaches it
only through :func:`create`. Rank 0 makes an NCCL unique id, MPI broadcasts it,
and every rank joins the clique on its own GPU (local rank modulo the visible
devices). Collectives run on the current CuPy stream, in place, with the array's
device pointer as both send and receive buffer; NCCL has no object or barrier
primitive, so those stay on MPI.
"""
from __future__ import annotations

import os


def _local_rank(mpi_comm) -> int:
    """Rank among the processes on this node (MPI's shared-memory split)."""
    for var in ("MPI_LOCALRANKID", "OMPI_COMM_WORLD_LOCAL_RANK", "MV2_COMM_WORLD_LOCAL_RANK"):
        if var in os.environ:
            return int(os.environ[var])
    from mpi4py import MPI
    node = mpi_comm.Split_type(MPI.COMM_TYPE_SHARED)
    try:
        return node.Get_rank()
    finally:
        node.Free()


class NCCLCollectives:
    """In-place all-reduce (sum) and broadcast of CuPy arrays over one NCCL clique."""

    def __init__(self, mpi_comm, device: int | None = None):
        from . import cuda_unavailable_reason
        reason = cuda_unavailable_reason()
        if reason is not None:
            raise RuntimeError(f"the NCCL communicator needs a usable GPU: {reason}")
        import cupy
        try:
            from cupy.cuda import nccl
        except ImportError as e:
            raise RuntimeError(
                f"CuPy has no NCCL ({e}); install it with `pip install 'dlprimer[nccl13]'` "
                "(or [nccl12]), which brings the nvidia-nccl wheel") from e
        if not getattr(nccl, "available", True):
            raise RuntimeError("CuPy was built without NCCL support (cupy.cuda.nccl.available "
                               "is False); install the nvidia-nccl wheel for your CUDA")
        self.cupy, self.nccl = cupy, nccl
        rank, size = mpi_comm.Get_rank(), mpi_comm.Get_size()
        if device is None:
            device = _local_rank(mpi_comm) % cupy.cuda.runtime.getDeviceCount()
        self.device = int(device)
        cupy.cuda.Device(self.device).use()
        uid = nccl.get_unique_id() if rank == 0 else None
        uid = mpi_comm.bcast(uid, root=0)
        self.comm = nccl.NcclCommunicator(size, uid, rank)
        self._dtypes = {
            "float16": nccl.NCCL_FLOAT16, "float32": nccl.NCCL_FLOAT32,
            "float64": nccl.NCCL_FLOAT64, "int32": nccl.NCCL_INT32,
            "int64": nccl.NCCL_INT64, "uint8": nccl.NCCL_UINT8, "int8": nccl.NCCL_INT8,
        }
        bf16 = getattr(nccl, "NCCL_BFLOAT16", None)
        if bf16 is not None:
            self._dtypes["bfloat16"] = bf16

    def _nccl_dtype(self, a):
        try:
            return self._dtypes[str(a.dtype)]
        except KeyError:
            raise TypeError(f"NCCL cannot reduce dtype {a.dtype}; supported: "
                            f"{', '.join(sorted(self._dtypes))}") from None

    def _check(self, a, what):
        if not isinstance(a, self.cupy.ndarray):
            raise TypeError(f"NCCL {what}: expected a CuPy array on the GPU, got "
                            f"{type(a).__name__}; move the model with .to('cuda') or use "
                            "the 'mpi' communicator for CPU arrays")
        if a.device.id != self.device:
            raise ValueError(f"NCCL {what}: array is on GPU {a.device.id}, this rank's "
                             f"communicator is on GPU {self.device}")

    def all_reduce_sum(self, a):
        self._check(a, "all_reduce")
        stream = self.cupy.cuda.get_current_stream().ptr
        self.comm.allReduce(a.data.ptr, a.data.ptr, a.size, self._nccl_dtype(a),
                            self.nccl.NCCL_SUM, stream)

    def broadcast(self, a, root: int):
        self._check(a, "broadcast")
        stream = self.cupy.cuda.get_current_stream().ptr
        self.comm.bcast(a.data.ptr, a.size, self._nccl_dtype(a), root, stream)

    def destroy(self):
        if self.comm is not None:
            self.comm.destroy()
            self.comm = None


def create(mpi_comm, device: int | None = None) -> NCCLCollectives:
    """An NCCL clique over the ranks of ``mpi_comm``, one GPU per rank."""
    return NCCLCollectives(mpi_comm, device)
