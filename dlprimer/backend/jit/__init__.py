"""JIT-compiled CPU kernels (numba): the switch, the kernel cache and the fallback.

``DLPRIMER_JIT=0`` turns the JIT off: the CPU backend is then the NumPy ufunc-chain
backend (``backend/cpu.py``), which is also the reference the tests compare against.
numba is imported on the first kernel call, not with dlprimer. Kernels compile once per
dtype and are cached on disk (``cache=True``): in ``__pycache__`` next to this package, or,
where that is read-only, under ``$XDG_CACHE_HOME/dlprimer/numba`` (``NUMBA_CACHE_DIR``,
when set, wins). A kernel that fails to compile (old numba, unsupported CPU) warns once,
naming the kernel and the reason, and its op runs on the NumPy path from then on.
:func:`compile_stats` says what this process compiled (and how long it took) and what it
loaded from the cache; :func:`summary` says it in one line (``dlprimer primer``, ``doctor``).
"""
from __future__ import annotations

import functools
import gc
import os
import tempfile
import time
import warnings

_PKG_DIR = os.path.dirname(os.path.abspath(__file__))
_kernels = None            # the kernels module once imported; False when numba is unusable
_failed: dict[str, str] = {}
_ready: dict = {}          # kernel name -> its dispatcher, for kernels that have not failed
_compiled: list[tuple[str, str, float]] = []   # (kernel, argument types, seconds) this process
_untimed: list[str] = []   # why compiles cannot be timed here (a numba without its events)
NO = object()              # call()'s answer when the caller must take the NumPy path


def enabled() -> bool:
    """False when the environment says ``DLPRIMER_JIT=0`` (or ``off``/``false``)."""
    return os.environ.get("DLPRIMER_JIT", "1").strip().lower() not in ("0", "off", "false", "no")


def cache_dir_for(pkg_dir: str = _PKG_DIR) -> str | None:
    """The directory to hand numba as NUMBA_CACHE_DIR: None when numba's default (beside the
    sources) is writable or the user set one, else a per-user cache directory."""
    if os.environ.get("NUMBA_CACHE_DIR"):
        return None
    pycache = os.path.join(pkg_dir, "__pycache__")
    probe = pycache if os.path.isdir(pycache) else pkg_dir
    if os.access(probe, os.W_OK):
        return None
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    if not os.access(base if os.path.isdir(base) else os.path.dirname(base), os.W_OK):
        base = tempfile.gettempdir()
    return os.path.join(base, "dlprimer", "numba")


def _load():
    global _kernels
    if _kernels is None:
        where = cache_dir_for()
        if where is not None:
            os.environ["NUMBA_CACHE_DIR"] = where
        try:
            import numba.core.config as numba_config
            if where is not None:
                numba_config.CACHE_DIR = where
            from . import kernels
            _kernels = kernels
        except Exception as e:  # ImportError, or a numba/llvmlite that cannot run here
            _kernels = False
            warnings.warn(f"dlprimer JIT: numba is not usable ({type(e).__name__}: {e}); "
                          "CPU ops run as NumPy ufunc chains (pip install 'dlprimer[jit]', "
                          "or DLPRIMER_JIT=0 to choose that path)", RuntimeWarning,
                          stacklevel=3)
        else:
            try:
                _watch_compiles()
            except Exception as e:   # a numba without compile events: kernels run, untimed
                _untimed.append(f"{type(e).__name__}: {e}")
    return _kernels


def kernel(name: str):
    """Kernel ``name``'s numba dispatcher, or None when numba is unusable or the kernel
    failed to compile before. Glue that calls it directly (``_ready.get(name) or
    kernel(name)``: no call of :func:`call` per op) calls it inside ``try`` and hands an
    exception to :func:`fail`, as :func:`call` does."""
    k = _ready.get(name)
    if k is None and name not in _failed:
        ks = _kernels or _load()
        if ks:
            k = _ready[name] = getattr(ks, name)
    return k


def fail(name: str, e: Exception, stacklevel: int = 3):
    """Record that kernel ``name`` failed to compile with ``e`` and warn, once: its op runs
    on the NumPy path from now on. Returns NO."""
    _failed[name] = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
    _ready.pop(name, None)
    warnings.warn(f"dlprimer JIT: kernel {name!r} failed to compile ({_failed[name]}); "
                  "it runs on the NumPy path from now on", RuntimeWarning,
                  stacklevel=stacklevel)
    return NO


