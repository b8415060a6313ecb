"""The Communicator interface, its statistics, and the single-process implementation.

A communicator moves whole arrays between the ranks of a data-parallel job. Data
parallelism needs only a handful of collectives: all-reduce (average the
gradients before the step), broadcast (start every rank from rank 0's parameters
and optimizer state), barrier, and rank/world size. Everything it moves is
counted in :class:`CommStats` so the profiler can show communication beside
forward, backward and optimizer time: the chapter's gradient-size row (every step
all-reduces one gradient's worth of bytes, ``4 * P`` for ``P`` float32
parameters) is then a measured figure, not an estimate.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from ..backend import backend_of_array
from ..tensor import Tensor

OPS = ("mean", "sum")


@dataclass
class OpStats:
    """Totals of one collective kind: calls, payload bytes, seconds."""

    calls: int = 0
    bytes: int = 0
    seconds: float = 0.0


@dataclass
class CommStats:
    """What a communicator has moved: totals and per collective (``by_op``).

    ``bytes`` counts each call's payload once (the array's ``nbytes``), the way
    a gradient-size estimate counts it; the wire traffic of a ring all-reduce is
    ``2 (n-1)/n`` times that (see :func:`bus_bandwidth`). ``seconds`` is wall
    time with the device synchronised at both ends, so it includes waiting for
    the slowest rank. Read ``snapshot()`` before and ``since(snap)`` after a
    step to get that step's share.
    """

    by_op: dict = field(default_factory=dict)

    def record(self, op: str, nbytes: int, seconds: float):
        s = self.by_op.get(op)
        if s is None:
            s = self.by_op[op] = OpStats()
        s.calls += 1
        s.bytes += int(nbytes)
        s.seconds += float(seconds)

    @property
    def calls(self) -> int:
        return sum(s.calls for s in self.by_op.values())

    @property
    def bytes(self) -> int:
        return sum(s.bytes for s in self.by_op.values())

    @property
    def seconds(self) -> float:
        return sum(s.seconds for s in self.by_op.values())

    def reset(self):
        self.by_op.clear()

    def snapshot(self) -> dict:
        """A plain copy: ``{op: {"calls", "bytes", "seconds"}}``."""
        return {op: {"calls": s.calls, "bytes": s.bytes, "seconds": s.seconds}
                for op, s in self.by_op.items()}

    def since(self, snap: dict) -> dict:
        """Totals accumulated after ``snap`` was taken, plus per-op detail."""
        out = {"calls": 0, "bytes": 0, "seconds": 0.0, "by_op": {}}
        for op, s in self.by_op.items():
            old = snap.get(op, {"calls": 0, "bytes": 0, "seconds": 0.0})
            d = {"calls": s.calls - old["calls"], "bytes": s.bytes - old["bytes"],
                 "seconds": s.seconds - old["seconds"]}
            if d["calls"]:
                out["by_op"][op] = d
                out["calls"] += d["calls"]
                out["bytes"] += d["bytes"]
                out["seconds"] += d["seconds"]
        return out

    def to_dict(self) -> dict:
        return {"calls": self.calls, "bytes": self.bytes, "seconds": self.seconds,
                "by_op": self.snapshot()}


def bus_bandwidth(nbytes: int, seconds: float, world_size: int) -> float:
    """Bus bandwidth of an all-reduce in bytes/s: ``size/t * 2(n-1)/n``.

    A ring all-reduce sends and receives ``2 (n-1)/n`` times the message per
    rank, so this figure is comparable with the link's bandwidth whatever ``n``
    is (the convention of nccl-tests).
    """
    if seconds <= 0:
        return float("inf")
    return nbytes / seconds * (2.0 * (world_size - 1) / world_size if world_size > 1 else 1.0)


def _check_op(op: str):
    if op not in OPS:
        raise ValueError(f"all_reduce_: op must be one of {OPS}, got {op!r}")


def _unwrap(array, what: str):
    """The backend array behind ``array`` (a Tensor or an array), checked for in-place use."""
    data = array.data if isinstance(array, Tensor) else array
    backend = backend_of_array(data)
    if not backend.is_array(data):
        raise TypeError(f"{what}: expected a Tensor or a {backend.name} backend array, "
                        f"got {type(array).__name__}")
    flags = getattr(data, "flags", None)
    if flags is not None and not flags.c_contiguous:
        raise ValueError(f"{what}: the array must be C-contiguous to be reduced in place "
                         f"(shape {data.shape}, strides {data.strides}); pass the arena, "
                         "not a strided view")
    return data, backend


def _check_mean_dtype(data, what: str):
    if not np.issubdtype(data.dtype, np.floating):
        raise TypeError(f"{what}: op='mean' needs a floating array, got dtype {data.dtype}; "
                        "use op='sum' for integers")


def _scale_mean(data, backend, n: int):
    if n == 1:
        return
    xp = backend.xp
    xp.multiply(data, data.dtype.type(1.0 / n), out=data)


class Communicator:
    """Collectives over a fixed group of ranks, with :class:`CommStats`.

    Subclasses implement ``_all_reduce(data, backend)`` (sum, in place),
    ``_broadcast(data, backend, root)``, ``_barrier()`` and
    ``broadcast_object(obj, root)``; this class validates arguments, applies
    ``op="mean"`` and records the statistics.
    """

    name = "?"

    def __init__(self, rank: int = 0, world_size: int = 1):
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.stats = CommStats()

    def __repr__(self):
        return f"<dlprimer {self.name} communicator rank {self.rank} of {self.world_size}>"

    # -- public collectives -------------------------------------------------------------
    def all_reduce_(self, array, op: str = "mean"):
        """Sum (``op="sum"``) or average (``"mean"``) ``array`` over all ranks, in place."""
        _check_op(op)
        data, backend = _unwrap(array, "all_reduce_")
        if op == "mean":
            _check_mean_dtype(data, "all_reduce_")
        with backend.timer() as t:
            self._all_reduce(data, backend)
            if op == "mean":
                _scale_mean(data, backend, self.world_size)
        self.stats.record("all_reduce", data.nbytes, t.elapsed)
        return array

    def broadcast_(self, array, root: int = 0):
        """Overwrite ``array`` on every rank with rank ``root``'s values, in place."""
        self._check_root(root)
        data, backend = _unwrap(array, "broadcast_")
        with backend.timer() as t:
            self._broadcast(data, backend, root)
        self.stats.record("broadcast", data.nbytes, t.elapsed)
        return array

    def barrier(self):
        """Wait until every rank has reached this call."""
        t0 = time.perf_counter()
        self._barrier()
        self.stats.record("barrier", 0, time.perf_counter() - t0)

    def broadcast_object(self, obj, root: int = 0):
        """Rank ``root``'s picklable ``obj`` on every rank (small metadata only)."""
        self._check_root(root)
        return obj

    def all_reduce_scalars(self, values, op: str = "sum") -> list:
        """Reduce a few Python numbers (metrics) across ranks; returns floats."""
        buf = np.asarray(values, dtype=np.float64).ravel().copy()
        self.all_reduce_(buf, op=op)
        return buf.tolist()

    def finalize(self):
        """Release what the communicator holds (the MPI runtime finalises at exit)."""

    def _check_root(self, root):
        if not isinstance(root, (int, np.integer)) or not 0 <= root < self.world_size:
            raise ValueError(f"root must be a rank in [0, {self.world_size}), got {root!r}")

    # -- what implementations provide ------------------------------------------------------
    def _all_reduce(self, data, backend):
        raise NotImplementedError

    def _broadcast(self, data, backend, root):
        raise NotImplementedError

    def _barrier(self):
        raise NotImplementedError


class SingleCommunicator(Communicator):
    """One process, world size 1: every collective is the identity (still counted)."""

    name = "single"

    def __init__(self):
        super().__init__(0, 1)

    def _all_reduce(self, data, backend):
        pass

    def _broadcast(self, data, backend, root):
        pass

    def _barrier(self):
        pass
