"""Mixed precision: ``autocast`` and ``GradScaler`` (PyTorch's ``torch.amp`` semantics).

Inside ``with dp.autocast(dtype="float16" | "bfloat16"):`` the ops that are
matrix products -- ``F.linear``, ``dp.matmul`` / ``@``, ``F.conv2d`` and
``F.scaled_dot_product_attention`` -- cast their floating-point inputs to the low
precision (a differentiable cast: the gradient is cast back, so float32
parameters receive float32 gradients and stay the master weights) and compute
with float32 accumulation inside. The fused ops the backend runs on half inputs
(``backend.half_fused``: ReLU, Leaky ReLU, ELU, GELU, SiLU, sigmoid, tanh, bias+GELU,
dropout and the softmax cross-entropy, on the CPU and in the CUDA kernels) take a
half input as it is, compute in float32 inside and round once into a half output, so
what they save for backward stays half; the cross-entropy returns a float32 loss (as
PyTorch's autocast does) and a half gradient for its half logits; bias+GELU keeps a
float32 bias float32 (its gradient summed in float32); dropout drops the elements a
float32 input would drop under the same key. Everything else that goes through
``dlprimer.nn.functional`` -- softmax, the other losses, normalisation -- casts a
half-precision input up to float32 first and runs in float32 (so does everything
inside ``dp.fusion(False)``).

Memory: parameters, gradients and optimizer state stay float32 (16 bytes per
parameter with Adam, as without autocast); each product keeps a half copy of
its weight for backward (2 more bytes per parameter during the step, as in
PyTorch) and half copies of its input, unless that input is already half and
saved (an activation's half output). Measured on the CPU with bfloat16 autocast
(``dp.profiler.memory_by_precision``): a 64-1024-1024-10 GELU MLP at batch 1438 saves
0.60x the float32 activation bytes (0.85x when GELU and the loss ran in float32).

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
    with float32 accumulation; the backend's half-input fused ops (activations,
    bias+GELU, dropout, the cross-entropy: ``backend.half_fused``) on half inputs with
    float32 math inside;
    softmax, the other losses and norms in float32.

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
