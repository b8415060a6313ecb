"""One thread policy for the whole process.

``set_num_threads(n)`` (PyTorch's name) caps every thread pool the process has
loaded: each BLAS (NumPy's OpenBLAS, SciPy's own OpenBLAS, MKL, ...) and OpenMP
runtime through threadpoolctl, plus Numba's and PyTorch's pools when those are
imported. It also sets ``OMP_NUM_THREADS``, ``OPENBLAS_NUM_THREADS`` and
``MKL_NUM_THREADS`` so that a library loaded later, or a child process, starts with
the same cap.

Why it matters: a multi-threaded BLAS whose workers spin while another process holds
a core makes a step several times slower than one thread would; two pools side by
side (two BLAS libraries) double that. ``auto_threads()`` picks the cores that are
idle at start (from the load average), at least one.
"""
from __future__ import annotations

import math
import os
import sys

ENV_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")

_policy: int | None = None


def _check(n, where="set_num_threads"):
    if isinstance(n, bool) or not isinstance(n, int):
        raise ValueError(f"{where}: the thread count must be a positive int, got {n!r}")
    if n < 1:
        raise ValueError(f"{where}: the thread count must be >= 1, got {n!r}")
    return n


def cpu_cores() -> int:
    """The cores this process may run on (its affinity mask), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def load_average() -> float | None:
    """The one-minute load average (runnable processes), or None where unknown."""
    try:
        return float(os.getloadavg()[0])
    except (AttributeError, OSError):
        return None


def runnable_now() -> int | None:
    """Processes runnable at this instant besides this one (Linux ``/proc/loadavg``'s
    fourth field), or None where unknown. The one-minute average lags a load that
    started seconds ago; this does not."""
    try:
        with open("/proc/loadavg") as f:
            running = int(f.read().split()[3].split("/")[0])
    except (OSError, ValueError, IndexError):
        return None
    return max(0, running - 1)


def busy_cores() -> float | None:
    """The load to plan around: the larger of the one-minute load average and the
    processes runnable now (None when neither is known)."""
    known = [v for v in (load_average(), runnable_now()) if v is not None]
    return max(known) if known else None


def auto_threads(cores: int | None = None, load: float | None = None) -> int:
    """The cores idle now: ``cores - load`` rounded to nearest, at least 1 (all cores
    when the load is unknown); ``load`` defaults to :func:`busy_cores`."""
    cores = cpu_cores() if cores is None else cores
    load = busy_cores() if load is None else load
    if load is None or not math.isfinite(load):
        return cores
    return max(1, min(cores, int(math.floor(cores - load + 0.5))))


def parse_threads(value) -> int:
    """``"auto"`` -> :func:`auto_threads`; a positive integer (or its string) -> itself;
    anything else: ValueError naming the value."""
    if isinstance(value, str):
        if value.strip().lower() == "auto":
            return auto_threads()
        try:
            value = int(value.strip())
        except ValueError:
            raise ValueError(f"threads must be a positive integer or 'auto', got {value!r}") from None
    return _check(value, "threads")


def set_num_threads(n: int) -> None:
    """Cap every loaded thread pool (BLAS, OpenMP, Numba, PyTorch) at ``n`` threads."""
    global _policy
    _check(n)
    for var in ENV_VARS:
        os.environ[var] = str(n)
    try:
        from threadpoolctl import threadpool_limits
        threadpool_limits(limits=n)
    except ImportError:  # pragma: no cover - threadpoolctl is a dependency
        pass
    numba = sys.modules.get("numba")
    if numba is not None and hasattr(numba, "set_num_threads"):
        numba.set_num_threads(min(n, int(getattr(numba.config, "NUMBA_NUM_THREADS", n))))
    torch = sys.modules.get("torch")
    if torch is not None and hasattr(torch, "set_num_threads"):
        torch.set_num_threads(n)
    _policy = n


def thread_pools() -> list[dict]:
    """Every loaded thread pool: ``{"api", "library", "version", "threads", "path"}``."""
    pools = []
    try:
        from threadpoolctl import threadpool_info
        for d in threadpool_info():
            pools.append({"api": d.get("user_api"), "library": d.get("internal_api"),
                          "version": d.get("version"), "threads": d.get("num_threads"),
                          "path": os.path.basename(d.get("filepath") or "")})
    except ImportError:  # pragma: no cover
        pass
    numba = sys.modules.get("numba")
    if numba is not None and hasattr(numba, "get_num_threads"):
        pools.append({"api": "numba", "library": "numba", "version": numba.__version__,
                      "threads": numba.get_num_threads(), "path": ""})
    torch = sys.modules.get("torch")
    if torch is not None and hasattr(torch, "get_num_threads"):
        pools.append({"api": "torch", "library": "torch", "version": torch.__version__,
                      "threads": torch.get_num_threads(), "path": ""})
    return pools


def get_num_threads() -> int:
    """The size of the largest loaded thread pool (after ``set_num_threads(n)``: n);
    the last cap set, or the cores, when no pool is loaded."""
    sizes = [p["threads"] for p in thread_pools() if p.get("threads")]
    if sizes:
        return max(sizes)
    return _policy if _policy is not None else cpu_cores()


class limited:
    """``with limited(n): ...`` runs the block with every loaded pool (and PyTorch's,
    when imported) capped at ``n`` threads, and puts the previous sizes back after."""

    def __init__(self, n: int):
        self.n = _check(n, "limited")

    def __enter__(self):
        from threadpoolctl import threadpool_limits
        torch = sys.modules.get("torch")  # its count first: it reads OpenMP's, changed below
        self._torch = (torch, torch.get_num_threads()) if torch is not None else None
        self._limits = threadpool_limits(limits=self.n)
        if torch is not None:
            torch.set_num_threads(self.n)
        return self

    def __exit__(self, *exc):
        self._limits.restore_original_limits()
        if self._torch is not None:
            self._torch[0].set_num_threads(self._torch[1])
        elif sys.modules.get("torch") is not None:  # imported inside: match the BLAS again
            blas = [p["threads"] for p in thread_pools() if p["api"] == "blas" and p["threads"]]
            sys.modules["torch"].set_num_threads(max(blas) if blas else cpu_cores())
