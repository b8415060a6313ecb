"""The fusion switch and the unfused reference implementations it swaps in.

A fused op does its whole elementwise formula in one pass over memory (one CUDA
kernel; on the CPU an in-place ufunc chain with ``out=``). Without fusion an eager
framework runs the same formula as a chain of primitive array ops, each reading its
inputs from memory and writing a fresh temporary: GELU(x) = 0.5 x (1 + erf(x/sqrt 2))
is four passes and three temporaries instead of one. ``with dp.fusion(False):`` makes
every fused Backend op (activations, softmax-cross-entropy, optimizer updates) run as
such a chain, written here once in ``xp`` code for every backend, so the profiler can
time the same model, on the same data, in the same run, both ways.

It lives with the backends (``dlprimer/backend/unfused.py``; ``dlprimer.unfused`` is
an alias): ``backend_for`` hands it every backend it creates (:func:`adopt_backend`),
and this module imports nothing from the backend registry, so there is no cycle.

Mechanism: inside the block the fused methods of every live Backend instance are
shadowed by instance attributes bound to the functions below (same names and
signatures as the contract in ``backend/base.py``); leaving the block removes them.
Activation Functions and optimizers need no change: they call ``backend.<op>``.
"""
from __future__ import annotations

import contextlib
import functools
import math

_SQRT_2 = math.sqrt(2.0)
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_GELU_C = 0.044715


# -- activations: one primitive op per line, each a temporary ------------------------
def relu_forward(b, x):
    return b.xp.where(x > 0, x, 0)


def relu_backward(b, y, gy):
    return gy * (y > 0)


def leaky_relu_forward(b, x, negative_slope):
    return b.xp.where(x > 0, x, x * negative_slope)


def leaky_relu_backward(b, x, gy, negative_slope):
    return b.xp.where(x > 0, gy, gy * negative_slope)


def elu_forward(b, x, alpha):
    xp = b.xp
    return xp.where(x > 0, x, (xp.exp(xp.minimum(x, 0)) - 1) * alpha)


def elu_backward(b, x, gy, alpha):
    xp = b.xp
    return xp.where(x > 0, gy, gy * (xp.exp(xp.minimum(x, 0)) * alpha))


def _gelu_tanh_parts(b, x):
    xp = b.xp
    x2 = x * x
    u = (x + x2 * x * _GELU_C) * _SQRT_2_OVER_PI
    return x2, xp.tanh(u)


def gelu_forward(b, x, approximate="none"):
    """0.5 x (1 + erf(x / sqrt 2)), or with tanh(sqrt(2/pi)(x + 0.044715 x^3)) for erf."""
    if approximate == "tanh":
        _, t = _gelu_tanh_parts(b, x)
        return x * ((t + 1) * 0.5)
    return x * ((b.erf(x / _SQRT_2) + 1) * 0.5)  # (1 + e) * x first would overflow past max/2


def gelu_backward(b, x, gy, approximate="none"):
    """d/dx GELU = Phi(x) + x phi(x) (exact), or the tanh form's derivative."""
    if approximate == "tanh":
        x2, t = _gelu_tanh_parts(b, x)
        du = (x2 * (3 * _GELU_C) + 1) * _SQRT_2_OVER_PI
        d = (t + 1) * 0.5 + x * (1 - t * t) * du * 0.5
        return gy * d
    cdf = (b.erf(x / _SQRT_2) + 1) * 0.5
    pdf = b.xp.exp(x * x * -0.5) * _INV_SQRT_2PI
    return gy * (cdf + x * pdf)


def _sigmoid(b, x):
    xp = b.xp
    e = xp.exp(-xp.abs(x))
    return xp.where(x >= 0, 1 / (1 + e), e / (1 + e))


def sigmoid_forward(b, x):
    return _sigmoid(b, x)


def sigmoid_backward(b, y, gy):
    return gy * (y * (1 - y))


def tanh_forward(b, x):
    return b.xp.tanh(x)


