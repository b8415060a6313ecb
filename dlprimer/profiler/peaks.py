"""Machine peaks for the roofline, measured on the backend in use, once per run.

* memory bandwidth: a copy of a buffer larger than any cache (``COPY_BYTES``), which
  reads and writes it once, so 2 x its size per copy, divided by the copy's time;
* compute: a square float32 matmul of size ``MATMUL_N``, 2 n^3 FLOPs per call.

Each is timed ``repeats`` times with ``backend.timer()`` (``perf_counter`` on the
CPU, CUDA events on the GPU) after one untimed call, and kept as a record (median,
95% interval); the peak is taken from the *fastest* run (the machine's best, as a
roof should be), and the median is kept beside it. Results are cached per backend
for the life of the process (``refresh=True`` measures again), and
:func:`dlprimer.profiler.profile` records them in the report's fingerprint.
"""
from __future__ import annotations

from ..measure import summarize

COPY_BYTES = 64 * 2**20
MATMUL_N = 1024
_CACHE: dict = {}


def _timed(backend, fn, repeats):
    fn()
    out = []
    for _ in range(repeats):
        t = backend.timer()
        with t:
            fn()
        out.append(t.elapsed)
    return out


def measure_peaks(backend, repeats: int = 7, copy_bytes: int = COPY_BYTES,
                  matmul_n: int = MATMUL_N) -> dict:
    """Measure the copy bandwidth (bytes/s) and matmul rate (FLOP/s) on ``backend``."""
    for name, v in (("repeats", repeats), ("copy_bytes", copy_bytes), ("matmul_n", matmul_n)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"measure_peaks: {name} must be a positive int, got {v!r}")
    xp = backend.xp
    n = max(copy_bytes // 4, 1)
    src = xp.ones(n, dtype="float32")
    dst = xp.empty_like(src)
    copy = _timed(backend, lambda: xp.copyto(dst, src), repeats)
    a = xp.ones((matmul_n, matmul_n), dtype="float32")
    b = xp.ones((matmul_n, matmul_n), dtype="float32")
    c = xp.empty_like(a)
    mm = _timed(backend, lambda: xp.matmul(a, b, out=c), repeats)
    moved, flops = 2 * 4 * n, 2 * matmul_n ** 3
    return {"bandwidth": moved / min(copy), "flops": flops / min(mm),
            "bandwidth_median": moved / summarize(copy).median,
            "flops_median": flops / summarize(mm).median,
            "copy_time": summarize(copy).to_dict(), "matmul_time": summarize(mm).to_dict(),
            "copy_bytes": moved, "matmul_n": matmul_n, "dtype": "float32",
            "ridge": (flops / min(mm)) / (moved / min(copy)), "backend": backend.name}


def machine_peaks(backend, refresh: bool = False) -> dict:
    """The peaks of ``backend`` measured once per process (see :func:`measure_peaks`);
    ``ridge`` is the arithmetic intensity (FLOP/byte) where the roofs meet."""
    key = backend.name
    if refresh or key not in _CACHE:
        _CACHE[key] = measure_peaks(backend)
    return _CACHE[key]
