"""Helpers shared by the benchmark files (imported as ``from _bench import ...``);
``conftest.py`` documents the conventions and the environment variables."""
from __future__ import annotations

import contextlib
import os
import statistics

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
    """Seconds per call of each function in ``fns`` (peer -> callable), one sample per
    round, the peers taking turns: each round runs every peer for ``burst``
    consecutive calls (so each keeps its own allocator/cache steady state) and keeps
    the median of the burst; the starting peer rotates from round to round. A load
    spike on this shared machine then hits every peer of that round alike, and
    ``dlprimer.bench`` takes the median of the per-round ratios. One warm-up burst
    each first (untimed). Returns peer -> list of per-round seconds (paired by index),
    and under ``"cpu:" + peer`` the process CPU time of the same calls (all threads):
    on a machine shared with other processes, wall time includes waiting for a core,
    CPU time does not, so at one thread the CPU-time ratio is the steadier one."""
    import time
    for fn in fns.values():
        for _ in range(burst):
            fn()
    out = {k: [] for k in fns}
    out.update({f"cpu:{k}": [] for k in fns})
    order = list(fns)
    for r in range(rounds):
        for k in order[r % len(order):] + order[:r % len(order)]:
            fn, ts, cs = fns[k], [], []
            for _ in range(burst):
                c0, t0 = time.process_time(), time.perf_counter()
                fn()
                ts.append(time.perf_counter() - t0)
                cs.append(time.process_time() - c0)
            out[k].append(statistics.median(ts))
            out[f"cpu:{k}"].append(statistics.median(cs))
    return out


_RR: dict = {}


def group_samples(benchmark, workload: str, make_fns, rounds: int, burst: int = 3):
    """The round-robin samples of every peer of ``workload`` (computed once, by the
    first of the group's tests to ask; ``make_fns()`` builds fresh peer functions),
    or None under ``--benchmark-disable``."""
    if getattr(benchmark, "disabled", False):
        return None
    if workload not in _RR:
        _RR[workload] = round_robin(make_fns(), rounds, burst)
    return _RR[workload]


def record_samples(benchmark, samples, peer):
    """Put ``peer``'s round-robin samples in the entry (``dlprimer.bench`` pairs them
    with the other peers' by round) with their median and best."""
    if samples is None or peer not in samples:
        return
    xs = samples[peer]
    benchmark.extra_info.update(rr_samples_s=list(xs), rr_median_s=statistics.median(xs),
                                rr_best_s=min(xs))
    if f"cpu:{peer}" in samples:
        benchmark.extra_info["rr_cpu_samples_s"] = list(samples[f"cpu:{peer}"])


@contextlib.contextmanager
def threads(n):
    """Every thread pool (BLAS, OpenMP, PyTorch) at ``n`` threads inside the block."""
    if n is None:
        yield
        return
    from dlprimer.measure.threads import limited
    with limited(n):
        yield
