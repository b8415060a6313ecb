"""Communication in the step profile: time and bytes of the gradient all-reduce.

:func:`profile` runs :func:`dlprimer.profiler.profile` with the optimizer wrapped
in :class:`~dlprimer.distributed.DistributedOptimizer` and reads the
communicator's :class:`~dlprimer.distributed.CommStats` around every step, so the
report gains ``total["comm"]``: all-reduce seconds (median and quartiles over
the timed steps; included in the optimizer-step time) and bytes per step (the
chapter's gradient-size row, measured), plus the bus bandwidth they imply.
The profiler itself is untouched; any profiler can read ``comm.stats`` the same
way (``snap = stats.snapshot()`` before, ``stats.since(snap)`` after).
"""
from __future__ import annotations

from ..profiler.report import Report, fmt_time, stats
from .comm import bus_bandwidth
from .training import DistributedOptimizer


class _Recorder(DistributedOptimizer):
    def __init__(self, optimizer, comm):
        super().__init__(optimizer, comm=comm)
        self.__dict__["steps"] = []

    def step(self):
        out = super().step()
        self.steps.append((self.comm_seconds, self.comm_bytes))
        return out


class DistributedReport(Report):
    """A profiler Report with a communication line (``total["comm"]``)."""

    def table(self, top_ops: int = 8) -> str:
        c = self.total.get("comm")
        text = super().table(top_ops)
        if not c:
            return text
        s = c["seconds"]
        line = (f"communication (all-reduce, world size {c['world_size']}): "
                f"{fmt_time(s['median'])} [{fmt_time(s['q1'])}-{fmt_time(s['q3'])}] per step, "
                f"{c['bytes_per_step']} bytes per step in {c['calls_per_step']} call(s), "
                f"bus {c['bus_GBps']:.3g} GB/s, {c['share_of_step']:.1%} of the step")
        return text + "\n" + line


def profile(model, loss_fn, batch, optimizer, comm=None, warmup: int = 3, repeats: int = 20,
            **kwargs) -> DistributedReport:
    """Profile a data-parallel step on every rank; see the module docstring."""
    from ..profiler import profile as _profile
    from . import get_communicator
    comm = comm if comm is not None else get_communicator()
    rec = _Recorder(optimizer, comm)
    calls0 = comm.stats.by_op.get("all_reduce")
    calls0 = calls0.calls if calls0 else 0
    rep = _profile(model, loss_fn, batch, optimizer=rec, warmup=warmup, repeats=repeats, **kwargs)
    timed = rec.steps[warmup:warmup + repeats]
    sec = [s for s, _ in timed]
    nbytes = timed[0][1] if timed else 0
    ar = comm.stats.by_op.get("all_reduce")
    calls = ((ar.calls if ar else 0) - calls0) // max(len(rec.steps), 1)
    med = stats(sec)
    step_med = (rep.total.get("step") or {}).get("median") or 0.0
    rep.total["comm"] = {
        "world_size": comm.world_size, "seconds": med, "bytes_per_step": int(nbytes),
        "calls_per_step": int(calls),
        "bus_GBps": bus_bandwidth(nbytes, med["median"], comm.world_size) / 1e9
        if med["median"] > 0 else float("inf"),
        "share_of_step": (med["median"] / (rep.total["forward"]["median"]
                                           + rep.total["backward"]["median"] + step_med))
        if step_med else 0.0,
    }
    rep.meta["world_size"] = comm.world_size
    rep.__class__ = DistributedReport
    return rep
