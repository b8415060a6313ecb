"""Shared set-up of the benchmark suite (pytest-benchmark).

Conventions every benchmark here follows, so that ``dlprimer bench`` can turn the
raw results into one table of ratios (:mod:`dlprimer.bench`):

* one pytest-benchmark *group* per workload; inside it one test per *peer*, all in
  this process on the same data: ``dlprimer``, and its peers ``numpy`` (the
  hand-written NumPy code, the floor for a Python framework on NumPy), ``torch``
  (PyTorch CPU, skipped when not installed), ``copy`` (a plain memory copy of the
  same bytes, the bandwidth bound), and on a GPU ``device-copy`` / ``torch-cuda``;
* each test calls :func:`tag` so its JSON entry carries ``workload``, ``peer`` and
  any figures (``extra_info``) the table needs.

Environment:

* ``DLPRIMER_BENCH_QUICK=1``: small sizes and few rounds (CI runs every benchmark
  once this way with ``--benchmark-disable``, so none can rot); timing targets are
  then reported, not asserted (a smoke run on a busy machine gives no verdict), while
  exact figures such as memory ratios are still checked;
* ``DLPRIMER_BENCH_THREADS``: BLAS threads for the whole session (default 1: on a
  shared machine a multi-threaded BLAS that waits for a busy core makes timings
  swing several-fold; ratios need both sides in one configuration; 0 = no cap).
  PyTorch gets the same number of intra-op threads.
"""
from __future__ import annotations

import os

import pytest

from _bench import QUICK, THREADS, blas_threads

_limiter = None
_FINGERPRINT: dict = {}


def pytest_configure(config):
    """Cap BLAS threads for the session (NumPy and SciPy loaded first, so that
    threadpoolctl sees their BLAS libraries); note the load average at the start."""
    global _limiter
    _FINGERPRINT["load_start"] = [round(x, 2) for x in os.getloadavg()]
    if THREADS > 0:
        try:
            from threadpoolctl import threadpool_limits
        except ImportError:
            return
        import numpy  # noqa: F401
        import scipy.linalg  # noqa: F401
        _limiter = threadpool_limits(limits=THREADS, user_api="blas")


def pytest_unconfigure(config):
    global _limiter
    if _limiter is not None:
        _limiter.restore_original_limits()
        _limiter = None


@pytest.fixture(scope="session")
def torch_cpu():
    """PyTorch with as many intra-op threads as NumPy's BLAS has (skip without it)."""
    torch = pytest.importorskip("torch")
    n = blas_threads() or os.cpu_count() or 1
    torch.set_num_threads(n)
    return torch


def pytest_benchmark_update_machine_info(config, machine_info):
    """The machine facts the table is read against, with the environment fingerprint
    (load average at the start of the session and now, at its end)."""
    machine_info["dlprimer_bench"] = {
        "quick": QUICK,
        "blas_threads": blas_threads(),
        "thread_cap": THREADS,
        "cpu_count": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "fingerprint": _fingerprint(),
    }
    try:
        import torch
        machine_info["dlprimer_bench"]["torch"] = torch.__version__
        machine_info["dlprimer_bench"]["torch_threads"] = torch.get_num_threads()
    except ImportError:
        pass


def _fingerprint():
    """The environment now (thread pools as capped), with the session's starting load."""
    try:
        import dlprimer as dp
        from dlprimer.measure import finish, fingerprint
        fp = fingerprint(dp.get_backend())
    except Exception as e:  # the fingerprint never stops a benchmark run
        return {"error": f"{type(e).__name__}: {e}"}
    fp["load_start"] = _FINGERPRINT.get("load_start", fp["load_start"])
    return finish(fp)


def _cpu_model() -> str:
    from dlprimer.measure.fingerprint import cpu_model
    return cpu_model()


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """After pytest-benchmark's own tables: the ratio table (dlprimer vs each peer)."""
    bs = getattr(config, "_benchmarksession", None)
    if os.environ.get("DLPRIMER_BENCH_NO_SUMMARY") == "1" or bs is None or not getattr(bs, "benchmarks", None):
        return
    try:
        from dlprimer.bench import format_table, rows_from_benchmarks
    except ImportError:
        return
    rows = rows_from_benchmarks([b.as_dict(include_data=False) for b in bs.benchmarks
                                 if getattr(b, "has_error", False) is False])
    if rows:
        from dlprimer.measure import describe
        terminalreporter.write_line("")
        fp = _fingerprint()
        for line in format_table(rows, machine=describe(fp) if fp else None).splitlines():
            terminalreporter.write_line(line)
