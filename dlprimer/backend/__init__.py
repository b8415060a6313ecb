"""Backend selection: ``set_backend``, ``get_backend``, ``use_backend``.

The default comes from the environment variable ``DLPRIMER_BACKEND`` (``cpu``,
``cuda`` or ``auto``), else ``auto``: CUDA when CuPy and a usable GPU are
present, the CPU otherwise. This package is the only place that imports CuPy.
"""
from __future__ import annotations

import contextlib
import os

from . import blas
from .base import Backend, MemoryMeter, Timer
from .blas import matmul_for  # the CPU's products through NumPy's BLAS or MKL (DLPRIMER_BLAS)
from .cpu import CPUBackend
from .unfused import adopt_backend, fusion, fusion_enabled

NAMES = ("cpu", "cuda", "auto")

_instances: dict[str, Backend] = {}
_current: Backend | None = None
_cuda_probe: str | None | bool = False  # False: not probed yet; None: usable; str: why not
_seed: int | None = None  # the last manual_seed, applied to backends created later


def cuda_unavailable_reason() -> str | None:
    """None when CUDA is usable, else a sentence saying which check failed."""
    global _cuda_probe
    if _cuda_probe is not False:
        return _cuda_probe
    reason = None
    try:
        import cupy  # noqa: F401
    except Exception as e:  # ImportError, or a broken install raising anything
        reason = (f"CuPy is not installed or failed to import ({type(e).__name__}: {e}); "
                  "install it with `pip install dlprimer[cuda13]` (or [cuda12])")
    if reason is None:
        try:
            import cupy
            version = cupy.cuda.runtime.driverGetVersion()
            if version == 0:
                reason = "no NVIDIA driver is loaded (driver version 0)"
        except Exception as e:
            reason = f"no usable NVIDIA driver ({type(e).__name__}: {e})"
    if reason is None:
        try:
            import cupy
            n = cupy.cuda.runtime.getDeviceCount()
            if n < 1:
                reason = "the NVIDIA driver reports no CUDA device"
        except Exception as e:
            reason = f"no CUDA device found ({type(e).__name__}: {e})"
    _cuda_probe = reason
    return reason


def cuda_available() -> bool:
    """True when CuPy imports, a driver is loaded and at least one device is visible."""
    return cuda_unavailable_reason() is None


def _make(name: str) -> Backend:
    if name == "cpu":
        try:   # MKL (when selected) loads now, before a thread limit, so the limit covers it
            blas.load()
        except ValueError as e:   # a bad DLPRIMER_BLAS, not a bad DLPRIMER_BACKEND
            raise RuntimeError(f"the CPU backend cannot start: {e}") from None
        from . import jit
        if jit.enabled():
            from .jit.backend import JitCPUBackend
            return JitCPUBackend()
        return CPUBackend()
    reason = cuda_unavailable_reason()
    if reason is not None:
        raise RuntimeError(
            f"backend 'cuda' is not usable: {reason}. Fall back with "
            "dp.set_backend('cpu') or DLPRIMER_BACKEND=cpu, or use 'auto'.")
    from .cuda import CUDABackend  # noqa: WPS433 (only reached with a usable GPU)
    return CUDABackend()


def _resolve_name(name) -> str:
    if isinstance(name, Backend):
        return name.name
    if not isinstance(name, str) or name.lower() not in NAMES:
        raise ValueError(f"unknown backend {name!r}; valid backends are: {', '.join(NAMES)}")
    name = name.lower()
    if name == "auto":
        return "cuda" if cuda_available() else "cpu"
    return name


def backend_for(name) -> Backend:
    """The (single) Backend instance for a name or Backend; ``None`` gives the current one."""
    if name is None:
        return get_backend()
    if isinstance(name, Backend):
        return name
    key = _resolve_name(name)
    b = _instances.get(key)
    if b is None:
        b = _instances[key] = _make(key)
        if _seed is not None:
            b.manual_seed(_seed)
        adopt_backend(b)  # the fusion switch: created inside `dp.fusion(False)`, starts unfused
    return b


def live_backends() -> dict[str, Backend]:
    """The backends created so far, by name ("cpu", "cuda")."""
    return dict(_instances)


def global_seed() -> int | None:
    """The last ``manual_seed`` (applied to backends created later), or None."""
    return _seed


def set_global_seed(seed: int | None) -> None:
    """Restore the seed later backends start from (a training checkpoint's), without
    reseeding the live ones."""
    global _seed
    _seed = None if seed is None else int(seed)


def seed_all(seed: int):
    """Seed every backend's random stream, including backends created later."""
    global _seed
    _seed = int(seed)
    for b in _instances.values():
        b.manual_seed(_seed)


def set_backend(name) -> Backend:
    """Make ``name`` ('cpu', 'cuda' or 'auto') the current backend and return it."""
    global _current
    _current = backend_for(name)
    return _current


def get_backend() -> Backend:
    """The current backend (initialised from DLPRIMER_BACKEND on first use)."""
    global _current
    if _current is None:
        env = os.environ.get("DLPRIMER_BACKEND", "auto")
        try:
            _current = backend_for(env)
        except ValueError as e:
            raise ValueError(f"DLPRIMER_BACKEND={env!r}: {e}") from None
    return _current


@contextlib.contextmanager
def use_backend(name):
    """Scoped ``set_backend``: the previous backend is restored on exit."""
    global _current
    prev = _current
    _current = backend_for(name)
    try:
        yield _current
    finally:
        _current = prev


def backend_of_array(a) -> Backend:
    """The backend whose library owns array ``a`` (NumPy arrays are the CPU's)."""
    cpu = backend_for("cpu")
    if cpu.is_array(a):
        return cpu
    if "cuda" in _instances and _instances["cuda"].is_array(a):
        return _instances["cuda"]
    mod = type(a).__module__.split(".")[0]
    if mod == "cupy":
        return backend_for("cuda")
    return cpu


__all__ = ["Backend", "MemoryMeter", "Timer", "set_backend", "get_backend", "use_backend",
           "cuda_available", "cuda_unavailable_reason", "backend_for", "backend_of_array",
           "matmul_for",
           "fusion", "fusion_enabled", "live_backends", "global_seed", "set_global_seed"]


def device_info() -> dict | None:
    """The GPU dlprimer would use (name, driver and runtime versions, CuPy's version),
    or None without a usable GPU; for the measurement fingerprint."""
    if not cuda_available():
        return None
    try:
        import cupy
        rt = cupy.cuda.runtime
        dev = cupy.cuda.Device()
        props = rt.getDeviceProperties(dev.id)
        name = props.get("name", b"?")
        return {"name": name.decode() if isinstance(name, bytes) else str(name),
                "compute_capability": dev.compute_capability,
                "memory_bytes": int(props.get("totalGlobalMem", 0)),
                "driver": rt.driverGetVersion(), "runtime": rt.runtimeGetVersion(),
                "cupy": cupy.__version__}
    except Exception as e:  # the fingerprint must never stop a measurement
        return {"name": f"unknown ({type(e).__name__}: {e})"}
