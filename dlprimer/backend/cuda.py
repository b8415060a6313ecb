"""The CuPy backend: arrays on an NVIDIA GPU, dlprimer's own kernels for the fused ops.

Matmul, reductions and everything else ``xp`` offers run through CuPy; the fused
ops of the Backend contract launch the hand-written kernels of
``kernels/*.cu`` (shipped as ``dlprimer/kernels/``), compiled by NVRTC (through ``cupy.RawModule``) the first
time a family is used and cached by CuPy on disk and here in memory. Timing uses
CUDA events; memory is CuPy's pool, with the high-water mark tracked by an
allocator wrapper (CuPy keeps no peak of its own).

This module is imported only when a usable GPU is present (``backend._make``).
"""
from __future__ import annotations

import contextlib
import math

import cupy as cp
import cupyx
import numpy as np

from .. import _dtype
from . import _kernels
from .base import Backend, MemoryMeter, Timer

_BLOCK = 256
#: fused update methods whose kernels read the skip flag (found_inf) themselves
_FLAGGED_UPDATES = ("sgd_update", "adam_update", "lamb_update", "lars_update")
_FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
#: float16 / bfloat16: the activations, bias+GELU, dropout and the fused classifier take
#: them, float math inside
_HALF_DTYPES = _dtype.HALF


def _acc(dtype):
    """The NumPy type a kernel over ``dtype`` computes in (kernels/half.cuh's acc_t):
    float32 for float16 / bfloat16, the dtype itself otherwise."""
    return np.float32 if np.dtype(dtype) in _HALF_DTYPES else np.dtype(dtype).type


class CUDATimer(Timer):
    """Elapsed device time between two CUDA events recorded on the current stream.

    Queued work from before ``__enter__`` finishes before the start event fires,
    so it is not counted; ``__exit__`` waits for the end event only.
    """

    __slots__ = ("_start", "_end")

    def __enter__(self):
        self._start = cp.cuda.Event()
        self._end = cp.cuda.Event()
        self._start.record()
        return self

    def __exit__(self, *exc):
        self._end.record()
        self._end.synchronize()
        self.elapsed = cp.cuda.get_elapsed_time(self._start, self._end) / 1e3
        return False


class CUDAMemoryMeter(MemoryMeter):
    """Current and peak bytes in use in CuPy's default memory pool.

    ``current()`` is ``pool.used_bytes()`` (blocks handed out, rounded to CuPy's
    512-byte granularity). Usage only grows inside ``malloc``, so the high-water
    mark is read right after each allocation by the allocator this meter installs
    (``cupy.cuda.set_allocator``); ``reset_peak()`` starts a new phase at the
    current usage. Memory outside the pool (cuBLAS workspaces, the CUDA context)
    is not counted.
    """

    def __init__(self):
        self.pool = cp.get_default_memory_pool()
        self._peak = self.pool.used_bytes()
        cp.cuda.set_allocator(self._malloc)

    #: while a CUDA graph is captured: every block handed out, kept for the graph's life
    capture_blocks: list | None = None

    def _malloc(self, size):
        mem = self.pool.malloc(size)
        used = self.pool.used_bytes()
        if used > self._peak:
            self._peak = used
        if self.capture_blocks is not None:
            self.capture_blocks.append(mem)
        return mem

    def current(self) -> int:
        return int(self.pool.used_bytes())

    def peak(self) -> int:
        return int(max(self._peak, self.pool.used_bytes()))

    def reset_peak(self):
        self._peak = self.pool.used_bytes()


#: The one meter of this process: ``set_allocator`` is process-wide, so a second
#: meter would take the allocator over and leave the first one's peak blind.
_shared_meter: CUDAMemoryMeter | None = None


def _memory_meter() -> CUDAMemoryMeter:
    global _shared_meter
    if _shared_meter is None:
        _shared_meter = CUDAMemoryMeter()
    return _shared_meter


