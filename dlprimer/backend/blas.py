"""Matrix products on the CPU: NumPy's BLAS, or Intel MKL's GEMM where it is installed.

NumPy's wheels carry OpenBLAS; PyTorch's CPU wheels carry MKL, which on a recent Xeon runs
a large MLP's GEMMs in 0.88-0.99x OpenBLAS's time and a 10-class head's in about half
(``benchmarks/test_gemm.py``), so a step against PyTorch compares BLAS libraries as much as
frameworks. The optional extra ``dlprimer[mkl]`` installs the ``mkl`` wheel; this module
then calls its ``cblas_sgemm`` / ``cblas_dgemm`` through ctypes for a 2-D float32/float64
product C = A B whose m*n*k reaches :data:`MIN_MNK`: the W x of the chapter's layer
h = sigma(W x + b) (Linear's forward, as x W^T) and both products of its backward
dL/dW = dL/dh . dh/dW (gW = gy^T x, gx = gy W). Everything else, and every product when MKL
is absent, is NumPy's ``matmul``.

Selection: ``DLPRIMER_BLAS=numpy|mkl|auto`` (default ``auto``: MKL when installed); another
value is a ValueError naming it. ``mkl`` without the package, or a library that fails to
load, warns once and stays on NumPy, never a crash.

Threads: MKL runs on the GNU OpenMP runtime (libgomp, ``MKL_THREADING_LAYER=GNU``), the
one PyTorch's wheel, scikit-learn and numba's ``omp`` layer use, so the process keeps one
OpenMP family; threadpoolctl sees ``libmkl_rt`` and ``dp.set_num_threads`` limits it. Intel's
own runtime (INTEL, MKL's default) returned wrong products with PyTorch imported first and
two threads (libgomp's ``omp_*`` symbols, global, answer for libiomp5's team); TBB needs a
libtbb this wheel set does not put on the loader's path, and MKL then exits the process.
Without a loadable libgomp the layer is SEQUENTIAL (one thread). ``MKL_THREADING_LAYER``
set to GNU or SEQUENTIAL is honoured; any other value is replaced, with a warning.
"""
from __future__ import annotations

import ctypes
import os
import warnings

import numpy as np

ENV = "DLPRIMER_BLAS"
CHOICES = ("numpy", "mkl", "auto")

#: m*n*k from which a product goes to MKL. Below it MKL's fixed cost per call (about 3 us
#: through ctypes against NumPy's 1) outweighs what it saves: one thread, float32, MKL/NumPy
#: was 1.9x at 64^3, 1.13x at 96^3 (0.9M), 0.92x at 128^3 (2.1M), 1.0x at 128x256x10
#: (0.3M) and 0.67x at 256x512x10 (1.3M); float64 1.5x, 0.99x, 0.87x, 0.79x, 0.60x.
MIN_MNK = 1 << 20

_ROW_MAJOR, _NO_TRANS, _TRANS = 101, 111, 112
_LAYERS = {"INTEL": 0, "SEQUENTIAL": 1, "GNU": 3}
_INT_MAX = 2**31 - 1   # MKL's LP64 interface: 32-bit dimensions


class _State:
    """What was chosen and loaded: one instance, filled by :func:`load`."""
    resolved = False
    choice = "auto"          # DLPRIMER_BLAS as read
    lib = None               # the ctypes handle of libmkl_rt, when loaded
    path = None
    version = None
    layer = None             # the MKL threading layer in use
    why = None               # why MKL is not used (None when it is)
    gemm = {}                # dtype (native float32, float64) -> cblas function


_state = _State()
_warned: set[str] = set()


def _warn_once(msg: str) -> None:
    if msg not in _warned:
        _warned.add(msg)
        warnings.warn(msg, RuntimeWarning, stacklevel=3)


def choice() -> str:
    """``DLPRIMER_BLAS`` lower-cased (``auto`` when unset); ValueError naming a bad value."""
    raw = os.environ.get(ENV, "auto")
    value = raw.strip().lower() or "auto"
    if value not in CHOICES:
        raise ValueError(f"{ENV}={raw!r} is not one of {', '.join(CHOICES)}")
    return value


def library_path() -> str | None:
    """``libmkl_rt.so.*`` from the installed ``mkl`` distribution's file list, or None."""
    import importlib.metadata as md
    try:
        dist = md.distribution("mkl")
    except md.PackageNotFoundError:
        return None
    for f in dist.files or ():
        if f.name.startswith("libmkl_rt.so"):
            path = dist.locate_file(f)
            if os.path.exists(path):
                return os.path.normpath(str(path))
    return None


