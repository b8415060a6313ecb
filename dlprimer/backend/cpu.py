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
