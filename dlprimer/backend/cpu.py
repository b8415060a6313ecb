"""The NumPy backend.

Fused ops are in-place ufunc chains (``out=``): one output buffer, no
avoidable temporaries. Memory is metered through tracemalloc, which sees every
NumPy data buffer (NumPy reports them in its own tracemalloc domain).
"""
from __future__ import annotations

import tracemalloc

import numpy as np
import scipy.special

from . import half as _half
from .base import Backend, MemoryMeter
from .half import float32_inside


def _axpy(a, x, y, tmp):
    """``y += a * x`` in place through the scratch block ``tmp`` (NumPy ufuncs, no BLAS:
    a second BLAS library brings a second thread pool into the step, which on a busy
    machine cost 10x; see issue 13)."""
    u = np.multiply(x, a, out=tmp[:x.shape[0]])
    y += u
    return y


class CPUMemoryMeter(MemoryMeter):
    """Bytes traced by tracemalloc: NumPy buffers plus (small) Python objects.

    Tracing slows every allocation, so it is off until ``start()``; timing runs
    must not have it on. ``numpy_current()`` counts NumPy's domain alone.
    """

    slows_steps = True

    def __init__(self):
        self._started_here = False

    def start(self):
        if not tracemalloc.is_tracing():
            tracemalloc.start()
            self._started_here = True
        tracemalloc.reset_peak()

    def stop(self):
        if self._started_here and tracemalloc.is_tracing():
            tracemalloc.stop()
        self._started_here = False

    @property
    def active(self) -> bool:
        return tracemalloc.is_tracing()

    def _require(self):
        if not tracemalloc.is_tracing():
            raise RuntimeError(
                "the CPU memory meter is off: call backend.memory.start() first "
                "(it traces every allocation, so keep it out of timed runs)")

    def current(self) -> int:
        self._require()
        return tracemalloc.get_traced_memory()[0]

    def peak(self) -> int:
        self._require()
        return tracemalloc.get_traced_memory()[1]

    def reset_peak(self):
        self._require()
        tracemalloc.reset_peak()

    def numpy_current(self) -> int:
        """Bytes currently held by NumPy array buffers (a snapshot: slow)."""
        self._require()
        snap = tracemalloc.take_snapshot().filter_traces(
            [tracemalloc.DomainFilter(True, np.lib.tracemalloc_domain)])
        return sum(s.size for s in snap.statistics("filename"))


#: the multipliers of the seed and the index in the counter hash's Weyl mix
#: (z = seed * _SEED_MUL + counter * B + index * _INDEX_MUL; kernels/random.cuh)
_SEED_MUL, _INDEX_MUL = 0x9E3779B97F4A7C15, 0x94D049BB133111EB
_INDEX_AS_SEED = _INDEX_MUL * pow(_SEED_MUL, -1, 2**64) % 2**64


def key_at(key, start):
    """The key whose element j is element ``start + j`` of ``key``'s call (for a call
    run in blocks, the half dropout): the Weyl mix is linear in seed and index and
    _SEED_MUL is odd, so invertible mod 2^64; a seed larger by start * _INDEX_MUL /
    _SEED_MUL (mod 2^64) gives every index the hash of the index ``start`` further on."""
    seed, counter = key
    return (int(seed) + int(start) * _INDEX_AS_SEED) % 2**64, counter


