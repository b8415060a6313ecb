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

import contextlib
import math
import time

import numpy as np

from .checks import DeferredChecks, eager_checks_enabled

_SMALL_FINITE = 1 << 14  # elements up to which all_finite skips the BLAS dot


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
    #: True when the meter would count the backend's first-use work as the metered code's
    #: (the CPU JIT: numba's compiles and cache loads are Python objects tracemalloc sees),
    #: so a training run's first step is warm-up, not metered.
    sees_warm_up: bool = False

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
    #: the low-precision dtypes ``dp.autocast`` may use on this backend.
    autocast_dtypes: tuple = ("float16", "bfloat16")
    #: the fused ops (``relu``, ``leaky_relu``, ``elu``, ``gelu``, ``silu``, ``sigmoid``,
    #: ``tanh``, ``cross_entropy``) that take float16/bfloat16 arrays and compute in float32
    #: inside, rounding once into a half output (the loss of ``cross_entropy`` is float32).
    #: Under autocast a half input to one of them stays half, and so does what it saves.
    half_fused: frozenset = frozenset()

    @property
    def half_relu(self) -> bool:
        """Whether the fused ReLU accepts float16/bfloat16 arrays (``"relu" in half_fused``)."""
        return "relu" in self.half_fused
    #: True when work is queued asynchronously (a GPU), so reading a device value into
    #: Python waits for the whole queue: checks in a training step are then deferred.
    device_queue: bool = False

    def __init__(self):
        self._seed = int(np.random.SeedSequence().entropy % (2**63))
        self._counter = 0
        self.deferred = DeferredChecks(self)

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

    def broadcast_to(self, a, shape):
        """A read-only view of ``a`` broadcast to ``shape`` (no copy), as
        ``numpy.broadcast_to``: the gradient of a sum or mean (``ops/reduce.py``)."""
        return self.xp.broadcast_to(a, shape)

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

    #: True where the autograd cross-entropy runs the fused classifier below (CUDA): only
    #: (N, 2) row statistics are saved; the CPU saves the probabilities and skips an exp.
    fused_classifier: bool = False

    def fused_classifier_forward(self, logits, target, label_smoothing=0.0):
        """The fused classifier (llm.c): row losses of (N, C) logits and ``stats`` (N, 2),
        each row's max m and log sum_j e^(x_j - m): all backward needs besides the logits
        (O(N), whatever C). A target outside [0, C) gives its row a NaN loss. Generic xp
        form; CUDA reads the logits once (online softmax)."""
        xp = self.xp
        n, c = logits.shape
        ok = (target >= 0) & (target < c)
        t = xp.where(ok, target, 0)
        m = logits.max(axis=1, keepdims=True)
        z = logits - m
        log_s = xp.log(xp.exp(z).sum(axis=1))
        loss = log_s - xp.take_along_axis(z, t.reshape(-1, 1), axis=1)[:, 0]
        if label_smoothing:
            eps = label_smoothing
            loss = loss * (1 - eps) + (log_s - z.sum(axis=1) / c) * eps
        stats = xp.stack([m[:, 0], log_s], axis=1).astype(logits.dtype)
        return xp.where(ok, loss, xp.nan).astype(logits.dtype), stats

    def fused_classifier_backward(self, logits, stats, target, gy, label_smoothing=0.0,
                                  inplace=False):
        """glogits = (e^((x - m) - log s) - smoothed one-hot(target)) * gy[:, None]; with
        ``inplace`` written over ``logits`` (no N x C allocation)."""
        xp = self.xp
        n, c = logits.shape
        g = logits if inplace else xp.empty_like(logits)
        xp.subtract(logits, stats[:, :1], out=g)
        g -= stats[:, 1:]
        xp.exp(g, out=g)
        eps = label_smoothing
        if eps:
            g -= eps / c
        ok = (target >= 0) & (target < c)
        hot = xp.zeros_like(g)
        xp.put_along_axis(hot, xp.where(ok, target, 0).reshape(-1, 1),
                          ok.astype(g.dtype).reshape(-1, 1) * (1 - eps), axis=1)
        g -= hot
        gy = xp.broadcast_to(gy, (n,)) if gy.ndim == 0 else gy
        g *= gy.reshape(-1, 1)
        return g

    # -- fused optimizer updates over a flat arena (all in place) -----------------------
    # ``param``, ``grad`` and state arrays are 1-D views of one param group's arena;
    # ``offsets`` (LAMB, LARS) are the start of each parameter in it, plus the end.
    def sgd_update(self, param, grad, buf, lr, momentum=0.0, dampening=0.0, nesterov=False,
                   weight_decay=0.0, first_step=False):
        """PyTorch's SGD step; ``buf`` is None without momentum."""
        raise NotImplementedError

    def bind_sgd_update(self, param, grad, buf, lr, momentum=0.0, dampening=0.0,
                        nesterov=False, weight_decay=0.0, first_step=False, check=False):
        """``sgd_update`` with these arguments as a callable of none, for an optimizer
        that runs the same update step after step (the arrays are updated in place, so a
        bound call sees their new values), or None where each step should call
        ``sgd_update`` itself (here: every backend but the JIT CPU one, whose bound call
        skips the kernel's per-call dispatch). With ``check`` the callable is
        ``checked_update("sgd", ...)``'s and returns what it returns; without, it returns
        True."""
        return None

    def bind_adam_update(self, param, grad, m, v, decoupled=False):
        """``adam_update`` on these arrays as a callable ``(lr, beta1, beta2, eps,
        weight_decay, step, check=False) -> bool`` (the scalars change from step to step;
        with ``check`` it is ``checked_update("adam", ...)``), or None where each step
        should call ``adam_update`` itself (here: every backend but the JIT CPU one)."""
        return None

    def checked_update(self, kind, *args, **kwargs) -> bool:
        """``<kind>_update(*args, **kwargs)`` (kind ``"sgd"``, ``"adam"``, ``"lamb"`` or
        ``"lars"``) only when its gradient ``args[1]`` holds no NaN or inf; returns whether
        it ran (False: nothing was written). An optimizer's step calls it for the first
        update it runs, after checking every other gradient of the step: a step with a
        non-finite gradient then writes nothing. Here a check (:meth:`all_finite`, a host
        read) and then the update; the JIT CPU backend does both in one kernel call where
        its kernel covers ``kind`` (SGD, Adam/AdamW)."""
        if not self.all_finite(args[1].reshape(-1)):
            return False
        getattr(self, f"{kind}_update")(*args, **kwargs)
        return True

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

    # -- CUDA graphs (dlprimer/cuda) -------------------------------------------------------
    def graph_capture(self, keep_alive: list):
        """Context manager capturing the block's device work into a graph (CUDA only);
        yields a dict that holds the ``graph`` after the block."""
        raise RuntimeError(
            f"CUDA graphs need the 'cuda' backend; this is the {self.name!r} backend, which "
            "runs each op as it is called (nothing to capture). Use dp.set_backend('cuda') "
            "on a machine with a GPU, or run the step eagerly.")

    def graph_replay(self, graph):
        raise RuntimeError(f"graph_replay: the {self.name!r} backend has no CUDA graphs")

    # -- checks without a host sync (see backend/checks.py) ------------------------------
    @property
    def defers_checks(self) -> bool:
        """True when the checks of a step are device flags read later (a device backend
        with the debug switch ``DLPRIMER_EAGER_CHECKS`` off)."""
        return self.device_queue and not eager_checks_enabled()

    def check_class_targets(self, target, num_classes, fn):
        """Class indices in [0, num_classes), or ValueError naming the first bad one.

        Eager (CPU, or the debug switch): :meth:`class_range`, one host read. Deferred: the
        same test recorded as a device flag (the loss kernels already give such a row a
        NaN loss), raised by ``dp.check_deferred()``.
        """
        if target.size == 0:
            return
        if not self.device_queue:  # a host backend: one range read, no closure to build
            lo, hi = self.class_range(target)
            if lo >= 0 and hi < num_classes:
                return

        def error(count, bad, fn=fn, c=num_classes):
            times = "" if count == 1 else f" ({count} batches had a bad target)"
            return ValueError(f"{fn}: target class {bad} is out of range for {c} classes "
                              f"(valid: 0..{c - 1}){times}")

        self.check_range(target, num_classes, ("class_target", fn, num_classes), error)

    def check_range(self, values, n, key, make_error):
        """Integers ``values`` in [0, n), or the exception ``make_error(count, first_bad)``.

        Eager (CPU, or the debug switch): :meth:`class_range`, one host read, raised here.
        Deferred (a device backend): the test is recorded as a device flag under ``key``
        and raised by ``dp.check_deferred()``, so a step reads nothing back (class
        targets, embedding indices)."""
        if values.size == 0:
            return
        if not self.defers_checks:
            lo, hi = self.class_range(values)
            if lo < 0 or hi >= n:
                raise make_error(1, lo if lo < 0 else hi)
            return
        xp = self.xp
        lo, hi = values.min(), values.max()
        bad_lo = lo < 0
        self.deferred.record(key, bad_lo | (hi >= n), xp.where(bad_lo, lo, hi), make_error)

    def all_finite(self, a) -> bool:
        """True when the flat array ``a`` holds no NaN or inf (a host read). One dot
        product a.a (NaN and inf propagate through it; BLAS reads memory at about 3x the
        speed of a pairwise sum); only a non-finite result is checked element by element
        (an overflow of huge finite values only costs that check). Up to
        ``_SMALL_FINITE`` elements, ``isfinite(a).all()``, which needs no errstate
        (entering one costs more than the whole test of a small model's gradients)."""
        xp = self.xp
        if a.size > _SMALL_FINITE:
            with np.errstate(over="ignore", invalid="ignore"):
                if math.isfinite(float(xp.dot(a, a))):
                    return True
        return bool(xp.isfinite(a).all())

    def nonfinite_flag(self, arrays):
        """A 0-d int32 device array: 1 when any of ``arrays`` holds NaN or inf, else 0.
        No host read (the ``found_inf`` of PyTorch's fused optimizers)."""
        xp = self.xp
        flags = [xp.logical_not(xp.isfinite(a).all()) for a in arrays if a.size]
        if not flags:
            return xp.zeros((), xp.int32)
        return xp.stack(flags).any().astype(xp.int32)

    @contextlib.contextmanager
    def skip_updates_if(self, found_inf, arrays):
        """Updates run inside this block leave ``arrays`` unchanged where the 0-d device
        flag ``found_inf`` is set, decided on the device. Generic form: copy, update,
        copy back under the flag; the CUDA backend passes the flag to its kernels."""
        xp = self.xp
        saved = [a.copy() for a in arrays]
        with np.errstate(all="ignore"):  # a flagged step's NaNs are thrown away
            yield
        keep = found_inf.astype(bool)
        for a, s in zip(arrays, saved):
            xp.copyto(a, s, where=keep)

    def clip_grad_norm_(self, arrays, max_norm, norm_type=2.0):
        """Scale ``arrays`` in place by ``min(max_norm / (norm + 1e-6), 1)`` (PyTorch's
        clip_grad_norm_), where norm is their joint ``norm_type``-norm; returns the norm
        before clipping as a 0-d float64 array. Eager on the host (the norm is a float);
        on a device backend the coefficient is computed and applied on the device."""
        xp = self.xp
        if not self.defers_checks:
            total = self.grad_norm(arrays, norm_type)
            coef = min(max_norm / (total + 1e-6), 1.0) if total == total else float("nan")
            if coef != 1.0:
                for a in arrays:
                    a *= coef
            return xp.asarray(total, dtype=xp.float64)
        total = self._device_norm(arrays, norm_type)
        coef = xp.minimum(max_norm / (total + 1e-6), 1.0)
        for a in arrays:
            a *= coef.astype(a.dtype)
        return total

    def _device_norm(self, arrays, norm_type):
        """The joint norm as a 0-d float64 device array (NaN and inf propagate)."""
        xp = self.xp
        parts = [a.reshape(-1).astype(xp.float64) for a in arrays if a.size]
        if not parts:
            return xp.zeros((), xp.float64)
        if math.isinf(norm_type):
            return xp.stack([xp.abs(a).max() for a in parts]).max()
        total = xp.stack([(xp.abs(a) ** norm_type).sum() for a in parts]).sum()
        return total ** (1.0 / norm_type)