def call(name: str, *args):
    """Run kernel ``name``; ``NO`` when it is unavailable (then nothing was written)."""
    k = _ready.get(name) or kernel(name)
    if k is None:
        return NO
    try:
        return k(*args)
    except Exception as e:  # a compile error: numba typing/lowering, LLVM, unsupported CPU
        return fail(name, e, 4)


def bind(name: str, *args, free=()):
    """Kernel ``name`` bound to ``args``: a callable of no arguments that runs the compiled
    code for exactly these argument types on these objects, without numba's per-call
    dispatch (typing every argument: ~0.2 us each, more than a small kernel's work); NO
    when the kernel is unavailable. The caller must keep the arguments as they are (arrays
    may change in value, never be replaced): the compiled code trusts their types.
    ``free``: examples of trailing scalar arguments that the caller passes at each call
    instead (their types fix the signature; a Python float is converted to it as
    ``numpy.float32(x)`` would), for values that change from call to call."""
    if name in _failed:
        return NO
    ks = _kernels or _load()
    if not ks:
        return NO
    disp = getattr(ks, name)
    try:
        entry = disp.compile(tuple(disp.typeof_pyval(a) for a in args + tuple(free)))
    except Exception as e:  # as in call(): a compile error takes the NumPy path
        return fail(name, e, 4)
    return functools.partial(entry, *args)


def failed() -> dict[str, str]:
    """Kernels that fell back to NumPy, with the reason (a copy)."""
    return dict(_failed)


def _watch_compiles():
    """Time each compile of a kernel of this package (numba's ``numba:compile`` event; a
    helper compiled inside a kernel's compile counts in that kernel's time). The cyclic
    garbage collector pauses for the outermost compile: numba's many short-lived objects
    set off collections, some of the whole heap, and the next collections after the compile
    take its garbage (primer's 12 signatures: see benchmarks/test_jit_compile.py)."""
    from numba.core import event

    class _CompileTimer(event.Listener):
        def __init__(self):
            self._starts = []
            self._gc_was_on = False

        def on_start(self, ev):
            if not self._starts:
                self._gc_was_on = gc.isenabled()
                gc.disable()
            self._starts.append(time.perf_counter())

        def on_end(self, ev):
            seconds = time.perf_counter() - self._starts.pop()
            if not self._starts and self._gc_was_on:
                gc.enable()
            fn = getattr(ev.data.get("dispatcher"), "py_func", None)
            if not self._starts and getattr(fn, "__module__", "").startswith(__name__):
                args = ", ".join(str(a) for a in ev.data.get("args", ()))
                _compiled.append((fn.__name__, args, seconds))

    event.register("numba:compile", _CompileTimer())


def compile_stats() -> dict:
    """What the JIT did in this process: ``compiled`` (kernel, argument types, seconds) for
    each signature compiled here, ``compile_s`` their total, ``loaded`` how many signatures
    came from the disk cache, ``cache_dir`` where that cache is, ``failed`` the kernels that
    fell back to NumPy (name: reason). Empty counts when numba was never used."""
    loaded, where = 0, None
    if _kernels:
        from numba.core.registry import CPUDispatcher
        for d in vars(_kernels).values():
            if isinstance(d, CPUDispatcher):
                loaded += sum(d.stats.cache_hits.values())
                where = where or d.stats.cache_path
    return {"compiled": list(_compiled), "compile_s": sum((c[2] for c in _compiled), 0.0),
            "loaded": loaded, "cache_dir": where, "failed": failed()}


def summary() -> str:
    """One line on the JIT's first-run cost: what compiled and how long it took, or that the
    cache served it; says so when the JIT is off or numba unusable."""
    if not enabled():
        return "JIT off (DLPRIMER_JIT=0): the CPU ops ran as NumPy ufunc chains"
    if _kernels is False:
        return "JIT unavailable (numba not usable): the CPU ops ran as NumPy ufunc chains"
    st = compile_stats()
    n = len(st["compiled"])
    if _untimed:
        line = f"JIT compile: not measured ({_untimed[0]})"
    elif n:
        line = (f"JIT compile: {st['compile_s']:.1f} s for {n} kernel signature"
                f"{'s' if n != 1 else ''} (first run; cached for later runs in "
                f"{st['cache_dir']})")
        if st["loaded"]:
            line += f"; {st['loaded']} loaded from that cache"
    elif st["loaded"]:
        line = (f"JIT compile: none, {st['loaded']} kernel signatures loaded from the cache "
                f"({st['cache_dir']})")
    else:
        line = "JIT compile: no kernel used yet"
    if st["failed"]:
        line += f"; fell back to NumPy: {', '.join(sorted(st['failed']))}"
    return line