def tanh_backward(b, y, gy):
    return gy * (1 - y * y)


def silu_forward(b, x):
    return x * _sigmoid(b, x)


def silu_backward(b, x, gy):
    s = _sigmoid(b, x)
    return gy * (s * (1 + x * (1 - s)))


def bias_gelu_forward(b, x, bias, approximate="none"):
    return gelu_forward(b, x + bias, approximate)


def bias_gelu_backward(b, x, bias, gy, approximate="none"):
    gx = gelu_backward(b, x + bias, gy, approximate)
    return gx, gx.reshape(-1, gx.shape[-1]).sum(axis=0)


# -- loss ------------------------------------------------------------------------------
def softmax_cross_entropy_forward(b, logits, target, label_smoothing=0.0):
    """Row-wise -(1-e) log p_t - e mean_c log p_c, with log p = z - max - log sum exp."""
    xp = b.xp
    z = logits - logits.max(axis=1, keepdims=True)
    e = xp.exp(z)
    s = e.sum(axis=1, keepdims=True)
    logp = z - xp.log(s)
    probs = e / s
    picked = xp.take_along_axis(logp, target.reshape(-1, 1).astype("int64"), axis=1)[:, 0]
    loss = -picked
    if label_smoothing:
        loss = loss * (1 - label_smoothing) - logp.mean(axis=1) * label_smoothing
    return loss, probs


def softmax_cross_entropy_backward(b, probs, target, gy, label_smoothing=0.0):
    xp = b.xp
    n, c = probs.shape
    onehot = (xp.arange(c).reshape(1, c) == target.reshape(n, 1)).astype(probs.dtype)
    if label_smoothing:
        onehot = onehot * (1 - label_smoothing) + label_smoothing / c
    return (probs - onehot) * (gy.reshape(n, 1) if gy.ndim else gy)


# -- optimizer updates (in place on param and state, like the fused ones) --------------
def sgd_update(b, param, grad, buf, lr, momentum=0.0, dampening=0.0, nesterov=False,
               weight_decay=0.0, first_step=False):
    g = grad + param * weight_decay if weight_decay else grad
    if momentum:
        if first_step:
            buf[...] = g
        else:
            buf[...] = buf * momentum + g * (1 - dampening)
        g = g + buf * momentum if nesterov else buf
    param[...] = param - g * lr
    return param


def adam_update(b, param, grad, m, v, lr, beta1, beta2, eps, weight_decay, step,
                decoupled=False):
    xp = b.xp
    g = grad
    if weight_decay:
        if decoupled:
            param[...] = param * (1 - lr * weight_decay)
        else:
            g = grad + param * weight_decay
    m[...] = m * beta1 + g * (1 - beta1)
    v[...] = v * beta2 + g * g * (1 - beta2)
    bc1 = 1 - beta1 ** step
    bc2 = 1 - beta2 ** step
    denom = xp.sqrt(v) / math.sqrt(bc2) + eps
    param[...] = param - m / denom * (lr / bc1)
    return param


def _segments(offsets):
    return [(int(offsets[i]), int(offsets[i + 1])) for i in range(len(offsets) - 1)]


def _where_positive(xp, a, b, num, den):
    """num / den where the norms a and b are both > 0, else 1: on the device, as an
    eager framework's chain keeps it (a float() per parameter would be a host sync)."""
    ok = (a > 0) & (b > 0)
    return xp.where(ok, num / xp.where(ok, den, 1), 1)


def lamb_update(b, param, grad, m, v, offsets, lr, beta1, beta2, eps, weight_decay, step):
    xp = b.xp
    m[...] = m * beta1 + grad * (1 - beta1)
    v[...] = v * beta2 + grad * grad * (1 - beta2)
    mhat = m / (1 - beta1 ** step)
    vhat = v / (1 - beta2 ** step)
    r = mhat / (xp.sqrt(vhat) + eps)
    if weight_decay:
        r = r + param * weight_decay
    for lo, hi in _segments(offsets):
        wn = xp.sqrt((param[lo:hi] * param[lo:hi]).sum())
        rn = xp.sqrt((r[lo:hi] * r[lo:hi]).sum())
        trust = _where_positive(xp, wn, rn, wn, rn)
        param[lo:hi] = param[lo:hi] - r[lo:hi] * (lr * trust)
    return param


