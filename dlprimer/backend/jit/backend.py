"""The CPU backend with JIT kernels: :class:`JitCPUBackend` is ``backend_for("cpu")``
unless ``DLPRIMER_JIT=0``.

Each fused op runs its numba kernel (:mod:`.kernels`) when every array is float32 or
float64 and of one dtype; anything else (float16, bfloat16, integers, mixed dtypes), and
any kernel that failed to compile, takes the NumPy ufunc-chain path of the parent
:class:`~dlprimer.backend.cpu.CPUBackend`, which stays the reference.
"""
from __future__ import annotations

import math

import numpy as np

from ..cpu import CPUBackend, CPUMemoryMeter
from . import NO, _load, _ready, bind, call, fail, kernel

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


def _same_float(*arrays):
    """The common dtype when all arrays are float32, or all float64; else None."""
    dt = arrays[0].dtype
    if dt not in _FLOATS:
        return None
    for a in arrays[1:]:
        if a.dtype != dt:
            return None
    return dt


def _variant(x, approximate):
    """Which GELU kernel: the tanh form, or the erf fit for float32 / float64."""
    if approximate == "tanh":
        return "tanh"
    return "erf64" if x.dtype == np.float64 else "erf"


def _flat(a):
    """``a`` as a C-contiguous 1-D array (a read-only one, from np.frombuffer or a memmap,
    is left read-only: numba types it as another signature, one more compile once, cheaper
    than a check on every call)."""
    return np.ascontiguousarray(a).reshape(-1)


_INT64 = np.dtype(np.int64)


def _targets(target):
    """Integer class indices as C-contiguous int64 where that holds every value (all integer
    types but uint64): one signature per kernel whatever type the caller used."""
    if target.dtype != _INT64 and (target.dtype.kind != "u" or target.dtype.itemsize != 8):
        target = target.astype(_INT64)
    return np.ascontiguousarray(target)


def _kernel_range(target):
    """(min, max) of non-empty 1-D integer targets read by the ``int_range`` kernel, or None
    where it cannot run (then the caller takes the NumPy path; a compile error warns once)."""
    dt = target.dtype
    if not (target.ndim == 1 and target.size and dt.kind in "iu"):
        return None
    k = _ready.get("int_range") or kernel("int_range")
    if k is None:
        return None
    try:
        lo, hi = k(np.ascontiguousarray(target) if dt is _INT64 else _targets(target))
    except Exception as e:  # a compile error (see jit.call)
        fail("int_range", e)
        return None
    return int(lo), int(hi)


def _adam_scalars(lr, beta1, beta2, eps, weight_decay, step):
    """The ``adam`` kernel's scalars (see CPUBackend.adam_update): -a_t, 1 - b1, b2, 1 - b2,
    eps sqrt(1 - b2^t), wd, 1 - lr wd, with a_t = lr sqrt(1 - b2^t) / (1 - b1^t)."""
    bc1 = 1.0 - beta1 ** step
    bc2_sqrt = (1.0 - beta2 ** step) ** 0.5
    return (-lr * bc2_sqrt / bc1, 1.0 - beta1, beta2, 1.0 - beta2, eps * bc2_sqrt,
            weight_decay, 1.0 - lr * weight_decay)


def _unary_op(name):
    """The backend method ``name(x)``: kernel ``name`` into a new array, or the NumPy path's
    method where the JIT cannot run it. The activations without constants are these (one
    call per op: ``_unary``'s work without its frame, a small model's fixed cost)."""
    numpy_path = getattr(CPUBackend, name)

    def op(self, x):
        dt = x.dtype
        if dt in _FLOATS:
            k = _ready.get(name) or kernel(name)
            if k is not None:
                out = np.empty(x.shape, dtype=dt)
                try:   # ravel: C-contiguous, a view when x is
                    k(x.ravel(), out.reshape(-1))
                except Exception as e:  # a compile error (see jit.call)
                    fail(name, e)
                else:
                    return out
        return numpy_path(self, x)
    op.__name__ = op.__qualname__ = name
    op.__doc__ = numpy_path.__doc__
    return op


def _binary_op(name):
    """The backend method ``name(a, gy)`` (a backward; ``a`` is x or y), as :func:`_unary_op`."""
    numpy_path = getattr(CPUBackend, name)

    def op(self, a, gy):
        dt = a.dtype
        if dt in _FLOATS and gy.dtype == dt and a.shape == gy.shape:
            k = _ready.get(name) or kernel(name)
            if k is not None:
                out = np.empty(gy.shape, dtype=dt)
                try:
                    k(a.ravel(), gy.ravel(), out.reshape(-1))
                except Exception as e:
                    fail(name, e)
                else:
                    return out
        return numpy_path(self, a, gy)
    op.__name__ = op.__qualname__ = name
    op.__doc__ = numpy_path.__doc__
    return op