class CUDABackend(Backend):
    name = "cuda"
    xp = cp
    device_queue = True
    #: half-precision kernels (kernels/half.cuh): float16 / bfloat16 in and out, float math
    half_fused = frozenset({"relu", "leaky_relu", "elu", "gelu", "silu", "sigmoid", "tanh",
                            "bias_gelu", "dropout", "cross_entropy"})

    def __init__(self):
        super().__init__()
        self.memory = _memory_meter()
        self.device = cp.cuda.Device()
        attrs = self.device.attributes
        self._sm_count = int(attrs["MultiProcessorCount"])
        #: full occupancy at _BLOCK threads (a kernel's own cap comes from the occupancy API)
        self._max_blocks = self._sm_count * (int(attrs["MaxThreadsPerMultiProcessor"]) // _BLOCK)
        self._modules: dict[str, cp.RawModule] = {}
        self._functions: dict[tuple, object] = {}
        self._segment_tables: dict[tuple, tuple] = {}
        self._occupancy: dict[tuple, int] = {}
        self._no_skip = None  # a device 0 for the update kernels' skip flag, made on first use
        self._skip_flag = None  # found_inf while inside skip_updates_if

    # -- device ---------------------------------------------------------------------
    def synchronize(self):
        cp.cuda.get_current_stream().synchronize()

    def timer(self) -> Timer:
        return CUDATimer(self)

    # -- arrays ---------------------------------------------------------------------
    def asarray(self, data, dtype=None):
        return cp.asarray(data, dtype=dtype)

    def to_numpy(self, a):
        return cp.asnumpy(a)

    def is_array(self, a):
        return isinstance(a, cp.ndarray)

    def from_dlpack(self, obj):
        return cp.from_dlpack(obj)

    # -- random -----------------------------------------------------------------------
    # randn/rand draw on the host with the CPU backend's Philox stream for the same
    # key, then copy: initialisation is identical across backends. The hot random
    # path (dropout) runs on the device through the counter hash.
    def _generator(self, key):
        seed, counter = self.next_key() if key is None else key
        return np.random.Generator(np.random.Philox(key=(seed << 64) | counter))

    def randn(self, shape, dtype, key=None):
        return cp.asarray(self._generator(key).standard_normal(shape, dtype=dtype))

    def rand(self, shape, dtype, key=None):
        return cp.asarray(self._generator(key).random(shape, dtype=dtype))

    def counter_uniform(self, key, n):
        """n float32 uniforms from the splitmix64 hash of (seed, counter, index): the
        same bits as CPUBackend.counter_uniform."""
        out = cp.empty(int(n), cp.float32)
        self._launch(self._fn("dropout", "counter_uniform_fill"), out.size,
                     (out, np.int64(out.size), *self._key_args(key)))
        return out

    # -- primitives -------------------------------------------------------------------
    def scatter_add(self, target, index, values):
        cupyx.scatter_add(target, index, values)
        return target

    def erf(self, x, out=None):
        import cupyx.scipy.special as special
        y = special.erf(x)
        if out is None:
            return y
        out[...] = y
        return out

    # -- kernels: compile once, launch ----------------------------------------------------
    def _module(self, family):
        mod = self._modules.get(family)
        if mod is None:
            mod = cp.RawModule(code=_kernels.read_source(family),
                               options=_kernels.nvrtc_options(),
                               name_expressions=_kernels.name_expressions(family))
            self._modules[family] = mod
        return mod

    def _fn(self, family, kernel, dtype=None):
        key = (family, kernel, None if dtype is None else np.dtype(dtype))
        fn = self._functions.get(key)
        if fn is None:
            ctype = None if dtype is None else _kernels.ctype(family, kernel, np.dtype(dtype))
            try:
                fn = self._module(family).get_function(
                    _kernels.kernel_name(family, kernel, ctype))
            except cp.cuda.compiler.CompileException as e:
                raise _kernels.compile_error(family, str(e)) from None
            self._functions[key] = fn
        return fn

    def _blocks_per_sm(self, fn, block):
        """Resident blocks of ``fn`` per SM at ``block`` threads, from the CUDA occupancy
        API (registers and shared memory of the compiled kernel); cached per kernel."""
        key = (id(fn), block)
        occ = self._occupancy.get(key)
        if occ is None:
            from cupy_backends.cuda.api import driver
            occ = int(driver.occupancyMaxActiveBlocksPerMultiprocessor(fn.kernel.ptr, block, 0))
            occ = self._occupancy[key] = max(1, occ)
        return occ

    def _launch(self, fn, n, args, block=_BLOCK, grid=None, per_thread=1):
        """Launch over n elements; a grid-stride kernel gets one wave of resident blocks
        at most (occupancy API), each thread taking ``per_thread`` elements a turn."""
        if n <= 0:
            return
        if grid is None:
            want = -(-n // (block * per_thread))
            grid = max(1, min(want, self._blocks_per_sm(fn, block) * self._sm_count))
        fn((int(grid),), (int(block),), args)

    @staticmethod
    def _address(a):
        return a.data.ptr

    def _head(self, *arrays):
        """Elements before the first 16-byte boundary, the same for every array of a
        packed launch (kernels/vector.cuh), or -1 (all scalar) when they differ or are
        not float32 (only float is packed)."""
        item = arrays[0].itemsize
        mis = {self._address(a) % 16 for a in arrays}
        if item != 4 or len(mis) != 1:
            return np.int64(-1)
        m = mis.pop()
        return np.int64(-1) if m % item else np.int64(((16 - m) % 16) // item)

    def _empty_like(self, x):
        """An output for ``x`` with the same offset from a 16-byte boundary, so a slice
        that starts off a boundary still runs packed (a few bytes of padding)."""
        mis = self._address(x) % 16
        if mis == 0 or x.itemsize != 4 or mis % x.itemsize:
            return cp.empty_like(x)
        pad = 16 // x.itemsize
        buf = cp.empty(x.size + pad, x.dtype)
        off = ((mis - self._address(buf) % 16) % 16) // x.itemsize
        return buf[off:off + x.size].reshape(x.shape)

    def _packed(self, n, *arrays):
        """(head, elements per thread turn) of a packed elementwise launch."""
        head = self._head(*arrays)
        return head, (1 if head < 0 else 16 // arrays[0].itemsize)

    @staticmethod
    def _key_args(key):
        seed, counter = key
        return np.uint64(int(seed) % 2**64), np.uint64(int(counter) % 2**64)

    def _arrays(self, op, *named, same_shape=True, half=False):
        """Check (name, array) pairs: CuPy arrays of one float dtype (and one shape);
        returns them C-contiguous. ``half``: float16 / bfloat16 are accepted too."""
        dtypes = _FLOAT_DTYPES + (_HALF_DTYPES if half else ())
        out = []
        first = None
        for name, a in named:
            if not isinstance(a, cp.ndarray):
                raise TypeError(f"{op}: {name} must be a CuPy array on the GPU, got "
                                f"{type(a).__module__}.{type(a).__name__}")
            if a.dtype not in dtypes:
                raise TypeError(f"{op}: the CUDA kernels take "
                                f"{', '.join(d.name for d in dtypes)}; {name} is {a.dtype}")
            if first is None:
                first = (name, a)
            elif a.dtype != first[1].dtype:
                raise TypeError(f"{op}: {name} is {a.dtype} but {first[0]} is "
                                f"{first[1].dtype}")
            elif same_shape and a.shape != first[1].shape:
                raise ValueError(f"{op}: {name} has shape {a.shape} but {first[0]} has "
                                 f"shape {first[1].shape}")
            out.append(cp.ascontiguousarray(a).reshape(a.shape))  # keeps 0-d arrays 0-d
        return out

    def _unary(self, kernel, op, x, *scalars):
        (x,) = self._arrays(op, ("x", x), half=True)
        y = self._empty_like(x)
        T = _acc(x.dtype)
        head, per = self._packed(x.size, x, y)
        self._launch(self._fn("activations", kernel, x.dtype), x.size,
                     (x, y, np.int64(x.size), head, *(T(s) for s in scalars)), per_thread=per)
        return y

    def _binary(self, kernel, op, first_name, a, gy, *scalars):
        if isinstance(a, cp.ndarray) and isinstance(gy, cp.ndarray) and a.dtype != gy.dtype \
                and a.dtype in _HALF_DTYPES:
            gy = gy.astype(a.dtype)  # a half input's gradient is half
        a, gy = self._arrays(op, (first_name, a), ("gy", gy), half=True)
        gx = self._empty_like(a)
        T = _acc(a.dtype)
        head, per = self._packed(a.size, a, gy, gx)
        self._launch(self._fn("activations", kernel, a.dtype), a.size,
                     (a, gy, gx, np.int64(a.size), head, *(T(s) for s in scalars)),
                     per_thread=per)
        return gx

    @staticmethod
    def _approx(op, approximate):
        if approximate not in ("none", "tanh"):
            raise ValueError(f"{op}: approximate must be 'none' or 'tanh', got {approximate!r}")
        return approximate == "tanh"

    # -- fused activations -----------------------------------------------------------------
    def relu_forward(self, x):
        return self._unary("relu_forward", "relu_forward", x)

    def relu_backward(self, y, gy):
        return self._binary("relu_backward", "relu_backward", "y", y, gy)

    def leaky_relu_forward(self, x, negative_slope):
        return self._unary("leaky_relu_forward", "leaky_relu_forward", x, negative_slope)

    def leaky_relu_backward(self, x, gy, negative_slope):
        return self._binary("leaky_relu_backward", "leaky_relu_backward", "x", x, gy,
                            negative_slope)

    def elu_forward(self, x, alpha):
        return self._unary("elu_forward", "elu_forward", x, alpha)

    def elu_backward(self, x, gy, alpha):
        return self._binary("elu_backward", "elu_backward", "x", x, gy, alpha)

    def gelu_forward(self, x, approximate="none"):
        tanh = self._approx("gelu_forward", approximate)
        return self._unary("gelu_tanh_forward" if tanh else "gelu_erf_forward", "gelu_forward", x)

    def gelu_backward(self, x, gy, approximate="none"):
        tanh = self._approx("gelu_backward", approximate)
        return self._binary("gelu_tanh_backward" if tanh else "gelu_erf_backward",
                            "gelu_backward", "x", x, gy)

    def silu_forward(self, x):
        return self._unary("silu_forward", "silu_forward", x)

    def silu_backward(self, x, gy):
        return self._binary("silu_backward", "silu_backward", "x", x, gy)

    def sigmoid_forward(self, x):
        return self._unary("sigmoid_forward", "sigmoid_forward", x)

    def sigmoid_backward(self, y, gy):
        return self._binary("sigmoid_backward", "sigmoid_backward", "y", y, gy)

    def tanh_forward(self, x):
        return self._unary("tanh_forward", "tanh_forward", x)

    def tanh_backward(self, y, gy):
        return self._binary("tanh_backward", "tanh_backward", "y", y, gy)

    def _bias(self, op, x, b):
        """(x, b in x's math type): a half x takes a float32 (or half) bias, which the
        kernel reads as float (kernels/half.cuh); otherwise b must be x's dtype."""
        (x,) = self._arrays(op, ("x", x), half=True)
        (b,) = self._arrays(op, ("b", b), half=True)
        half = x.dtype in _HALF_DTYPES
        if b.dtype != x.dtype and not (half and b.dtype in (np.float32, *_HALF_DTYPES)):
            raise TypeError(f"{op}: b is {b.dtype} but x is {x.dtype}")
        if x.ndim < 1 or b.ndim != 1 or b.shape[0] != x.shape[-1]:
            raise ValueError(f"{op}: b must have shape ({x.shape[-1] if x.ndim else '?'},) "
                             f"to broadcast over the last axis of x {x.shape}; got {b.shape}")
        return x, b.astype(_acc(x.dtype), copy=False)

    def bias_gelu_forward(self, x, b, approximate="none"):
        """gelu(x + b); a half x: float math, y rounded once into x's dtype."""
        tanh = self._approx("bias_gelu_forward", approximate)
        x, b = self._bias("bias_gelu_forward", x, b)
        y = cp.empty_like(x)
        self._launch(self._fn("activations", "bias_gelu_forward", x.dtype), x.size,
                     (x, b, y, np.int64(x.size), np.int64(b.size), np.int32(tanh)))
        return y

    def bias_gelu_backward(self, x, b, gy, approximate="none"):
        """(gx, gb); for a half x, gx is rounded once into x's dtype and gb, summed in
        float from the unrounded float gx, comes back in b's dtype."""
        tanh = self._approx("bias_gelu_backward", approximate)
        b_dtype = getattr(b, "dtype", None)
        x, b = self._bias("bias_gelu_backward", x, b)
        if isinstance(gy, cp.ndarray) and gy.dtype != x.dtype and x.dtype in _HALF_DTYPES:
            gy = gy.astype(x.dtype)  # a half input's gradient is half
        (gy,) = self._arrays("bias_gelu_backward", ("gy", gy), half=True)
        if gy.shape != x.shape or gy.dtype != x.dtype:
            raise ValueError(f"bias_gelu_backward: gy is {gy.dtype} {gy.shape} but x is "
                             f"{x.dtype} {x.shape}")
        gx = cp.empty_like(x)
        h = b.size
        rows = x.size // h if h else 0
        if rows == 0:
            return gx, cp.zeros(b.shape, b_dtype)
        fn = self._fn("activations", "bias_gelu_backward", x.dtype)
        tiles = -(-h // 32)
        chunks = max(1, min(rows // 8, self._blocks_per_sm(fn, _BLOCK) * self._sm_count // tiles))
        per_chunk = -(-rows // chunks)
        chunks = -(-rows // per_chunk)
        partial = cp.empty((chunks, h), b.dtype)
        self._launch(fn, x.size, (x, b, gy, gx, partial, np.int64(rows), np.int64(h),
                                  np.int64(per_chunk), np.int32(tanh)), grid=tiles * chunks)
        return gx, partial.sum(axis=0).astype(b_dtype, copy=False)

    # -- dropout ------------------------------------------------------------------------------
    @staticmethod
    def _check_p(op, p):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"{op}: dropout probability must be in [0, 1], got {p}")

    def _dropout(self, kernel, name, a, p, key):
        self._check_p(kernel, p)
        (a,) = self._arrays(kernel, (name, a), half=True)
        if p >= 1.0:
            return cp.zeros_like(a)  # nothing kept, as the NumPy backend
        out = cp.empty_like(a)
        self._launch(self._fn("dropout", kernel, a.dtype), a.size,
                     (a, out, np.int64(a.size), *self._key_args(key), np.float32(p),
                      _acc(a.dtype)(1.0 / (1.0 - p))))  # a half a: the scale in float32
        return out

    def dropout_forward(self, x, p, key):
        return self._dropout("dropout_forward", "x", x, p, key)

    def dropout_backward(self, gy, p, key):
        return self._dropout("dropout_backward", "gy", gy, p, key)

    def dropout_keep(self, shape, p, key):
        self._check_p("dropout_keep", p)
        keep = cp.empty(shape, dtype=cp.bool_)
        self._launch(self._fn("dropout", "dropout_keep_mask"), keep.size,
                     (keep, np.int64(keep.size), *self._key_args(key), np.float32(p)))
        return keep

    # -- fused losses -----------------------------------------------------------------------
    def _sce_args(self, op, logits_or_probs, name, target, label_smoothing, half=False):
        (x,) = self._arrays(op, (name, logits_or_probs), half=half)
        if x.ndim != 2 or x.shape[1] < 1:
            raise ValueError(f"{op}: {name} must be (N, C) with C >= 1, got shape {x.shape}")
        if not isinstance(target, cp.ndarray):
            raise TypeError(f"{op}: target must be a CuPy array on the GPU, got "
                            f"{type(target).__module__}.{type(target).__name__}")
        if target.dtype.kind not in "iu":
            raise TypeError(f"{op}: target must hold integer class indices, got {target.dtype}")
        if target.shape != (x.shape[0],):
            raise ValueError(f"{op}: target has shape {target.shape}, expected ({x.shape[0]},) "
                             f"for {name} of shape {x.shape}")
        if not 0.0 <= label_smoothing <= 1.0:
            raise ValueError(f"{op}: label_smoothing must be in [0, 1], got {label_smoothing}")
        t = cp.ascontiguousarray(target, dtype=cp.int64)
        return x, t, float(label_smoothing)

    def softmax_cross_entropy_forward(self, logits, target, label_smoothing=0.0):
        """Row-wise; a target outside [0, C) gives that row a NaN loss (no device assert,
        no host synchronisation)."""
        x, t, eps = self._sce_args("softmax_cross_entropy_forward", logits, "logits", target,
                                   label_smoothing)
        rows, c = x.shape
        T = x.dtype.type
        loss = cp.empty(rows, x.dtype)
        probs = cp.empty_like(x)
        block = min(256, max(32, 1 << (int(c) - 1).bit_length()))
        grid = min(rows, self._sm_count * 32)
        self._launch(self._fn("softmax_cross_entropy", "softmax_cross_entropy_forward", x.dtype),
                     rows, (x, t, loss, probs, np.int64(rows), np.int64(c), T(1.0 - eps), T(eps)),
                     block=block, grid=grid)
        return loss, probs

    def softmax_cross_entropy_backward(self, probs, target, gy, label_smoothing=0.0):
        p, t, eps = self._sce_args("softmax_cross_entropy_backward", probs, "probs", target,
                                   label_smoothing)
        if isinstance(gy, cp.ndarray) and gy.ndim == 0:
            gy = cp.broadcast_to(gy, (p.shape[0],))
        (gy,) = self._arrays("softmax_cross_entropy_backward", ("gy", gy))
        if gy.dtype != p.dtype or gy.shape != (p.shape[0],):
            raise ValueError(f"softmax_cross_entropy_backward: gy must be {p.dtype} of shape "
                             f"({p.shape[0]},) or a scalar, got {gy.dtype} {gy.shape}")
        gx = cp.empty_like(p)
        rows, c = p.shape
        T = p.dtype.type
        ome, eoc = T(1.0 - eps), T(eps / c)
        self._launch(self._fn("softmax_cross_entropy", "softmax_cross_entropy_backward",
                              p.dtype),
                     gx.size, (p, t, gy, gx, np.int64(rows), np.int64(c), ome, eoc))
        return gx

    fused_classifier = True

    def _row_launch(self, c):
        """Block size for a row kernel: whole warps, up to 256, no wider than the row."""
        return min(256, max(32, 1 << (int(c) - 1).bit_length()))

    def fused_classifier_forward(self, logits, target, label_smoothing=0.0):
        """One online-softmax pass over each row (kernels/softmax_cross_entropy.cu): the
        row loss and stats (N, 2) = (max, log sum e^(x - max)); a target outside [0, C)
        gives a NaN loss, no host read."""
        x, t, eps = self._sce_args("fused_classifier_forward", logits, "logits", target,
                                   label_smoothing, half=True)
        rows, c = x.shape
        T = _acc(x.dtype)       # half logits: float32 loss and stats
        loss = cp.empty(rows, T)
        stats = cp.empty((rows, 2), T)
        fn = self._fn("softmax_cross_entropy", "fused_classifier_forward", x.dtype)
        block = self._row_launch(c)
        grid = min(rows, self._blocks_per_sm(fn, block) * self._sm_count) if rows else 0
        self._launch(fn, rows, (x, t, loss, stats, np.int64(rows), np.int64(c), T(1.0 - eps),
                                T(eps)), block=block, grid=grid)
        return loss, stats

    def fused_classifier_backward(self, logits, stats, target, gy, label_smoothing=0.0,
                                  inplace=False):
        x, t, eps = self._sce_args("fused_classifier_backward", logits, "logits", target,
                                   label_smoothing, half=True)
        rows, c = x.shape
        if isinstance(gy, cp.ndarray) and gy.ndim == 0:
            gy = cp.broadcast_to(gy, (rows,))
        stats, gy = self._arrays("fused_classifier_backward", ("stats", stats), ("gy", gy),
                                 same_shape=False)
        T = _acc(x.dtype)
        if stats.shape != (rows, 2) or gy.shape != (rows,) or gy.dtype != T:
            raise ValueError(f"fused_classifier_backward: stats must be ({rows}, 2) and gy "
                             f"({rows},), both {np.dtype(T)}; got stats {stats.dtype} "
                             f"{stats.shape}, gy {gy.dtype} {gy.shape}")
        inplace = inplace and logits.flags.c_contiguous  # then x is logits' own memory
        gx = x if inplace else cp.empty_like(x)
        fn = self._fn("softmax_cross_entropy", "fused_classifier_backward", x.dtype)
        block = self._row_launch(c)
        grid = min(rows, self._blocks_per_sm(fn, block) * self._sm_count) if rows else 0
        self._launch(fn, rows, (x, stats, t, gy, gx, np.int64(rows), np.int64(c), T(1.0 - eps),
                                T(eps / c)), block=block, grid=grid)
        return logits if inplace else gx

    # -- fused optimizer updates --------------------------------------------------------------
    def _arena(self, op, param, grad, *state):
        """Check the flat arena views: 1-D, contiguous (updated in place), one dtype."""
        named = [("param", param), ("grad", grad)] + [s for s in state if s[1] is not None]
        for name, a in named:
            if not isinstance(a, cp.ndarray):
                raise TypeError(f"{op}: {name} must be a CuPy array on the GPU, got "
                                f"{type(a).__module__}.{type(a).__name__}")
            if a.ndim != 1 or not a.flags.c_contiguous:
                raise ValueError(f"{op}: {name} must be a contiguous 1-D view of the arena, got "
                                 f"shape {a.shape}")
        self._arrays(op, *named)

    def _segments(self, op, offsets, n, chunk):
        """Block table for a segmented pass: (offsets, block_seg, block_start) on the
        device, built once per (offsets, chunk)."""
        off = tuple(int(o) for o in offsets)
        key = (off, chunk)
        table = self._segment_tables.get(key)
        if table is None:
            o = np.asarray(off, dtype=np.int64)
            if o.ndim != 1 or o.size < 2 or o[0] != 0 or o[-1] != n or np.any(np.diff(o) < 0):
                raise ValueError(f"{op}: offsets must rise from 0 to the arena size {n} "
                                 f"(start of each parameter, then the end); got {list(off)}")
            lengths = np.diff(o)
            nblocks = -(-lengths // chunk)
            block_seg = np.repeat(np.arange(lengths.size, dtype=np.int64), nblocks)
            first = np.repeat(np.cumsum(nblocks) - nblocks, nblocks)
            block_start = o[block_seg] + (np.arange(block_seg.size) - first) * chunk
            table = (cp.asarray(o), cp.asarray(block_seg), cp.asarray(block_start))
            if len(self._segment_tables) > 64:
                self._segment_tables.clear()
            self._segment_tables[key] = table
        return table

    @staticmethod
    def _chunk(n):
        return _BLOCK * (16 if n > (1 << 23) else 4)

    def sgd_update(self, param, grad, buf, lr, momentum=0.0, dampening=0.0, nesterov=False,
                   weight_decay=0.0, first_step=False):
        if momentum != 0.0 and buf is None:
            raise ValueError("sgd_update: momentum needs a buf (the momentum buffer)")
        self._arena("sgd_update", param, grad, ("buf", buf))
        T = param.dtype.type
        has_buf = momentum != 0.0
        b = buf if has_buf else param
        head, per = self._packed(param.size, param, grad, b)
        self._launch(self._fn("optimizers", "sgd_update", param.dtype), param.size,
                     (self._skip, param, grad, b, np.int64(param.size), head, T(lr),
                      T(momentum), T(1.0 - dampening), T(weight_decay), np.int32(has_buf),
                      np.int32(bool(nesterov)), np.int32(bool(first_step))), per_thread=per)
        return param

    def adam_update(self, param, grad, m, v, lr, beta1, beta2, eps, weight_decay, step,
                    decoupled=False):
        if step < 1:
            raise ValueError(f"adam_update: step is 1-based, got {step}")
        self._arena("adam_update", param, grad, ("m", m), ("v", v))
        T = param.dtype.type
        bc1 = 1.0 - beta1 ** step
        bc2_sqrt = math.sqrt(1.0 - beta2 ** step)
        head, per = self._packed(param.size, param, grad, m, v)
        self._launch(self._fn("optimizers", "adam_update", param.dtype), param.size,
                     (self._skip, param, grad, m, v, np.int64(param.size), head,
                      T(1.0 - beta1), T(beta2), T(1.0 - beta2), T(eps * bc2_sqrt),
                      T(weight_decay), T(1.0 - lr * weight_decay), T(-lr * bc2_sqrt / bc1),
                      np.int32(bool(decoupled))), per_thread=per)
        return param

    def lamb_update(self, param, grad, m, v, offsets, lr, beta1, beta2, eps, weight_decay, step):
        if step < 1:
            raise ValueError(f"lamb_update: step is 1-based, got {step}")
        self._arena("lamb_update", param, grad, ("m", m), ("v", v))
        chunk = self._chunk(param.size)
        off, block_seg, block_start = self._segments("lamb_update", offsets, param.size, chunk)
        if block_seg.size == 0:
            return param
        T = param.dtype.type
        sums = cp.zeros(2 * (off.size - 1), cp.float64)
        inv_bc1 = T(1.0 / (1.0 - beta1 ** step))
        inv_bc2_sqrt = T(1.0 / math.sqrt(1.0 - beta2 ** step))
        seg = (off, block_seg, block_start, np.int64(chunk), sums)
        grid = block_seg.size
        self._launch(self._fn("optimizers", "lamb_moments_norms", param.dtype), param.size,
                     (self._skip, param, grad, m, v, *seg, T(1.0 - beta1), T(beta2),
                      T(1.0 - beta2), inv_bc1, inv_bc2_sqrt, T(eps), T(weight_decay)), grid=grid)
        self._launch(self._fn("optimizers", "lamb_apply", param.dtype), param.size,
                     (self._skip, param, m, v, *seg, np.float64(lr), inv_bc1, inv_bc2_sqrt,
                      T(eps), T(weight_decay)), grid=grid)
        return param

    def lars_update(self, param, grad, buf, offsets, lr, momentum, weight_decay,
                    trust_coefficient, eps=1e-9):
        if momentum != 0.0 and buf is None:
            raise ValueError("lars_update: momentum needs a buf (the momentum buffer)")
        self._arena("lars_update", param, grad, ("buf", buf))
        chunk = self._chunk(param.size)
        off, block_seg, block_start = self._segments("lars_update", offsets, param.size, chunk)
        if block_seg.size == 0:
            return param
        T = param.dtype.type
        sums = cp.zeros(2 * (off.size - 1), cp.float64)
        seg = (off, block_seg, block_start, np.int64(chunk), sums)
        has_buf = momentum != 0.0
        grid = block_seg.size
        self._launch(self._fn("optimizers", "lars_norms", param.dtype), param.size,
                     (self._skip, param, grad, *seg), grid=grid)
        self._launch(self._fn("optimizers", "lars_apply", param.dtype), param.size,
                     (self._skip, param, grad, buf if has_buf else param, *seg, T(lr),
                      T(momentum), T(weight_decay), np.float64(trust_coefficient),
                      np.float64(eps), np.int32(has_buf)), grid=grid)
        return param

    def _norm_accumulate(self, op, arrays, norm_type):
        """sum |x|^p (max |x| for p = inf) of all arrays into one device double, one
        launch per array."""
        if not (norm_type > 0.0):
            raise ValueError(f"{op}: norm_type must be positive or inf, got {norm_type}")
        for i, a in enumerate(arrays):
            if not isinstance(a, cp.ndarray):
                raise TypeError(f"{op}: arrays[{i}] must be a CuPy array, got "
                                f"{type(a).__module__}.{type(a).__name__}")
        acc = cp.zeros(1, cp.float64)
        for a in arrays:
            if a.dtype not in _FLOAT_DTYPES:
                a = a.astype(cp.float32)
            a = cp.ascontiguousarray(a)
            if math.isinf(norm_type):
                self._launch(self._fn("reductions", "norm_max_abs", a.dtype), a.size,
                             (a, np.int64(a.size), acc))
            else:
                self._launch(self._fn("reductions", "norm_pow_sum", a.dtype), a.size,
                             (a, np.int64(a.size), np.float64(norm_type), acc))
        return acc

    def grad_norm(self, arrays, norm_type=2.0):
        """One device accumulator, one launch per array, one synchronisation."""
        norm_type = float(norm_type)
        arrays = [a for a in arrays if a is not None]
        if not arrays:
            if not (norm_type > 0.0):
                raise ValueError(f"grad_norm: norm_type must be positive or inf, got {norm_type}")
            return 0.0
        total = float(self._norm_accumulate("grad_norm", arrays, norm_type)[0])
        if math.isinf(norm_type):
            return total
        return math.sqrt(total) if norm_type == 2.0 else total ** (1.0 / norm_type)

    # -- checks without a host sync (backend/checks.py) -----------------------------------
    def nonfinite_flag(self, arrays):
        """found_inf: a 0-d int32 device array, 1 when some array holds NaN or inf."""
        flag = cp.zeros((), cp.int32)
        for a in arrays:
            if a.size == 0:
                continue
            if a.dtype not in _FLOAT_DTYPES:
                raise TypeError(f"nonfinite_flag: the kernel takes float32 or float64, got "
                                f"{a.dtype}")
            a = cp.ascontiguousarray(a)
            self._launch(self._fn("reductions", "nonfinite_flag", a.dtype), a.size,
                         (a, np.int64(a.size), flag))
        return flag

    @contextlib.contextmanager
    def skip_updates_if(self, found_inf, arrays):
        """The update kernels read the flag themselves (their ``skip`` argument); the
        generic copy-and-restore only where an update is not ours (``dp.fusion(False)``)."""
        if any(name in vars(self) for name in _FLAGGED_UPDATES):
            with super().skip_updates_if(found_inf, arrays):
                yield
            return
        self._skip_flag = cp.ascontiguousarray(found_inf, dtype=cp.int32)
        try:
            yield
        finally:
            self._skip_flag = None

    @property
    def _skip(self):
        """The ``skip`` argument of the update kernels: found_inf inside
        skip_updates_if, else a device zero."""
        if self._skip_flag is not None:
            return self._skip_flag
        if self._no_skip is None:
            self._no_skip = cp.zeros((), cp.int32)
        return self._no_skip

    def clip_grad_norm_(self, arrays, max_norm, norm_type=2.0):
        """The norm accumulated on the device, then one launch per array scales it by the
        coefficient the kernel computes from that sum; nothing is read back."""
        if not self.defers_checks:
            return super().clip_grad_norm_(arrays, max_norm, norm_type)
        norm_type = float(norm_type)
        inf = math.isinf(norm_type)
        acc = self._norm_accumulate("clip_grad_norm_", arrays, norm_type)
        ord_arg = np.float64(-1.0 if inf else norm_type)
        total = acc.reshape(()) if inf else acc.reshape(()) ** (1.0 / norm_type)
        for a in arrays:
            if not a.size:
                continue
            if a.dtype in _FLOAT_DTYPES and a.flags.c_contiguous:
                self._launch(self._fn("reductions", "clip_scale", a.dtype), a.size,
                             (a, np.int64(a.size), acc, ord_arg, np.float64(max_norm)))
            else:  # float16 / strided gradients: the same coefficient in CuPy ops
                a *= cp.minimum(max_norm / (total + 1e-6), 1.0).astype(a.dtype)
        return total

    # -- CUDA graphs (dlprimer/cuda) --------------------------------------------------------
    @contextlib.contextmanager
    def graph_capture(self, keep_alive: list):
        """Capture the block's launches into a CUDA graph on a side stream (CuPy stream
        capture). Every block the pool hands out meanwhile goes to ``keep_alive``, which
        the graph keeps: no later allocation can reuse memory a replay writes (what
        PyTorch's private graph pool does). A host read inside the block fails."""
        if self.memory.capture_blocks is not None:
            raise RuntimeError("graph_capture: a CUDA graph is already being captured")
        outer = cp.cuda.get_current_stream()
        stream = cp.cuda.Stream(non_blocking=True)
        stream.wait_event(outer.record())
        result = {}
        self.memory.capture_blocks = keep_alive
        try:
            with stream:
                stream.begin_capture()
                try:
                    yield result
                finally:
                    graph = stream.end_capture()
        finally:
            self.memory.capture_blocks = None
        outer.wait_event(stream.record())
        result["graph"] = graph

    def graph_replay(self, graph):
        graph.launch(stream=cp.cuda.get_current_stream())
