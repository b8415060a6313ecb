"""The Backend interface: the one seam between dlprimer and an array library.

Everything above ``dlprimer.backend`` writes ``xp = backend.xp`` code once; what
differs between NumPy and CuPy (device transfer, timing, memory metering, random
streams, and the fused elementwise ops) is a method here.

Fused ops share one signature on every backend. ``x`` is the op's input, ``y``
its output and ``gy`` the gradient arriving at the output; each ``*_backward``
returns ``gx``. An op keeps only what its backward needs: ReLU, sigmoid and tanh
differentiate from their output, the others from their input.
"""
from __future__ import annotations

import time

import numpy as np


class Timer:
    """Wall-clock timer that synchronises the device at both ends.

    ``with backend.timer() as t: ...`` then ``t.elapsed`` (seconds). The CUDA
    backend replaces this with CUDA events.
    """

    __slots__ = ("_backend", "_t0", "elapsed")

    def __init__(self, backend):
        self._backend = backend
        self.elapsed = None

    def __enter__(self):
        self._backend.synchronize()
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self._backend.synchronize()
        self.elapsed = time.perf_counter() - self._t0
        return False


class MemoryMeter:
    """Current and high-water bytes of a backend's allocator.

    ``current()`` and ``peak()`` are bytes; ``reset_peak()`` starts a new phase.
    ``start()``/``stop()`` switch metering on where it costs something (the CPU).
    """

    #: True when metering slows the computation it meters (CPU tracing does), so a
    #: metered step's time must not be taken as a timing.
    slows_steps: bool = False

    def start(self):
        pass

    def stop(self):
        pass

    @property
    def active(self) -> bool:
        return True

    def current(self) -> int:
        raise NotImplementedError

    def peak(self) -> int:
        raise NotImplementedError

    def reset_peak(self):
        raise NotImplementedError