def _pick_layer(libdir: str) -> str:
    """GNU when libgomp and MKL's GNU threading library load, else SEQUENTIAL. A layer
    MKL cannot open makes it print a fatal error and exit, so this is checked first."""
    asked = os.environ.get("MKL_THREADING_LAYER", "").strip().upper()
    if asked == "SEQUENTIAL":
        return asked
    if asked and asked != "GNU":
        _warn_once(f"MKL_THREADING_LAYER={asked!r} is not used by dlprimer's MKL path "
                   "(GNU or SEQUENTIAL are: Intel's OpenMP beside PyTorch's libgomp gave "
                   "wrong products); using GNU")
    if not any(f.startswith("libmkl_gnu_thread.so") for f in os.listdir(libdir)):
        return "SEQUENTIAL"
    try:   # the GNU layer's one dependency outside MKL (MKL's own libraries need each other)
        ctypes.CDLL("libgomp.so.1")
    except OSError:
        return "SEQUENTIAL"
    return "GNU"


def _bind(lib) -> dict:
    ci, vp = ctypes.c_int, ctypes.c_void_p
    fns = {}
    for dt, name, real in ((np.dtype(np.float32), "cblas_sgemm", ctypes.c_float),
                           (np.dtype(np.float64), "cblas_dgemm", ctypes.c_double)):
        fn = getattr(lib, name)
        fn.restype = None
        fn.argtypes = [ci, ci, ci, ci, ci, ci, real, vp, ci, vp, ci, real, vp, ci]
        fns[dt] = fn
    return fns


def _open(path: str) -> None:
    """Load libmkl_rt, fix its threading layer, bind the GEMMs and check one product."""
    libdir = os.path.dirname(path)
    layer = _pick_layer(libdir)
    lib = ctypes.CDLL(path)
    lib.MKL_Set_Threading_Layer.restype = ctypes.c_int
    lib.MKL_Set_Threading_Layer(_LAYERS[layer])
    buf = ctypes.create_string_buffer(256)
    lib.MKL_Get_Version_String(buf, 256)
    gemm = _bind(lib)
    _state.lib, _state.path, _state.layer, _state.gemm = lib, path, layer, gemm
    _state.version = buf.value.decode(errors="replace").strip()
    _apply_thread_policy()
    a = np.arange(6, dtype=np.float64).reshape(2, 3)
    got = _gemm(a, a.T, None, min_mnk=0)
    if got is None or not np.array_equal(got, a @ a.T):
        raise RuntimeError(f"a 2x3 test product through MKL gave {got!r}")


def _apply_thread_policy() -> None:
    """MKL starts with the process's thread cap: ``dp.set_num_threads(n)``'s when one was
    set; else ``MKL_NUM_THREADS`` / ``OMP_NUM_THREADS`` when set (MKL reads them); else the
    smallest BLAS pool already loaded (a ``threadpool_limits`` set before MKL was loaded)."""
    from ..measure import threads
    n = threads._policy
    if n is None and not any(os.environ.get(v) for v in ("MKL_NUM_THREADS", "OMP_NUM_THREADS")):
        from threadpoolctl import threadpool_info
        sizes = [p["num_threads"] for p in threadpool_info()
                 if p.get("user_api") == "blas" and p.get("internal_api") != "mkl"]
        n = min(sizes) if sizes else None
    if n:
        _state.lib.MKL_Set_Num_Threads(int(n))


def load() -> bool:
    """Resolve ``DLPRIMER_BLAS`` once: True when MKL's GEMM is in use. Warns once (never
    raises) when MKL was asked for and cannot be used."""
    if _state.resolved:
        return _state.why is None
    _state.choice = choice()
    _state.resolved = True
    if _state.choice == "numpy":
        _state.why = f"{ENV}=numpy"
        return False
    if _state.lib is not None:   # loaded before a reset: a library stays loaded
        _state.why = None
        return True
    path = library_path()
    if path is None:
        _state.why = "the mkl package is not installed (pip install 'dlprimer[mkl]')"
        if _state.choice == "mkl":
            _warn_once(f"{ENV}=mkl but {_state.why}; matrix products use NumPy")
        return False
    try:
        _open(path)
    except Exception as e:  # a broken or foreign library: NumPy, with one warning
        _state.lib, _state.gemm, _state.layer, _state.version = None, {}, None, None
        _state.why = f"{path} failed to load ({type(e).__name__}: {e})"
        _warn_once(f"MKL's GEMM is not used: {_state.why}; matrix products use NumPy")
        return False
    _state.why = None
    return True