class CPUBackend(Backend):
    name = "cpu"
    xp = np
    host_memory = True
    #: fused ops that take float16 / bfloat16 arrays with float32 math inside
    #: (backend/half.py); ReLU is exact in any precision and runs on half arrays as is.
    #: Keep the names in step with CUDABackend.half_fused and dlprimer/amp's docstring.
    half_fused = frozenset({"relu", "leaky_relu", "elu", "gelu", "silu", "sigmoid", "tanh",
                            "bias_gelu", "dropout", "cross_entropy"})

    def __init__(self):
        super().__init__()
        self.memory = CPUMemoryMeter()

    # -- arrays ------------------------------------------------------------------
    def asarray(self, data, dtype=None):
        return np.asarray(data, dtype=dtype)

    def to_numpy(self, a):
        return np.asarray(a)

    def is_array(self, a):
        return isinstance(a, np.ndarray)

    def from_dlpack(self, obj):
        return np.from_dlpack(obj)

    def broadcast_to(self, a, shape):
        """A read-only broadcast view built directly (zero strides on the broadcast axes):
        about 1.7 us where ``np.broadcast_to``'s iterator takes about 3.4 us, which a sum's
        or mean's backward paid on every step. Other cases (array subclasses too) go to
        ``xp.broadcast_to``."""
        shape = tuple(shape)
        if (type(a) is np.ndarray and a.ndim == len(shape) and a.size and a.flags.c_contiguous
                and all(n == m or n == 1 for n, m in zip(a.shape, shape))):
            strides = tuple(0 if n != m else st for n, m, st in zip(a.shape, shape, a.strides))
            view = np.ndarray(shape, a.dtype, a, 0, strides)
            view.flags.writeable = False
            return view
        return super().broadcast_to(a, shape)

    # -- random --------------------------------------------------------------------
    def _generator(self, key):
        seed, counter = self.next_key() if key is None else key
        return np.random.Generator(np.random.Philox(key=(seed << 64) | counter))

    def randn(self, shape, dtype, key=None):
        return self._generator(key).standard_normal(shape, dtype=dtype)

    def rand(self, shape, dtype, key=None):
        return self._generator(key).random(shape, dtype=dtype)

    def counter_uniform(self, key, n):
        """n uniforms in [0, 1) from the splitmix64 hash of (seed, counter, index).

        The same hash runs in kernels/random.cuh, so CPU and CUDA masks agree.
        """
        seed, counter = key
        with np.errstate(over="ignore"):
            i = np.arange(n, dtype=np.uint64)
            z = (np.uint64(seed % 2**64) * np.uint64(_SEED_MUL)
                 + np.uint64(counter % 2**64) * np.uint64(0xD1B54A32D192ED03))
            z = i * np.uint64(_INDEX_MUL) + z
            z ^= z >> np.uint64(30)
            z *= np.uint64(0xBF58476D1CE4E5B9)
            z ^= z >> np.uint64(27)
            z *= np.uint64(0x94D049BB133111EB)
            z ^= z >> np.uint64(31)
        return (z >> np.uint64(40)).astype(np.float32) * np.float32(2.0 ** -24)

    # -- primitives -----------------------------------------------------------------
    def scatter_add(self, target, index, values):
        np.add.at(target, index, values)
        return target

    def erf(self, x, out=None):
        return scipy.special.erf(x, out=out)

    def class_range(self, target):
        """(min, max) of the targets without the stack and copy of the generic path."""
        return int(target.min()), int(target.max())

    # -- fused activations ------------------------------------------------------------
    def relu_forward(self, x):
        return np.maximum(x, 0, out=np.empty_like(x))

    def relu_backward(self, y, gy):
        """gy where y > 0, else 0 (so the gradient at x == 0 is 0, as PyTorch's);
        blocked, so the mask is a block-sized scratch, not a tensor-sized one."""
        def k(o, yb, gb, m):
            np.greater(yb, 0, out=m)
            np.multiply(gb, m, out=o)
        return self._chain(k, np.empty_like(gy), (y, gy), scratch=(np.bool_,))

    @float32_inside(1)
    def sigmoid_forward(self, x):
        """1 / (1 + e^-x) by SciPy's expit, stable for |x| of 1e4 (no overflow)."""
        return scipy.special.expit(x)

    @float32_inside(2)
    def sigmoid_backward(self, y, gy):
        # gy * y * (1 - y)
        gx = np.subtract(1, y, out=np.empty_like(y))
        np.multiply(gx, y, out=gx)
        np.multiply(gx, gy, out=gx)
        return gx

    @float32_inside(1)
    def tanh_forward(self, x):
        return np.tanh(x)

    @float32_inside(2)
    def tanh_backward(self, y, gy):
        # gy * (1 - y^2)
        gx = np.multiply(y, y, out=np.empty_like(y))
        np.subtract(1, gx, out=gx)
        np.multiply(gx, gy, out=gx)
        return gx

    # -- fused activations, dropout and losses (nn) -------------------------------------
    # Each op is a chain of in-place ufuncs over one output buffer. Large arrays run
    # block by block (_BLOCK elements, a few hundred KiB) so the chain's intermediate
    # values stay in cache and any scratch array is block-sized, not tensor-sized.
    _BLOCK = 1 << 16
    _SQRT1_2 = 0.7071067811865476
    _INV_SQRT_2PI = 0.3989422804014327
    _GELU_K = 0.7978845608028654   # sqrt(2 / pi)
    _GELU_A = 0.044715

    def _chain(self, kernel, out, ins, scratch=(), **params):
        """Run ``kernel(out_blk, *in_blks, *scratch_blks, **params)`` over flat blocks.

        ``ins`` must already have ``out``'s shape; ``scratch`` lists scratch dtypes. An
        array of one block or less runs as one call on the whole arrays (no flattening,
        no slicing: the loop's set-up would cost more than the ufuncs themselves).
        """
        n = out.size
        if 0 < n <= self._BLOCK:
            kernel(out, *ins, *[np.empty(out.shape, dtype=d) for d in scratch], **params)
            return out
        flat_out = out.reshape(-1)
        flat_ins = [np.ascontiguousarray(a).reshape(-1) for a in ins]
        size = min(n, self._BLOCK)
        bufs = [np.empty(size, dtype=d) for d in scratch]
        for s in range(0, n, self._BLOCK) if n else ():
            e = min(s + self._BLOCK, n)
            kernel(flat_out[s:e], *(a[s:e] for a in flat_ins), *(b[:e - s] for b in bufs),
                   **params)
        return out

    def _out_like(self, x, *others):
        dt = np.result_type(x, *others) if others else x.dtype
        if dt.kind != "f":
            dt = np.dtype(np.float32)
        return np.empty(x.shape, dtype=dt)

    @float32_inside(1)
    def leaky_relu_forward(self, x, negative_slope):
        out = self._out_like(x)
        pick = np.maximum if negative_slope <= 1 else np.minimum

        def k(o, xb, slope):
            np.multiply(xb, slope, out=o)
            pick(o, xb, out=o)  # max(a x, x) == leaky_relu(x) for a <= 1, min for a > 1
        return self._chain(k, out, (x,), slope=negative_slope)

    @float32_inside(2)
    def leaky_relu_backward(self, x, gy, negative_slope):
        gx = self._out_like(gy)

        def k(o, xb, gb, m, slope):
            np.greater(xb, 0, out=m)
            np.multiply(gb, slope, out=o)
            np.copyto(o, gb, where=m)
        return self._chain(k, gx, (x, gy), (np.bool_,), slope=negative_slope)

    @float32_inside(1)
    def elu_forward(self, x, alpha):
        out = self._out_like(x)

        def k(o, xb, m, alpha):
            np.minimum(xb, 0, out=o)
            np.expm1(o, out=o)
            np.multiply(o, alpha, out=o)
            np.greater(xb, 0, out=m)
            np.copyto(o, xb, where=m)
        return self._chain(k, out, (x,), (np.bool_,), alpha=alpha)

    @float32_inside(2)
    def elu_backward(self, x, gy, alpha):
        # d/dx = 1 for x > 0, alpha e^x otherwise (alpha at 0, as PyTorch)
        gx = self._out_like(gy)

        def k(o, xb, gb, m, alpha):
            np.minimum(xb, 0, out=o)
            np.exp(o, out=o)
            np.multiply(o, alpha, out=o)
            np.greater(xb, 0, out=m)
            np.copyto(o, 1, where=m)
            np.multiply(o, gb, out=o)
        return self._chain(k, gx, (x, gy), (np.bool_,), alpha=alpha)

    @classmethod
    def _gelu_kernel(cls, o, xb, approximate):
        """o = gelu(xb): 0.5 x (1 + erf(x / sqrt 2)), or the tanh form
        0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))."""
        if approximate == "tanh":
            np.multiply(xb, xb, out=o)
            np.multiply(o, cls._GELU_K * cls._GELU_A, out=o)
            np.add(o, cls._GELU_K, out=o)
            np.multiply(o, xb, out=o)
            np.tanh(o, out=o)
        else:
            np.multiply(xb, cls._SQRT1_2, out=o)
            scipy.special.erf(o, out=o)
        np.multiply(o, 0.5, out=o)  # 0.5 (1 + e) before the x: (1 + e) x overflows past max/2
        np.add(o, 0.5, out=o)
        np.multiply(o, xb, out=o)

    @classmethod
    def _gelu_grad_kernel(cls, o, xb, gb, t, approximate):
        """o = gb * gelu'(xb) with one scratch block ``t``.

        erf form: Phi(x) + x phi(x) = 0.5 (1 + erf(x/sqrt 2)) + x e^(-x^2/2) / sqrt(2 pi).
        tanh form, with t = tanh(u), u = k (x + a x^3):
        0.5 (1 + t) + 0.5 x k (1 + 3 a x^2) (1 - t^2) = (1 + t) (0.5 + s (1 - t)),
        s = 0.5 k x (1 + 3 a x^2).
        """
        if approximate == "tanh":
            np.multiply(xb, xb, out=t)
            np.multiply(t, cls._GELU_K * cls._GELU_A, out=t)
            np.add(t, cls._GELU_K, out=t)
            np.multiply(t, xb, out=t)
            np.tanh(t, out=t)                       # t = tanh(u)
            np.multiply(xb, xb, out=o)
            np.multiply(o, 1.5 * cls._GELU_K * cls._GELU_A, out=o)
            np.add(o, 0.5 * cls._GELU_K, out=o)
            np.multiply(o, xb, out=o)               # o = s
            np.subtract(1, t, out=t)                # t = 1 - tanh
            np.multiply(o, t, out=o)
            np.add(o, 0.5, out=o)
            np.subtract(2, t, out=t)                # t = 1 + tanh
            np.multiply(o, t, out=o)
        else:
            np.multiply(xb, xb, out=o)
            np.multiply(o, -0.5, out=o)
            np.exp(o, out=o)
            np.multiply(o, xb, out=o)
            np.multiply(o, cls._INV_SQRT_2PI, out=o)    # o = x phi(x)
            np.multiply(xb, cls._SQRT1_2, out=t)
            scipy.special.erf(t, out=t)
            np.add(t, 1, out=t)
            np.multiply(t, 0.5, out=t)              # t = Phi(x)
            np.add(o, t, out=o)
        np.multiply(o, gb, out=o)

    @staticmethod
    def _check_approximate(approximate):
        if approximate not in ("none", "tanh"):
            raise ValueError(f"gelu: approximate must be 'none' or 'tanh', got {approximate!r}")

    @float32_inside(1)
    def gelu_forward(self, x, approximate="none"):
        self._check_approximate(approximate)
        return self._chain(self._gelu_kernel, self._out_like(x), (x,), approximate=approximate)

    @float32_inside(2)
    def gelu_backward(self, x, gy, approximate="none"):
        self._check_approximate(approximate)
        gx = self._out_like(gy)
        return self._chain(self._gelu_grad_kernel, gx, (x, gy), (gx.dtype,),
                           approximate=approximate)

    @float32_inside(1)
    def silu_forward(self, x):
        out = self._out_like(x)

        def k(o, xb):
            scipy.special.expit(xb, out=o)
            np.multiply(o, xb, out=o)
        return self._chain(k, out, (x,))

    @float32_inside(2)
    def silu_backward(self, x, gy):
        # d/dx x s(x) = s (1 + x (1 - s))
        gx = self._out_like(gy)

        def k(o, xb, gb, s):
            scipy.special.expit(xb, out=s)
            np.subtract(1, s, out=o)
            np.multiply(o, xb, out=o)
            np.add(o, 1, out=o)
            np.multiply(o, s, out=o)
            np.multiply(o, gb, out=o)
        return self._chain(k, gx, (x, gy), (gx.dtype,))

    def _rows(self, x, b):
        if b.ndim != 1 or x.ndim < 1 or x.shape[-1] != b.shape[0]:
            raise ValueError(f"bias_gelu: bias of shape {b.shape} does not match the last "
                             f"axis of x of shape {x.shape}")
        c = b.shape[0]
        return max(1, self._BLOCK // max(c, 1)), c

    def bias_gelu_forward(self, x, b, approximate="none"):
        """gelu(x + b); a half ``x`` runs as float32 row blocks through this backend's
        own float32 op (the JIT kernel when on) and is rounded once (backend/half.py)."""
        self._check_approximate(approximate)
        rows, c = self._rows(x, b)
        if _half.is_half(x):
            return _half.bias_gelu_forward(self.bias_gelu_forward, x, b, approximate)
        out = self._out_like(x, b)
        x2 = np.ascontiguousarray(x).reshape(-1, c)
        o2 = out.reshape(-1, c)
        z = np.empty((min(rows, x2.shape[0]), c), dtype=out.dtype)
        for s in range(0, x2.shape[0], rows):
            e = min(s + rows, x2.shape[0])
            zb = np.add(x2[s:e], b, out=z[:e - s])
            self._gelu_kernel(o2[s:e], zb, approximate)
        return out

    def bias_gelu_backward(self, x, b, gy, approximate="none"):
        """(gx, gb); a half ``x`` or ``gy``: float32 row blocks, gx rounded once into x's
        dtype, gb accumulated in float32 and returned in b's dtype (backend/half.py)."""
        self._check_approximate(approximate)
        rows, c = self._rows(x, b)
        if _half.is_half(x) or _half.is_half(gy):
            return _half.bias_gelu_backward(self.bias_gelu_backward, x, b, gy, approximate)
        gx = self._out_like(gy)
        x2 = np.ascontiguousarray(x).reshape(-1, c)
        g2 = np.ascontiguousarray(gy).reshape(-1, c)
        o2 = gx.reshape(-1, c)
        m = min(rows, x2.shape[0])
        z = np.empty((m, c), dtype=gx.dtype)
        t = np.empty((m, c), dtype=gx.dtype)
        for s in range(0, x2.shape[0], rows):
            e = min(s + rows, x2.shape[0])
            zb = np.add(x2[s:e], b, out=z[:e - s])
            self._gelu_grad_kernel(o2[s:e], zb, g2[s:e], t[:e - s], approximate)
        gb = o2.sum(axis=0).astype(b.dtype, copy=False)
        return gx, gb

    def fused_classifier_forward(self, logits, target, label_smoothing=0.0):
        """The generic fused classifier; half logits run in float32 row blocks
        (backend/half.py) and give a float32 loss and float32 stats."""
        if _half.is_half(logits):
            return _half.classifier_forward(super().fused_classifier_forward, logits, target,
                                            label_smoothing)
        return super().fused_classifier_forward(logits, target, label_smoothing)

    def fused_classifier_backward(self, logits, stats, target, gy, label_smoothing=0.0,
                                  inplace=False):
        if _half.is_half(logits):
            return _half.classifier_backward(super().fused_classifier_backward, logits, stats,
                                             target, gy, label_smoothing, inplace)
        return super().fused_classifier_backward(logits, stats, target, gy, label_smoothing,
                                                 inplace)

    def dropout_keep(self, shape, p, key):
        n = 1
        for s in shape:
            n *= int(s)
        return (self.counter_uniform(key, n) >= np.float32(p)).reshape(shape)

    def dropout_forward(self, x, p, key):
        """(x * scale) * mask, scale = 1 / (1 - p); a half ``x`` runs in float32 blocks
        with the same mask and is rounded once (backend/half.py)."""
        if p >= 1:
            return np.zeros_like(x)
        if _half.is_half(x):
            return _half.dropout(self.dropout_forward, x, p, key, key_at)
        out = np.multiply(x, 1.0 / (1.0 - p), out=self._out_like(x))
        np.multiply(out, self.dropout_keep(x.shape, p, key), out=out)
        return out

    def dropout_backward(self, gy, p, key):
        return self.dropout_forward(gy, p, key)

    def softmax_cross_entropy_forward(self, logits, target, label_smoothing=0.0):
        """loss_i = -sum_c q_ic log p_ic with q = (1 - eps) onehot + eps / C (the chapter's
        L_CE with smoothed targets), log p = z - log sum exp z, z = logits - max."""
        n, c = logits.shape
        rows = np.arange(n)
        probs = np.subtract(logits, logits.max(axis=1, keepdims=True),
                            out=self._out_like(logits))
        z_t = probs[rows, target]
        z_sum = probs.sum(axis=1) if label_smoothing else None
        np.exp(probs, out=probs)
        s = probs.sum(axis=1)
        log_s = np.log(s)
        loss = np.subtract(log_s, z_t, out=z_t)         # -log p_t
        if label_smoothing:
            eps = label_smoothing
            np.multiply(loss, 1 - eps, out=loss)
            np.subtract(log_s, z_sum / c, out=log_s)    # -(1/C) sum_c log p_c
            np.multiply(log_s, eps, out=log_s)
            np.add(loss, log_s, out=loss)
        np.divide(probs, s[:, None], out=probs)
        return loss, probs

    def softmax_cross_entropy_backward(self, probs, target, gy, label_smoothing=0.0):
        n, c = probs.shape
        if label_smoothing:
            g = np.subtract(probs, label_smoothing / c, out=np.empty_like(probs))
        else:
            g = probs.copy()
        g[np.arange(n), target] -= 1 - label_smoothing
        np.multiply(g, gy.reshape(-1, 1) if np.ndim(gy) else gy, out=g)
        return g

    # -- fused optimizer updates (optim) ------------------------------------------------
    # Each update is an in-place ufunc chain (out=) over cache-sized blocks of the flat
    # arena: a block of param/grad/state stays in L2 while the whole chain runs on it,
    # so each array crosses the memory bus about once per step instead of once per
    # ufunc. Scratch buffers (two blocks) are allocated once per dtype and reused.
    OPT_BLOCK = 32768

    def _opt_scratch(self, dtype, k=2):
        cache = self.__dict__.setdefault("_opt_scratch_cache", {})
        key = (np.dtype(dtype), k)
        buf = cache.get(key)
        if buf is None:
            buf = cache[key] = np.empty((k, self.OPT_BLOCK), dtype=dtype)
        return buf

    def _opt_blocks(self, start, stop):
        b = self.OPT_BLOCK
        for s in range(start, stop, b):
            yield s, min(s + b, stop)

    def sgd_update(self, param, grad, buf, lr, momentum=0.0, dampening=0.0, nesterov=False,
                   weight_decay=0.0, first_step=False):
        """PyTorch's SGD: d = g + wd*w; b = d (first step) or mu*b + (1-dampening)*d;
        d = d + mu*b (Nesterov) or b; w -= lr*d; plain SGD is that last line alone."""
        t0, t1 = self._opt_scratch(param.dtype)
        if not momentum and not weight_decay:
            for s, e in self._opt_blocks(0, param.shape[0]):
                _axpy(-lr, grad[s:e], param[s:e], t0)
            return param
        for s, e in self._opt_blocks(0, param.shape[0]):
            n = e - s
            p, d = param[s:e], grad[s:e]
            if weight_decay:
                w = t0[:n]
                np.multiply(p, weight_decay, out=w)
                w += d
                d = w
            if momentum:
                b = buf[s:e]
                if first_step:
                    b[...] = d
                else:
                    b *= momentum
                    if dampening:
                        u = np.multiply(d, 1.0 - dampening, out=t1[:n])
                        b += u
                    else:
                        b += d
                if nesterov:
                    u = np.multiply(b, momentum, out=t1[:n])
                    u += d
                    d = u
                else:
                    d = b
            _axpy(-lr, d, p, t0 if np.shares_memory(d, t1) else t1)
        return param

    def adam_update(self, param, grad, m, v, lr, beta1, beta2, eps, weight_decay, step,
                    decoupled=False):
        """Adam (Kingma & Ba 2015, Alg. 1) as PyTorch runs it, with L2 decay
        (g += wd*w) or AdamW's decoupled decay (w *= 1 - lr*wd):

            m = m + (1-b1)(g - m);  v = b2 v + (1-b2) g^2
            w -= lr/(1-b1^t) * m / (sqrt(v)/sqrt(1-b2^t) + eps)

        The last line is evaluated in the paper's efficient form
        w -= a_t m / (sqrt(v) + eps sqrt(1-b2^t)), a_t = lr sqrt(1-b2^t)/(1-b1^t):
        the same number, two ufuncs fewer per block.
        """
        bc1 = 1.0 - beta1 ** step
        bc2_sqrt = (1.0 - beta2 ** step) ** 0.5
        neg_alpha = -lr * bc2_sqrt / bc1
        eps_hat = eps * bc2_sqrt
        keep = 1.0 - lr * weight_decay
        t0, t1 = self._opt_scratch(param.dtype)
        for s, e in self._opt_blocks(0, param.shape[0]):
            n = e - s
            p, g, mb, vb = param[s:e], grad[s:e], m[s:e], v[s:e]
            if weight_decay:
                if decoupled:
                    p *= keep
                else:
                    w = np.multiply(p, weight_decay, out=t0[:n])
                    w += g
                    g = w
            u = np.subtract(g, mb, out=t1[:n])
            mb += np.multiply(u, 1.0 - beta1, out=u)
            vb *= beta2
            np.multiply(g, g, out=u)
            vb += np.multiply(u, 1.0 - beta2, out=u)
            np.sqrt(vb, out=u)
            u += eps_hat
            np.divide(mb, u, out=u)
            p += np.multiply(u, neg_alpha, out=u)
        return param

    def _segment_blocks(self, offsets):
        """(index, start, stop) of each parameter in the arena, then its blocks."""
        for i in range(len(offsets) - 1):
            yield i, self._opt_blocks(int(offsets[i]), int(offsets[i + 1]))

    def _lamb_direction(self, p, mb, vb, out, tmp, inv_bc1, inv_bc2_sqrt, eps, weight_decay):
        """u = (m/bc1) / (sqrt(v)/sqrt(bc2) + eps) + wd*w into ``out``."""
        np.sqrt(vb, out=out)
        out *= inv_bc2_sqrt
        out += eps
        np.divide(mb, out, out=out)
        out *= inv_bc1
        if weight_decay:
            np.multiply(p, weight_decay, out=tmp)
            out += tmp
        return out

    def lamb_update(self, param, grad, m, v, offsets, lr, beta1, beta2, eps, weight_decay, step):
        """LAMB (You et al. 2019, Alg. 2): Adam moments, direction u = r + wd*w with
        r = m_hat/(sqrt(v_hat)+eps), and per parameter w -= lr * ||w||/||u|| * u
        (trust ratio 1 where either norm is 0). Two passes per parameter: the first
        updates m, v and accumulates the norms, the second recomputes u and applies it."""
        inv_bc1 = 1.0 / (1.0 - beta1 ** step)
        inv_bc2_sqrt = 1.0 / (1.0 - beta2 ** step) ** 0.5
        t0, t1 = self._opt_scratch(param.dtype)
        for _, blocks in self._segment_blocks(offsets):
            blocks = list(blocks)
            w2 = u2 = 0.0
            for s, e in blocks:
                n = e - s
                p, g, mb, vb = param[s:e], grad[s:e], m[s:e], v[s:e]
                u = np.subtract(g, mb, out=t1[:n])
                u *= 1.0 - beta1
                mb += u
                vb *= beta2
                np.multiply(g, g, out=u)
                u *= 1.0 - beta2
                vb += u
                u = self._lamb_direction(p, mb, vb, t1[:n], t0[:n], inv_bc1, inv_bc2_sqrt,
                                         eps, weight_decay)
                u2 += float(np.dot(u, u))
                w2 += float(np.dot(p, p))
            trust = (w2 / u2) ** 0.5 if w2 > 0.0 and u2 > 0.0 else 1.0
            scale = -lr * trust
            for s, e in blocks:
                n = e - s
                p = param[s:e]
                u = self._lamb_direction(p, m[s:e], v[s:e], t1[:n], t0[:n], inv_bc1,
                                         inv_bc2_sqrt, eps, weight_decay)
                u *= scale
                p += u
        return param

    def lars_update(self, param, grad, buf, offsets, lr, momentum, weight_decay,
                    trust_coefficient, eps=1e-9):
        """LARS (You et al. 2017, Alg. 1): per parameter
        local_lr = tc*||w|| / (||g|| + wd*||w|| + eps) (1 where either norm is 0),
        then b = mu*b + local_lr*(g + wd*w); w -= lr*b (b = local_lr*(g + wd*w)
        without momentum). ``buf`` starts at zero, so the first step sets b."""
        t0, t1 = self._opt_scratch(param.dtype)
        for _, blocks in self._segment_blocks(offsets):
            blocks = list(blocks)
            w2 = g2 = 0.0
            for s, e in blocks:
                w2 += float(np.dot(param[s:e], param[s:e]))
                g2 += float(np.dot(grad[s:e], grad[s:e]))
            wn, gn = w2 ** 0.5, g2 ** 0.5
            local = (trust_coefficient * wn / (gn + weight_decay * wn + eps)
                     if wn > 0.0 and gn > 0.0 else 1.0)
            for s, e in blocks:
                n = e - s
                p, g = param[s:e], grad[s:e]
                d = t1[:n]
                if weight_decay:
                    np.multiply(p, weight_decay, out=d)
                    d += g
                    d *= local
                else:
                    np.multiply(g, local, out=d)
                if momentum:
                    b = buf[s:e]
                    b *= momentum
                    b += d
                    d = np.multiply(b, -lr, out=d)
                else:
                    d *= -lr
                p += d
        return param

    def grad_norm(self, arrays, norm_type=2.0):
        """||concat(arrays)||_p as a Python float: 2-norm by blocked BLAS dot products
        summed in float64, inf-norm by max |x|, other p > 0 by sum |x|^p."""
        norm_type = float(norm_type)
        if not norm_type > 0:
            raise ValueError(f"grad_norm: norm_type must be > 0 or inf, got {norm_type}")
        total = 0.0
        for a in arrays:
            flat = a.reshape(-1)
            if flat.size == 0:
                continue
            if norm_type == 2.0:
                for s, e in self._opt_blocks(0, flat.shape[0]):
                    x = flat[s:e]
                    total += float(np.dot(x, x))
            elif norm_type == float("inf"):
                m = float(np.max(np.abs(flat)))
                total = m if (m != m or m > total) else total  # max() would drop a NaN
            else:
                t = self._opt_scratch(flat.dtype)[0]
                for s, e in self._opt_blocks(0, flat.shape[0]):
                    x = np.abs(flat[s:e], out=t[:e - s])
                    x **= norm_type
                    total += float(np.sum(x, dtype=np.float64))
        if norm_type == float("inf") or total != total:
            return total
        return total ** 0.5 if norm_type == 2.0 else total ** (1.0 / norm_type)
    # -- end fused optimizer updates (optim) --
