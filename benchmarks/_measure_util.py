"""Shared set-up of the measuring benchmarks: quick mode and BLAS threads.

``DLPRIMER_BENCH_QUICK=1`` shrinks sizes for CI. ``DLPRIMER_BENCH_THREADS`` caps
the BLAS threads (default 1: on a shared machine a multi-threaded BLAS that spins
while another process holds the cores makes step times swing five-fold, and every
figure here is a ratio of two timings taken in the same configuration; 0 = no cap).
"""
from __future__ import annotations

import contextlib
import os

QUICK = os.environ.get("DLPRIMER_BENCH_QUICK") == "1"
THREADS = int(os.environ.get("DLPRIMER_BENCH_THREADS", "1"))


@contextlib.contextmanager
def blas_threads():
    if THREADS <= 0:
        yield
        return
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # scikit-learn brings it; without it, run as configured
        yield
        return
    with threadpool_limits(limits=THREADS, user_api="blas"):
        yield
