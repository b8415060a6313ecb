"""Mixed precision: ``autocast`` and ``GradScaler`` (PyTorch's ``torch.amp`` semantics).

Inside ``with dp.autocast(dtype="float16" | "bfloat16"):`` the ops that are
matrix products -- ``F.linear``, ``dp.matmul`` / ``@``, ``F.conv2d`` and
``F.scaled_dot_product_attention`` -- cast their floating-point inputs to the low
precision (a differentiable cast: the gradient is cast back, so float32
parameters receive float32 gradients and stay the master weights) and compute
with float32 accumulation inside. Everything that goes through
``dlprimer.nn.functional`` otherwise -- softmax, losses, normalisation,
activations, dropout -- casts a half-precision input up to float32 first, so
those run in float32; ReLU, exact in any precision, keeps a half input half
where the backend's fused ReLU takes one (``backend.half_relu``).

Memory: parameters, gradients and optimizer state stay float32 (16 bytes per
parameter with Adam, as without autocast); each product keeps a half copy of
its weight for backward (2 more bytes per parameter during the step, as in
PyTorch) and half copies of its input. The saved activations shrink only where
they outweigh the weights: measured on the CPU, bfloat16 autocast keeps 0.55x
the float32 activation bytes of the SmallCNN at batch 256 and 0.75x of a
512-1024-1024-10 MLP at batch 2048, but 1.6x of that MLP at batch 256.

float16's range ends at 65504 and its smallest normal is 6e-5, so small
gradients underflow to zero; :class:`GradScaler` multiplies the loss by a large
scale S before backward and divides the gradients by S before the step,
skipping steps whose gradients hold inf/NaN and halving S then.
"""
from __future__ import annotations

import contextlib

from .. import _dtype

_state = {"dtype": None}


def autocast_dtype():
    """The low-precision dtype of the enclosing ``autocast`` block, or None."""
    return _state["dtype"]


def _resolve(dtype, backend):
    valid = tuple(backend.autocast_dtypes)
    name = getattr(dtype, "name", dtype)
    if not isinstance(name, str) or name not in valid:
        raise ValueError(f"autocast: dtype {dtype!r} is not supported on the {backend.name!r} "
                         f"backend; valid dtypes: {', '.join(valid)}")
    return _dtype.as_dtype(name)


@contextlib.contextmanager
def autocast(dtype="float16", enabled: bool = True, backend=None):
    """Run linear, matmul, conv2d and attention in ``dtype`` (float16 or bfloat16),
    with float32 accumulation; softmax, losses, norms and activations in float32.

    ``backend``: the backend whose support is checked (default: the current one).
    ``enabled=False`` leaves precision alone (handy for A/B runs). Blocks nest; the
    innermost wins.
    """
    from ..backend import backend_for
    b = backend_for(backend)
    dt = _resolve(dtype, b) if enabled else None
    prev = _state["dtype"]
    _state["dtype"] = dt
    try:
        yield
    finally:
        _state["dtype"] = prev


def cast_low(t):
    """``t`` in the autocast dtype if autocast is on and ``t`` is float32/float64
    (a differentiable cast); otherwise ``t`` unchanged."""
    dt = _state["dtype"]
    if dt is None or t is None or not _dtype.is_float(t.dtype) or t.dtype == dt:
        return t
    return t.astype(dt)


def cast_float32(t):
    """``t`` in float32 if autocast is on and ``t`` is half precision; else ``t``."""
    if _state["dtype"] is None or t is None or not _dtype.is_half(t.dtype):
        return t
    return t.astype(_dtype.float32)


from .grad_scaler import GradScaler  # noqa: E402

__all__ = ["autocast", "autocast_dtype", "cast_low", "cast_float32", "GradScaler"]
