"""The NumPy backend.

Fused ops are in-place ufunc chains (``out=``): one output buffer, no
avoidable temporaries. Memory is metered through tracemalloc, which sees every
NumPy data buffer (NumPy reports them in its own tracemalloc domain).
"""
from __future__ import annotations

import tracemalloc

import numpy as np
import scipy.special

from .base import Backend, MemoryMeter


class CPUMemoryMeter(MemoryMeter):
    """Bytes traced by tracemalloc: NumPy buffers plus (small) Python objects.

    Tracing slows every allocation, so it is off until ``start()``; timing runs
    must not have it on. ``numpy_current()`` counts NumPy's domain alone.
    """

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


class CPUBackend(Backend):
    name = "cpu"
    xp = np

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
            z = (np.uint64(seed % 2**64) * np.uint64(0x9E3779B97F4A7C15)
                 + np.uint64(counter % 2**64) * np.uint64(0xD1B54A32D192ED03))
            z = i * np.uint64(0x94D049BB133111EB) + z
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

    # -- fused activations ------------------------------------------------------------
    def relu_forward(self, x):
        return np.maximum(x, 0, out=np.empty_like(x))

    def relu_backward(self, y, gy):
        # gradient 0 at x == 0, as PyTorch; y > 0 exactly where x > 0
        gx = np.greater(y, 0)
        return np.multiply(gy, gx, out=np.empty_like(gy))

    def sigmoid_forward(self, x):
        # 1 / (1 + exp(-x)) overflows to inf (harmlessly: 1/inf = 0) for x << 0;
        # scipy's expit is the stable one-pass version.
        return scipy.special.expit(x)

    def sigmoid_backward(self, y, gy):
        # gy * y * (1 - y)
        gx = np.subtract(1, y, out=np.empty_like(y))
        np.multiply(gx, y, out=gx)
        np.multiply(gx, gy, out=gx)
        return gx

    def tanh_forward(self, x):
        return np.tanh(x)

    def tanh_backward(self, y, gy):
        # gy * (1 - y^2)
        gx = np.multiply(y, y, out=np.empty_like(y))
        np.subtract(1, gx, out=gx)
        np.multiply(gx, gy, out=gx)
        return gx

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
        d = d + mu*b (Nesterov) or b; w -= lr*d."""
        t0, t1 = self._opt_scratch(param.dtype)
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
            u = np.multiply(d, -lr, out=t1[:n])
            p += u
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
            u *= 1.0 - beta1
            mb += u
            vb *= beta2
            np.multiply(g, g, out=u)
            u *= 1.0 - beta2
            vb += u
            np.sqrt(vb, out=u)
            u += eps_hat
            np.divide(mb, u, out=u)
            u *= neg_alpha
            p += u
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
                total = max(total, float(np.max(np.abs(flat))))
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
