"""Data-parallel training over an existing engine: MPI (CPU) or NCCL (GPU).

Every rank holds a full copy of the model, reads its own shard of each epoch
(``DataLoader(num_replicas=world_size(), rank=rank())``, or :func:`shard_loader`),
computes gradients on its local batch of ``B`` samples, and averages them with one
all-reduce per param group before the optimizer step. Because the loss is a mean
over the batch, the averaged gradient is exactly the gradient of the mean over the
global batch of ``W * B`` samples (``W`` ranks), so ``W`` ranks with batch ``B``
follow the same trajectory as one rank with batch ``W * B`` (up to float rounding).
The learning rate for the larger global batch follows the chapter's linear scaling
rule with warm-up (``optim.scale_lr``).

    import dlprimer.distributed as dist
    dist.init()                          # "auto": MPI/NCCL under mpiexec, else single
    dist.broadcast_parameters(model)     # every rank starts from rank 0's weights
    ...loss.backward(); dist.all_reduce_gradients(opt); opt.step()
    if dist.rank() == 0: save / log

Launch with ``mpiexec -n 2 python train.py`` or ``mpiexec -n 2 dlprimer train
--distributed ...``; install with ``pip install 'dlprimer[dist]'``.
"""
from __future__ import annotations

import os

from .comm import CommStats, Communicator, OpStats, SingleCommunicator, bus_bandwidth
from .parallel import (all_reduce_gradients, broadcast_optimizer_state, broadcast_parameters,
                       reduce_metrics, shard_loader, shared_seed)
from .training import DistributedOptimizer, LinearWarmup, fit, scale_learning_rate

BACKENDS = ("auto", "mpi", "nccl", "single")

_comm: Communicator | None = None
_default = SingleCommunicator()

_SIZE_VARS = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE", "PMIX_SIZE")


def launched_world_size() -> int:
    """The world size the MPI launcher announced in the environment (1 when none).

    MPICH's and Intel's hydra set ``PMI_SIZE``, Open MPI ``OMPI_COMM_WORLD_SIZE``,
    MVAPICH ``MV2_COMM_WORLD_SIZE``; reading them needs no MPI import, so a plain
    single-process run never pays for MPI initialisation.
    """
    for var in _SIZE_VARS:
        v = os.environ.get(var)
        if v:
            try:
                return int(v)
            except ValueError:
                pass
    return 1


def init(backend: str = "auto", timeout: float | None = None, device: int | None = None,
         abort_on_exception: bool = True) -> Communicator:
    """Start the process group and return its communicator.

    backend: ``"single"`` (one process), ``"mpi"`` (mpi4py, host buffers),
    ``"nccl"`` (GPU buffers, bootstrapped over MPI), or ``"auto"``: NCCL under
    an MPI launcher when dlprimer's current backend is CUDA, MPI under a launcher
    otherwise, single without one.
    timeout: seconds one collective may wait before the whole job is aborted
    (env ``DLPRIMER_DIST_TIMEOUT``; default none). abort_on_exception: an uncaught
    exception on any rank aborts every rank instead of leaving them waiting.
    Calling ``init`` again with the same backend returns the same communicator.
    """
    global _comm
    if not isinstance(backend, str) or backend.lower() not in BACKENDS:
        raise ValueError(f"unknown distributed backend {backend!r}; valid: {', '.join(BACKENDS)}")
    backend = backend.lower()
    if backend == "auto":
        backend = "single"
        if launched_world_size() > 1:
            from ..backend import get_backend
            backend = "nccl" if get_backend().name == "cuda" else "mpi"
    if _comm is not None:
        if _comm.name != backend:
            raise RuntimeError(f"dlprimer.distributed is already initialised with "
                               f"{_comm.name!r}; cannot re-initialise it as {backend!r}")
        return _comm
    if backend == "single":
        if launched_world_size() > 1:
            raise RuntimeError(
                f"this process was launched as one of {launched_world_size()} MPI ranks but "
                "init(backend='single') was asked for: every rank would train alone. "
                "Use init('auto'), 'mpi' or 'nccl'")
        _comm = SingleCommunicator()
    elif backend == "mpi":
        from .mpi import MPICommunicator
        _comm = MPICommunicator(timeout=timeout, abort_on_exception=abort_on_exception)
    else:
        from .nccl import NCCLCommunicator
        _comm = NCCLCommunicator(device=device, timeout=timeout,
                                 abort_on_exception=abort_on_exception)
    return _comm


def is_initialized() -> bool:
    return _comm is not None


def get_communicator() -> Communicator:
    """The communicator from :func:`init`, else a single-process one (rank 0 of 1)."""
    return _comm if _comm is not None else _default


def finalize():
    """Release the communicator; ``init`` may be called again afterwards."""
    global _comm
    if _comm is not None:
        _comm.finalize()
    _comm = None


def rank() -> int:
    return get_communicator().rank


def world_size() -> int:
    return get_communicator().world_size


def is_main_process() -> bool:
    """True on rank 0, the rank that writes logs, metrics and checkpoints."""
    return get_communicator().rank == 0


def all_reduce_(array, op: str = "mean"):
    """Average (or sum) ``array`` (a Tensor or backend array) over all ranks, in place."""
    return get_communicator().all_reduce_(array, op=op)


def broadcast_(array, root: int = 0):
    """Give ``array`` rank ``root``'s values on every rank, in place."""
    return get_communicator().broadcast_(array, root=root)


def barrier():
    get_communicator().barrier()


def stats() -> CommStats:
    """The current communicator's :class:`CommStats` (bytes, seconds, calls)."""
    return get_communicator().stats


__all__ = ["init", "finalize", "is_initialized", "get_communicator", "rank", "world_size",
           "is_main_process", "all_reduce_", "broadcast_", "barrier", "stats",
           "launched_world_size", "Communicator", "SingleCommunicator", "CommStats", "OpStats",
           "bus_bandwidth", "all_reduce_gradients", "broadcast_parameters",
           "broadcast_optimizer_state", "reduce_metrics", "shard_loader", "shared_seed",
           "DistributedOptimizer", "LinearWarmup", "fit", "scale_learning_rate"]
