"""The environment a measurement was taken in, attached to every JSON, report and
bench table: CPU model and cores, load average at start and end, every thread pool
and its size, the BLAS vendors, GPU / driver / CuPy / CUDA when present, the
library versions and dlprimer's version and git commit."""
from __future__ import annotations

import functools
import os
import platform
import subprocess
import sys
import time

from .threads import cpu_cores, thread_pools


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


@functools.lru_cache(maxsize=1)
def git_commit() -> str | None:
    """The commit of the source checkout dlprimer runs from, or None (an installed wheel,
    no git); asked once per process."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if not os.path.isdir(os.path.join(root, ".git")) and not os.path.isfile(os.path.join(root, ".git")):
        return None
    try:
        out = subprocess.run(["git", "-C", root, "rev-parse", "--short=12", "HEAD"],
                             capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "-C", root, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def _loads():
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def _versions():
    import numpy
    v = {"python": platform.python_version(), "numpy": numpy.__version__}
    for mod in ("scipy", "cupy", "torch", "numba"):
        m = sys.modules.get(mod)
        if m is not None:
            v[mod] = getattr(m, "__version__", "?")
    return v


def _gemm(backend):
    """Which library multiplies the CPU backend's large matrices (``DLPRIMER_BLAS``: "mkl" or
    "numpy"; the loaded pools in ``blas`` do not say which one dlprimer calls); None for a
    device backend."""
    if getattr(backend, "name", "cpu") != "cpu":
        return None
    from ..backend import blas
    return blas.active()


def fingerprint(backend=None) -> dict:
    """The environment now. ``load_end`` is filled by :func:`finish` when the
    measurement is over; ``gpu`` is None without a usable GPU."""
    from .. import __version__
    from ..backend import device_info
    pools = thread_pools()
    blas = sorted({f"{p['library']} {p['version']}" for p in pools if p["api"] == "blas"})
    return {"cpu": cpu_model(), "cores": cpu_cores(), "cpu_count": os.cpu_count(),
            "load_start": _loads(), "load_end": None,
            "thread_pools": pools, "blas": blas, "gemm": _gemm(backend),
            "backend": getattr(backend, "name", None), "gpu": device_info(),
            "platform": platform.platform(), "versions": _versions(),
            "dlprimer": __version__, "git_commit": git_commit(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def finish(fp: dict) -> dict:
    """``fp`` with the load average at the end of the measurement."""
    fp["load_end"] = _loads()
    return fp


def describe(fp: dict) -> str:
    """One line for a table's or page's header."""
    if not fp:
        return ""
    pools = ", ".join(f"{p['library']} x{p['threads']}" for p in fp.get("thread_pools", []))
    load = lambda v: "-" if not v else f"{v[0]:.2f}"  # noqa: E731
    gpu = fp.get("gpu")
    parts = [fp.get("cpu", "?"), f"{fp.get('cores')} cores",
             f"load {load(fp.get('load_start'))} -> {load(fp.get('load_end'))}",
             f"threads: {pools or 'none'}"]
    if fp.get("gemm"):
        parts.append(f"GEMM {fp['gemm']}")
    if gpu:
        parts.append(f"GPU {gpu.get('name')} (driver {gpu.get('driver')}, CUDA {gpu.get('runtime')}, "
                     f"CuPy {gpu.get('cupy')})")
    parts.append(f"dlprimer {fp.get('dlprimer')}" + (f" @ {fp['git_commit']}" if fp.get("git_commit") else ""))
    return "; ".join(parts)
