"""What the CUDA stack on this machine is: versions, the GPU, whether CuPy's NVRTC can
compile our kernels. For ``dlprimer doctor``; the only place besides ``cuda.py`` that
asks CuPy, and every probe here answers with a string when it fails (never raises)."""
from __future__ import annotations


def _try(fn):
    try:
        return fn()
    except Exception as e:  # a probe reports what failed; doctor prints it
        return f"unavailable ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"


def _cuda_version(v):
    return f"{v // 1000}.{v % 1000 // 10}" if isinstance(v, int) and v > 0 else str(v)


def cuda_stack() -> dict:
    """Versions of CuPy, the CUDA runtime and driver, NVRTC and NCCL (strings)."""
    try:
        import cupy
    except Exception as e:
        return {"cupy": f"not installed ({type(e).__name__}: {e})"}
    out = {"cupy": cupy.__version__}
    out["cuda_runtime"] = _try(lambda: _cuda_version(cupy.cuda.runtime.runtimeGetVersion()))
    out["cuda_driver"] = _try(lambda: _cuda_version(cupy.cuda.runtime.driverGetVersion()))
    out["nvrtc"] = _try(lambda: ".".join(map(str, cupy.cuda.nvrtc.getVersion())))

    def nccl():
        import warnings
        with warnings.catch_warnings():  # CuPy warns at length when libnccl is absent
            warnings.simplefilter("ignore")
            from cupy.cuda import nccl as n
        if not getattr(n, "available", True) or not hasattr(n, "get_version"):
            return "not installed (libnccl not found; extras nccl12 / nccl13)"
        v = n.get_version()
        return f"{v // 10000}.{v // 100 % 100}.{v % 100}" if v >= 10000 else str(v)
    out["nccl"] = _try(nccl)
    return out


def gpus() -> list[dict]:
    """Name, compute capability, SMs and memory of each visible GPU (empty without one)."""
    import cupy
    out = []
    for i in range(cupy.cuda.runtime.getDeviceCount()):
        props = cupy.cuda.runtime.getDeviceProperties(i)
        with cupy.cuda.Device(i):
            free, total = cupy.cuda.runtime.memGetInfo()
        name = props["name"]
        out.append({"index": i, "name": name.decode() if isinstance(name, bytes) else str(name),
                    "compute_capability": f"{props['major']}.{props['minor']}",
                    "sm_count": int(props["multiProcessorCount"]),
                    "memory_total_GiB": round(total / 2**30, 2),
                    "memory_free_GiB": round(free / 2**30, 2)})
    return out


def device_arch() -> str | None:
    """The current GPU's sm_XY digits, or None without a usable GPU."""
    try:
        import cupy
        return str(cupy.cuda.Device().compute_capability)
    except Exception:
        return None
