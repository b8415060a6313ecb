"""Helpers shared by the benchmark files (imported as ``from _bench import ...``);
``conftest.py`` documents the conventions and the environment variables."""
from __future__ import annotations

import os

QUICK = os.environ.get("DLPRIMER_BENCH_QUICK") == "1"
THREADS = int(os.environ.get("DLPRIMER_BENCH_THREADS", "1"))


def blas_threads() -> int:
    """The BLAS thread count NumPy runs with now (threadpoolctl), or 0 if unknown."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return 0
    counts = [d.get("num_threads", 0) for d in threadpool_info() if d.get("user_api") == "blas"]
    return max(counts) if counts else 0


def tag(benchmark, workload: str, peer: str, **info):
    """Put ``benchmark`` in ``workload``'s group and label it with its ``peer``."""
    benchmark.group = workload
    benchmark.extra_info.update(workload=workload, peer=peer, **info)


def best(benchmark):
    """Best-of-rounds time in seconds, or None under ``--benchmark-disable``."""
    stats = getattr(benchmark, "stats", None)
    return None if stats is None else stats.stats.min


def round_robin(fns: dict, rounds: int, burst: int = 3) -> dict:
    """Best seconds per call of each function in ``fns`` (peer -> callable), timed in
    rotation: each round runs every peer for ``burst`` consecutive calls (so each
    keeps its own allocator/cache steady state) and a load spike on this shared
    machine hits all peers alike. One warm-up burst each first."""
    import time
    for fn in fns.values():
        for _ in range(burst):
            fn()
    out = {k: float("inf") for k in fns}
    order = list(fns)
    for r in range(rounds):
        for k in order[r % len(order):] + order[:r % len(order)]:
            fn = fns[k]
            for _ in range(burst):
                t0 = time.perf_counter()
                fn()
                dt = time.perf_counter() - t0
                if dt < out[k]:
                    out[k] = dt
    return out


_RR: dict = {}


def group_best(benchmark, workload: str, make_fns, rounds: int, burst: int = 3):
    """The round-robin best time of every peer of ``workload`` (computed once, by the
    first of the group's tests to ask; ``make_fns()`` builds fresh peer functions),
    or None under ``--benchmark-disable``."""
    if getattr(benchmark, "disabled", False):
        return None
    if workload not in _RR:
        _RR[workload] = round_robin(make_fns(), rounds, burst)
    return _RR[workload]