def reset() -> None:
    """Read ``DLPRIMER_BLAS`` again on the next product (for tests and long sessions)."""
    _state.resolved = False
    _state.why = None


def active() -> str:
    """``"mkl"`` or ``"numpy"``: which library runs the products above the threshold."""
    return "mkl" if load() else "numpy"


def info() -> dict:
    """The selection and what it resolved to (``dlprimer doctor``, the benchmarks' tags)."""
    on = load()
    return {"choice": _state.choice, "active": "mkl" if on else "numpy",
            "why_not_mkl": _state.why, "library": _state.path, "version": _state.version,
            "threading_layer": _state.layer if on else None,
            "min_mnk": MIN_MNK}


def _address(a) -> int:
    """Address of a C-contiguous array's first element, through the buffer protocol (about
    0.6 us against 1.4 for ``a.ctypes.data``, paid three times a product); a read-only
    array takes ``a.ctypes.data``."""
    try:
        return ctypes.addressof(ctypes.c_char.from_buffer(a))
    except (TypeError, ValueError, BufferError):
        return a.ctypes.data


def _operand(a, rows, cols):
    """(transpose flag, leading dimension, address) of a 2-D operand, or None when it is
    neither C-contiguous nor a transposed C-contiguous array."""
    flags = a.flags
    if flags.c_contiguous:
        return _NO_TRANS, max(1, cols), _address(a)
    if flags.f_contiguous:
        return _TRANS, max(1, rows), _address(a.T)
    return None


def _result(out, a, b, m, n, dt):
    """The C-contiguous (m, n) array MKL writes: a new one, or ``out`` when MKL can write
    it (right shape and dtype, C-contiguous, writable, not overlapping an operand)."""
    if out is None:
        return np.empty((m, n), dt)
    if type(out) is not np.ndarray or out.shape != (m, n) or out.dtype != dt:
        return None
    flags = out.flags
    if (not flags.c_contiguous or not flags.writeable or np.may_share_memory(out, a)
            or np.may_share_memory(out, b)):
        return None
    return out


def _gemm(a, b, out, min_mnk=None):
    """``a @ b`` through MKL, or None when this product is not MKL's to do (below
    ``min_mnk``, default :data:`MIN_MNK`; an empty or mismatched one; a layout, dtype or
    ``out`` MKL cannot take)."""
    m, k = a.shape
    n = b.shape[1]
    mnk = m * n * k
    if (mnk < (MIN_MNK if min_mnk is None else min_mnk) or mnk == 0 or k != b.shape[0]
            or max(m, n, k) > _INT_MAX):
        return None
    dt = a.dtype
    fn = _state.gemm.get(dt)   # byte-swapped or other dtypes: None
    if fn is None or b.dtype != dt or type(a) is not np.ndarray or type(b) is not np.ndarray:
        return None
    la, lb = _operand(a, m, k), _operand(b, k, n)
    if la is None or lb is None:
        return None
    c = _result(out, a, b, m, n, dt)
    if c is None:
        return None
    fn(_ROW_MAJOR, la[0], lb[0], m, n, k, 1.0, la[2], la[1], lb[2], lb[1], 0.0,
       _address(c), max(1, n))
    return c


def mkl_matmul(a, b, out=None):
    """``np.matmul(a, b, out=out)`` with 2-D float32/float64 products of at least
    :data:`MIN_MNK` multiply-adds computed by MKL's ``cblas_?gemm`` (operands C-contiguous
    or transposed views of such, ``out`` C-contiguous and not overlapping them); any other
    product is NumPy's."""
    if b.ndim == 2 and a.size * b.shape[1] >= MIN_MNK and a.ndim == 2:   # small: two tests
        c = _gemm(a, b, out)
        if c is not None:
            return c
    return np.matmul(a, b) if out is None else np.matmul(a, b, out=out)


def matmul_for(xp):
    """The matmul of the backend whose array module is ``xp``: for NumPy :func:`mkl_matmul`
    when MKL is in use, else ``numpy.matmul`` itself (nothing added per product); any other
    module's own ``matmul`` (CuPy's). ``ops._util.mm`` calls it once per product."""
    if xp is not np:
        return xp.matmul
    if _state.resolved:
        return mkl_matmul if _state.why is None else np.matmul
    return mkl_matmul if load() else np.matmul