def lars_update(b, param, grad, buf, offsets, lr, momentum, weight_decay, trust_coefficient,
                eps=1e-9):
    xp = b.xp
    for lo, hi in _segments(offsets):
        w, g = param[lo:hi], grad[lo:hi]
        wn = xp.sqrt((w * w).sum())
        gn = xp.sqrt((g * g).sum())
        local = _where_positive(xp, wn, gn, trust_coefficient * wn, gn + weight_decay * wn + eps)
        d = (g + w * weight_decay) * local
        if momentum:
            buf[lo:hi] = buf[lo:hi] * momentum + d
            d = buf[lo:hi]
        param[lo:hi] = w - d * lr
    return param


UNFUSED_OPS = (
    "relu_forward", "relu_backward", "leaky_relu_forward", "leaky_relu_backward",
    "elu_forward", "elu_backward", "gelu_forward", "gelu_backward",
    "silu_forward", "silu_backward", "sigmoid_forward", "sigmoid_backward",
    "tanh_forward", "tanh_backward", "bias_gelu_forward", "bias_gelu_backward",
    "softmax_cross_entropy_forward", "softmax_cross_entropy_backward",
    "sgd_update", "adam_update", "lamb_update", "lars_update",
)
"""Backend methods that ``fusion(False)`` replaces (dropout keeps its fused, keyed
mask: it is neither activation, loss nor update, and its mask must not change)."""


# -- the switch ---------------------------------------------------------------------------
_enabled = True
_patched: dict = {}  # id(backend) -> (backend, {name: previous instance attribute or None})
_known: dict = {}  # id(backend) -> backend, every backend ``backend_for`` has created


def fusion_enabled() -> bool:
    """False inside ``with dp.fusion(False)``."""
    return _enabled


def _live_backends():
    return list(_known.values())


def _unfuse(backend):
    if id(backend) in _patched:
        return
    prev = {}
    g = globals()
    for name in UNFUSED_OPS:
        prev[name] = backend.__dict__.get(name)
        setattr(backend, name, functools.partial(g[name], backend))
    _patched[id(backend)] = (backend, prev)


def _refuse(backend):
    entry = _patched.pop(id(backend), None)
    if entry is None:
        return
    _, prev = entry
    for name, old in prev.items():
        if old is None:
            backend.__dict__.pop(name, None)
        else:
            setattr(backend, name, old)


def adopt_backend(backend):
    """Called by ``backend_for`` on each backend it creates, so the switch knows every
    live backend without importing the backend registry; one created inside
    ``fusion(False)`` (``model.to("cuda")`` in the block) runs unfused too."""
    _known[id(backend)] = backend
    if not _enabled:
        _unfuse(backend)


def _apply(enabled: bool):
    global _enabled
    _enabled = enabled
    if enabled:
        for b, _ in list(_patched.values()):
            _refuse(b)
    else:
        for b in _live_backends():
            _unfuse(b)


@contextlib.contextmanager
def fusion(enabled: bool = True):
    """Context manager: ``with dp.fusion(False):`` runs activations, the softmax
    cross-entropy and optimizer updates as chains of primitive ops; ``fusion(True)``
    (nested) turns the fused ops back on. The previous setting returns on exit.
    """
    if not isinstance(enabled, bool):
        raise TypeError(f"fusion(enabled) takes a bool, got {type(enabled).__name__}")
    prev = _enabled
    _apply(enabled)
    try:
        yield
    finally:
        _apply(prev)


__all__ = ["fusion", "fusion_enabled", "adopt_backend", "UNFUSED_OPS"]