class Backend:
    """Base class: shared random-stream bookkeeping and the fused-op contract."""

    name: str = "?"
    xp = None
    #: True when arrays live in host memory, so host libraries (MPI, file writers)
    #: can use them in place; device backends copy through to_numpy()/asarray().
    host_memory: bool = False

    def __init__(self):
        self._seed = int(np.random.SeedSequence().entropy % (2**63))
        self._counter = 0

    def __repr__(self):
        return f"<dlprimer backend {self.name!r}>"

    # -- device ---------------------------------------------------------------
    def synchronize(self):
        """Wait for all queued device work (a no-op on the CPU)."""

    def timer(self) -> Timer:
        return Timer(self)

    memory: MemoryMeter

    def asarray(self, data, dtype=None):
        raise NotImplementedError

    def to_numpy(self, a) -> np.ndarray:
        raise NotImplementedError

    def is_array(self, a) -> bool:
        """True when ``a`` is an array of this backend's library."""
        raise NotImplementedError

    def from_dlpack(self, obj):
        return self.xp.from_dlpack(obj)

    # -- random streams ----------------------------------------------------------
    # Random draws are keyed by (seed, counter): every call takes the next counter,
    # so saving and restoring the pair replays the stream exactly (dropout under
    # gradient checkpointing, training resume). Both backends use the same keys.
    def manual_seed(self, seed: int):
        self._seed = int(seed) % (2**63)
        self._counter = 0

    def get_rng_state(self) -> dict:
        return {"seed": self._seed, "counter": self._counter}

    def set_rng_state(self, state: dict):
        self._seed = int(state["seed"])
        self._counter = int(state["counter"])

    def next_key(self) -> tuple[int, int]:
        key = (self._seed, self._counter)
        self._counter += 1
        return key

    def randn(self, shape, dtype, key=None):
        raise NotImplementedError

    def rand(self, shape, dtype, key=None):
        raise NotImplementedError

    # -- primitives the ops need beyond xp ------------------------------------------
    def scatter_add(self, target, index, values):
        """``target[index] += values`` with repeated indices accumulating."""
        raise NotImplementedError

    def erf(self, x, out=None):
        raise NotImplementedError

    def class_range(self, target) -> tuple[int, int]:
        """(min, max) of a non-empty integer class-target array, as Python ints: the one
        place a loss asks for its target range (one device-to-host copy here)."""
        xp = self.xp
        lo, hi = (int(v) for v in self.to_numpy(xp.stack([target.min(), target.max()])))
        return lo, hi

    # -- fused activation ops --------------------------------------------------------
    # Each pair is one autograd Function's forward and backward. ``approximate`` is
    # "none" (erf) or "tanh"; ``key`` is a (seed, counter) pair from next_key().
    def relu_forward(self, x):
        raise NotImplementedError

    def relu_backward(self, y, gy):
        raise NotImplementedError

    def leaky_relu_forward(self, x, negative_slope):
        raise NotImplementedError

    def leaky_relu_backward(self, x, gy, negative_slope):
        raise NotImplementedError

    def elu_forward(self, x, alpha):
        raise NotImplementedError

    def elu_backward(self, x, gy, alpha):
        raise NotImplementedError

    def gelu_forward(self, x, approximate="none"):
        raise NotImplementedError

    def gelu_backward(self, x, gy, approximate="none"):
        raise NotImplementedError

    def silu_forward(self, x):
        raise NotImplementedError

    def silu_backward(self, x, gy):
        raise NotImplementedError

    def sigmoid_forward(self, x):
        raise NotImplementedError

    def sigmoid_backward(self, y, gy):
        raise NotImplementedError

    def tanh_forward(self, x):
        raise NotImplementedError

    def tanh_backward(self, y, gy):
        raise NotImplementedError

    def bias_gelu_forward(self, x, b, approximate="none"):
        """gelu(x + b), ``b`` broadcast over the last axis of ``x``."""
        raise NotImplementedError

    def bias_gelu_backward(self, x, b, gy, approximate="none"):
        """Returns (gx, gb) of gelu(x + b); gb is gx summed over all but the last axis."""
        raise NotImplementedError

    def dropout_forward(self, x, p, key):
        """x * mask / (1 - p); mask from :meth:`dropout_keep` so backward can replay it."""
        raise NotImplementedError

    def dropout_backward(self, gy, p, key):
        """gy * mask / (1 - p), the mask regenerated from ``key`` (nothing saved)."""
        raise NotImplementedError

    def dropout_keep(self, shape, p, key):
        """Boolean keep-mask: element i is kept iff counter_uniform(key, i) >= p.

        counter_uniform is the splitmix64 hash of kernels/random.cuh, so both
        backends draw the same mask for the same key.
        """
        raise NotImplementedError

    # -- fused losses -----------------------------------------------------------------
    def softmax_cross_entropy_forward(self, logits, target, label_smoothing=0.0):
        """Row-wise loss of (N, C) logits against int targets (N,): returns
        (loss (N,), probs (N, C)); probs is what backward needs."""
        raise NotImplementedError

    def softmax_cross_entropy_backward(self, probs, target, gy, label_smoothing=0.0):
        """glogits = (probs - smoothed one-hot(target)) * gy[:, None]."""
        raise NotImplementedError

    # -- fused optimizer updates over a flat arena (all in place) -----------------------
    # ``param``, ``grad`` and state arrays are 1-D views of one param group's arena;
    # ``offsets`` (LAMB, LARS) are the start of each parameter in it, plus the end.
    def sgd_update(self, param, grad, buf, lr, momentum=0.0, dampening=0.0, nesterov=False,
                   weight_decay=0.0, first_step=False):
        """PyTorch's SGD step; ``buf`` is None without momentum."""
        raise NotImplementedError

    def adam_update(self, param, grad, m, v, lr, beta1, beta2, eps, weight_decay, step,
                    decoupled=False):
        """PyTorch's Adam (L2 decay) or AdamW (``decoupled``) step number ``step`` (1-based)."""
        raise NotImplementedError

    def lamb_update(self, param, grad, m, v, offsets, lr, beta1, beta2, eps, weight_decay, step):
        """LAMB (You et al. 2019): Adam direction r plus decay, scaled per parameter by
        ||w|| / ||r + wd w|| (1 where either norm is 0)."""
        raise NotImplementedError

    def lars_update(self, param, grad, buf, offsets, lr, momentum, weight_decay,
                    trust_coefficient, eps=1e-9):
        """LARS (You et al. 2017): local lr = tc * ||w|| / (||g|| + wd ||w|| + eps)
        per parameter, then momentum SGD on (g + wd w) * local lr."""
        raise NotImplementedError

    def grad_norm(self, arrays, norm_type=2.0):
        """The norm of all ``arrays`` taken together, as a Python float (inf-norm too)."""
        raise NotImplementedError