class JitMemoryMeter(CPUMemoryMeter):
    """The CPU meter with numba and the kernels imported before tracing starts: imported
    under tracemalloc, numba's Python objects were counted in the metered step's peak, and
    importing ran slower. A kernel's first call (its compile, or its load from the cache)
    still allocates Python objects under the meter, hence ``sees_warm_up`` (a digits MLP's
    first training step read 35.8 MB with an empty cache, 27.7 MB with a full one, against
    0.6 MB with the JIT off and 0.14 MB from the second step on)."""

    sees_warm_up = True

    def start(self):
        _load()
        super().start()


class JitCPUBackend(CPUBackend):
    """NumPy arrays, numba kernels for the fused ops (one pass each, one thread)."""

    jit = True

    def __init__(self):
        super().__init__()
        self.memory = JitMemoryMeter()

    # -- elementwise activations ----------------------------------------------------------
    # The glue below runs once per op: for a small model's arrays it costs as much as the
    # kernel, so it tests the dtype inline, converts constants only when there are any, and
    # calls the kernel's dispatcher itself (jit.kernel) rather than through jit.call.
    def _unary(self, name, x, *consts):
        """out = kernel(x) with ``consts`` cast to x's dtype; NO when not JIT-able."""
        dt = x.dtype
        if dt not in _FLOATS:
            return NO
        k = _ready.get(name) or kernel(name)
        if k is None:
            return NO
        out = np.empty(x.shape, dtype=dt)
        try:   # ravel: C-contiguous, a view when x is
            if consts:
                k(x.ravel(), out.reshape(-1), *map(dt.type, consts))
            else:
                k(x.ravel(), out.reshape(-1))
        except Exception as e:  # a compile error (see jit.call)
            return fail(name, e)
        return out

    def _binary(self, name, a, gy, *consts):
        """out = kernel(a, gy) (a backward: ``a`` is x or y); NO when not JIT-able."""
        dt = a.dtype
        if a.shape != gy.shape or dt not in _FLOATS or gy.dtype != dt:
            return NO
        k = _ready.get(name) or kernel(name)
        if k is None:
            return NO
        out = np.empty(gy.shape, dtype=dt)
        try:
            if consts:
                k(a.ravel(), gy.ravel(), out.reshape(-1), *map(dt.type, consts))
            else:
                k(a.ravel(), gy.ravel(), out.reshape(-1))
        except Exception as e:
            return fail(name, e)
        return out

    relu_forward = _unary_op("relu_forward")
    relu_backward = _binary_op("relu_backward")

    def leaky_relu_forward(self, x, negative_slope):
        out = self._unary("leaky_relu_forward", x, negative_slope)
        return super().leaky_relu_forward(x, negative_slope) if out is NO else out

    def leaky_relu_backward(self, x, gy, negative_slope):
        out = self._binary("leaky_relu_backward", x, gy, negative_slope)
        return super().leaky_relu_backward(x, gy, negative_slope) if out is NO else out

    def elu_forward(self, x, alpha):
        out = self._unary("elu_forward", x, alpha)
        return super().elu_forward(x, alpha) if out is NO else out

    def elu_backward(self, x, gy, alpha):
        out = self._binary("elu_backward", x, gy, alpha)
        return super().elu_backward(x, gy, alpha) if out is NO else out

    def gelu_forward(self, x, approximate="none"):
        self._check_approximate(approximate)
        out = self._unary(f"gelu_{_variant(x, approximate)}_forward", x)
        return super().gelu_forward(x, approximate) if out is NO else out

    def gelu_backward(self, x, gy, approximate="none"):
        self._check_approximate(approximate)
        out = self._binary(f"gelu_{_variant(x, approximate)}_backward", x, gy)
        return super().gelu_backward(x, gy, approximate) if out is NO else out

    silu_forward = _unary_op("silu_forward")
    silu_backward = _binary_op("silu_backward")
    sigmoid_forward = _unary_op("sigmoid_forward")
    sigmoid_backward = _binary_op("sigmoid_backward")
    tanh_forward = _unary_op("tanh_forward")
    tanh_backward = _binary_op("tanh_backward")

    # -- bias + GELU ------------------------------------------------------------------------
    def _bias_rows(self, x, b, *others):
        """(x, others...) as C-contiguous (rows, C) arrays, or None when not JIT-able."""
        self._rows(x, b)
        if _same_float(x, b, *others) is None:
            return None
        c = b.shape[0]
        return [np.ascontiguousarray(a).reshape(-1, c) for a in (x, *others)]

    def bias_gelu_forward(self, x, b, approximate="none"):
        self._check_approximate(approximate)
        rows = self._bias_rows(x, b)
        if rows is not None:
            out = np.empty(x.shape, dtype=x.dtype)
            if call(f"bias_gelu_{_variant(x, approximate)}_forward", rows[0],
                    np.ascontiguousarray(b), out.reshape(rows[0].shape)) is not NO:
                return out
        return super().bias_gelu_forward(x, b, approximate)

    def bias_gelu_backward(self, x, b, gy, approximate="none"):
        self._check_approximate(approximate)
        rows = self._bias_rows(x, b, gy) if x.shape == gy.shape else None
        if rows is not None:
            gx = np.empty(gy.shape, dtype=gy.dtype)
            gb = np.empty(b.shape, dtype=b.dtype)
            if call(f"bias_gelu_{_variant(x, approximate)}_backward", rows[0],
                    np.ascontiguousarray(b), rows[1], gx.reshape(rows[0].shape), gb) is not NO:
                return gx, gb
        return super().bias_gelu_backward(x, b, gy, approximate)

    # -- dropout ----------------------------------------------------------------------------
    def dropout_forward(self, x, p, key):
        dt = _same_float(x)
        if dt is None or p >= 1 or x.size == 0:
            return super().dropout_forward(x, p, key)
        seed, counter = key
        threshold = math.ceil(float(np.float32(p)) * (1 << 24))
        out = np.empty(x.shape, dtype=dt)
        if call("dropout", _flat(x), out.reshape(-1), dt.type(1.0 / (1.0 - p)), dt.type(1),
                np.int64(threshold), np.uint64(seed % 2**64), np.uint64(counter % 2**64)) is NO:
            return super().dropout_forward(x, p, key)
        return out

    # -- softmax cross-entropy -------------------------------------------------------------------
    def softmax_cross_entropy_forward(self, logits, target, label_smoothing=0.0):
        dt, shape, tdt = logits.dtype, logits.shape, target.dtype
        if dt not in _FLOATS or len(shape) != 2 or shape[1] == 0 or tdt.kind not in "iu":
            return super().softmax_cross_entropy_forward(logits, target, label_smoothing)
        probs = np.empty(shape, dtype=dt)
        loss = np.empty(shape[0], dtype=dt)
        logits = np.ascontiguousarray(logits)
        target = np.ascontiguousarray(target) if tdt is _INT64 else _targets(target)
        eps = float(label_smoothing)
        k = _ready.get("softmax_xent_forward") or kernel("softmax_xent_forward")
        try:
            redo = NO if k is None else k(logits, loss[:0], target, probs, loss, eps)
        except Exception as e:
            redo = fail("softmax_xent_forward", e)
        if redo is NO:
            return super().softmax_cross_entropy_forward(logits, target, label_smoothing)
        if redo:    # rows the first value could not shift (overflow, NaN, inf): by the max
            rows = np.flatnonzero(np.isnan(loss))
            sub = np.ascontiguousarray(logits[rows])
            p, l = np.empty_like(sub), np.empty(len(rows), dtype=dt)
            call("softmax_xent_forward", sub, sub.max(axis=1), target[rows], p, l, eps)
            probs[rows], loss[rows] = p, l
        return loss, probs

    def softmax_cross_entropy_backward(self, probs, target, gy, label_smoothing=0.0):
        dt, shape, tdt = probs.dtype, probs.shape, target.dtype
        if dt not in _FLOATS or len(shape) != 2 or tdt.kind not in "iu":
            return super().softmax_cross_entropy_backward(probs, target, gy, label_smoothing)
        g = np.empty(shape[0], dtype=dt)   # writable: a read-only array is another signature
        g[...] = gy                     # a 0-d gy (mean, sum) broadcast, or one per row
        out = np.empty(shape, dtype=dt)
        t = np.ascontiguousarray(target) if tdt is _INT64 else _targets(target)
        k = _ready.get("softmax_xent_backward") or kernel("softmax_xent_backward")
        if k is not None:
            try:
                k(np.ascontiguousarray(probs), t, g, out, dt.type(label_smoothing))
            except Exception as e:
                fail("softmax_xent_backward", e)
            else:
                return out
        return super().softmax_cross_entropy_backward(probs, target, gy, label_smoothing)

    def class_range(self, target):
        r = _kernel_range(target)
        return super().class_range(target) if r is None else r

    def check_class_targets(self, target, num_classes, fn):
        """The base check (ValueError naming the first bad class) with the range read by the
        kernel inline: a loss's fixed cost on a small batch is its calls, not its pass."""
        r = _kernel_range(target)
        if r is not None and r[0] >= 0 and r[1] < num_classes:
            return
        super().check_class_targets(target, num_classes, fn)

    # -- optimizer updates: one pass over the arena ------------------------------------------------
    def _sgd_args(self, param, grad, buf, lr, momentum=0.0, dampening=0.0, nesterov=False,
                  weight_decay=0.0, first_step=False):
        """The ``sgd`` kernel's arguments (all but ``check``), or None where it cannot run
        (another dtype, or ``sgd_update`` shadowed, e.g. by ``dp.fusion(False)``)."""
        dt = _same_float(param, grad) if (buf is None or not momentum) else _same_float(
            param, grad, buf)
        if dt is None or "sgd_update" in vars(self):
            return None
        c = dt.type
        b = buf if (buf is not None and momentum) else param[:0]
        return (param, grad, b, c(lr), c(momentum), c(1.0 - dampening), bool(nesterov),
                c(weight_decay), bool(first_step))

    def _adam_args(self, param, grad, m, v, lr, beta1, beta2, eps, weight_decay, step,
                   decoupled=False):
        """The ``adam`` kernel's arguments (all but ``check``), or None (as _sgd_args)."""
        dt = _same_float(param, grad, m, v)
        if dt is None or "adam_update" in vars(self):
            return None
        scalars = _adam_scalars(lr, beta1, beta2, eps, weight_decay, step)
        return (param, grad, m, v, *map(dt.type, scalars), bool(decoupled))

    def sgd_update(self, param, grad, buf, lr, momentum=0.0, dampening=0.0, nesterov=False,
                   weight_decay=0.0, first_step=False):
        args = self._sgd_args(param, grad, buf, lr, momentum, dampening, nesterov,
                              weight_decay, first_step)
        if args is not None and call("sgd", *args, False) is not NO:
            return param
        return super().sgd_update(param, grad, buf, lr, momentum, dampening, nesterov,
                                  weight_decay, first_step)

    def bind_sgd_update(self, param, grad, buf, lr, momentum=0.0, dampening=0.0,
                        nesterov=False, weight_decay=0.0, first_step=False, check=False):
        """The numba kernel's compiled entry point with its arguments converted once
        (:func:`.bind`); None where ``sgd_update`` would not run the kernel (another dtype,
        or the method shadowed, e.g. by ``dp.fusion(False)``). With ``check`` the bound
        call is :meth:`checked_update`'s: one kernel call that reads every gradient first."""
        args = self._sgd_args(param, grad, buf, lr, momentum, dampening, nesterov,
                              weight_decay, first_step)
        fn = NO if args is None else bind("sgd", *args, bool(check))
        return None if fn is NO else fn

    def adam_update(self, param, grad, m, v, lr, beta1, beta2, eps, weight_decay, step,
                    decoupled=False):
        args = self._adam_args(param, grad, m, v, lr, beta1, beta2, eps, weight_decay, step,
                               decoupled)
        if args is not None and call("adam", *args, False) is not NO:
            return param
        return super().adam_update(param, grad, m, v, lr, beta1, beta2, eps, weight_decay,
                                   step, decoupled)

    def bind_adam_update(self, param, grad, m, v, decoupled=False):
        """The ``adam`` kernel's entry point bound to its arrays (:func:`.bind` with the
        scalars left free: the bias corrections change at every step): a callable
        ``(lr, beta1, beta2, eps, weight_decay, step, check=False) -> bool`` that runs
        ``adam_update`` (``checked_update("adam", ...)`` with ``check``), bit for bit; None
        where ``adam_update`` would not run the kernel."""
        dt = _same_float(param, grad, m, v)
        if dt is None or "adam_update" in vars(self):
            return None
        z = dt.type(0)
        fn = bind("adam", param, grad, m, v, free=(z,) * 7 + (False, False))
        if fn is NO:
            return None
        decoupled = bool(decoupled)

        def update(lr, beta1, beta2, eps, weight_decay, step, check=False):
            return fn(*_adam_scalars(lr, beta1, beta2, eps, weight_decay, step), decoupled,
                      check)
        return update

    def checked_update(self, kind, *args, **kwargs) -> bool:
        """SGD and Adam/AdamW: the check and the update in one kernel call (the kernel reads
        every gradient first and writes nothing on a NaN or inf); the rest, and whatever the
        kernel does not cover, as the base class does (a check, then the update)."""
        make = self._CHECKED.get(kind)
        kargs = None if make is None else make(self, *args, **kwargs)
        if kargs is not None:
            r = call(kind, *kargs, True)
            if r is not NO:
                return bool(r)
        return super().checked_update(kind, *args, **kwargs)

    _CHECKED = {"sgd": _sgd_args, "adam": _adam_args}

    def lamb_update(self, param, grad, m, v, offsets, lr, beta1, beta2, eps, weight_decay, step):
        dt = _same_float(param, grad, m, v)
        if dt is None:
            return super().lamb_update(param, grad, m, v, offsets, lr, beta1, beta2, eps,
                                       weight_decay, step)
        c = dt.type
        ib1, ib2 = c(1.0 / (1.0 - beta1 ** step)), c(1.0 / (1.0 - beta2 ** step) ** 0.5)
        for i in range(len(offsets) - 1):
            s, e = int(offsets[i]), int(offsets[i + 1])
            r = call("lamb_moments", param[s:e], grad[s:e], m[s:e], v[s:e],
                     c(1.0 - beta1), c(beta2), c(1.0 - beta2), ib1, ib2, c(eps),
                     c(weight_decay))
            if r is NO and i == 0:      # failed to compile: nothing written yet
                return super().lamb_update(param, grad, m, v, offsets, lr, beta1, beta2, eps,
                                           weight_decay, step)
            w2, u2 = r
            trust = (w2 / u2) ** 0.5 if w2 > 0.0 and u2 > 0.0 else 1.0
            if call("lamb_apply", param[s:e], m[s:e], v[s:e], ib1, ib2, c(eps),
                    c(weight_decay), c(-lr * trust)) is NO:
                u = m[s:e] * ib1 / (np.sqrt(v[s:e]) * ib2 + c(eps)) + c(weight_decay) * param[s:e]
                param[s:e] += c(-lr * trust) * u
        return param

    def lars_update(self, param, grad, buf, offsets, lr, momentum, weight_decay,
                    trust_coefficient, eps=1e-9):
        dt = _same_float(param, grad) if buf is None else _same_float(param, grad, buf)
        if dt is None:
            return super().lars_update(param, grad, buf, offsets, lr, momentum, weight_decay,
                                       trust_coefficient, eps)
        c = dt.type
        for i in range(len(offsets) - 1):
            s, e = int(offsets[i]), int(offsets[i + 1])
            r = call("sumsq2", param[s:e], grad[s:e])
            if r is NO and i == 0:
                return super().lars_update(param, grad, buf, offsets, lr, momentum,
                                           weight_decay, trust_coefficient, eps)
            wn, gn = r[0] ** 0.5, r[1] ** 0.5
            local = (trust_coefficient * wn / (gn + weight_decay * wn + eps)
                     if wn > 0.0 and gn > 0.0 else 1.0)
            b = param[:0] if buf is None else buf[s:e]
            if call("lars_apply", param[s:e], grad[s:e], b, c(local), c(lr),
                    c(momentum), c(weight_decay)) is NO:
                d = c(local) * (grad[s:e] + c(weight_decay) * param[s:e])
                if momentum and buf is not None:
                    buf[s:e] *= c(momentum)
                    buf[s:e] += d
                    d = buf[s:e]
                param[s:e] -= c(lr) * d
        return param

    def all_finite(self, a) -> bool:
        dt = _same_float(a)
        if dt is not None:
            r = call("all_finite", _flat(a))
            if r is not NO:
                return bool(r)
        return super().all_finite(a)

    def grad_norm(self, arrays, norm_type=2.0):
        norm_type = float(norm_type)
        arrays = list(arrays)
        if not norm_type > 0 or any(a.dtype not in _FLOATS for a in arrays):
            return super().grad_norm(arrays, norm_type)
        inf = norm_type == float("inf")
        total = 0.0
        for a in arrays:
            flat = _flat(a)
            if flat.size == 0:
                continue
            if inf:
                r = call("maxabs", flat)
            elif norm_type == 2.0:
                r = call("sumsq", flat)
            else:
                r = call("sum_abs_pow", flat, norm_type)
            if r is NO:
                return super().grad_norm(arrays, norm_type)
            total = (r if (r != r or r > total) else total) if inf else total + r
        if inf or total != total:
            return total
        return total ** 0.5 if norm_type == 2.0 else total ** (1.0 / norm_type)
