"""Stateless layers: activations, dropout, linear, normalization and losses.

``import dlprimer.nn.functional as F``. Each function checks its arguments
(shapes, dtypes, class ranges, option names) and raises a ValueError that says
what is wrong, then applies one autograd Function from :mod:`dlprimer.ops`.
"""
from __future__ import annotations

import math
import numbers

import numpy as np

from .. import _dtype
from .. import amp as _amp
from ..amp import _state as _amp_state
from ..ops.activation import (ELU, GELU, BiasGELU, Dropout, LeakyReLU, LogSoftmax, ReLU,
                              Sigmoid, SiLU, Softmax, Tanh)
from ..ops.attention import scaled_dot_product_attention
from ..ops.conv import avg_pool2d, conv2d, max_pool2d
from ..ops.embedding import embedding
from ..ops.linear import Linear
from ..ops.loss import (REDUCTIONS, BCEWithLogits, CrossEntropy, FocalLoss, HuberLoss, L1Loss,
                        MSELoss)
from ..ops.norm import BatchNorm, LayerNorm
from ..backend.unfused import fusion_enabled
from ..tensor import Tensor, tensor

__all__ = [
    "relu", "leaky_relu", "gelu", "bias_gelu", "silu", "sigmoid", "tanh", "elu", "softmax",
    "log_softmax", "linear", "dropout", "batch_norm", "layer_norm",
    "cross_entropy", "mse_loss", "l1_loss", "huber_loss", "binary_cross_entropy_with_logits",
    "focal_loss", "embedding", "scaled_dot_product_attention", "conv2d", "max_pool2d",
    "avg_pool2d",
]


def _tensor(x, fn, name="input"):
    if isinstance(x, Tensor):
        return x
    try:
        return tensor(x)
    except (TypeError, ValueError) as e:
        raise TypeError(f"{fn}: {name} must be a Tensor, got {type(x).__name__} ({e})") from None


def _float(x, fn, name="input", amp=True, fused=None):
    """``x`` as a floating-point Tensor; under ``dp.autocast`` a half-precision ``x``
    is cast up to float32 (``amp=False`` leaves it: the low-precision ops), unless
    ``fused`` names a fused op the backend runs on half inputs with float32 math
    inside (``backend.half_fused``): then ``x`` stays half, and so does what it saves."""
    if not isinstance(x, Tensor):
        x = _tensor(x, fn, name)
    dt = x.data.dtype
    if dt.kind == "f" and dt.itemsize > 2:  # float32/64: nothing to cast under autocast
        return x
    if dt.kind != "f" and not _dtype.is_float(dt):
        raise TypeError(f"{fn}: {name} must be a floating-point tensor, got {dt}")
    return x if not amp or _keeps_half(x, fused) else _amp.cast_float32(x)


def _keeps_half(x, fused):
    """Whether the fused op ``fused`` runs on ``x``'s backend with half inputs as they are."""
    return fused in x.backend.half_fused and fusion_enabled()


def _number(v, fn, name, lo=None, hi=None, lo_open=False):
    t = type(v)  # a float or an int skips the ABC check (a Python-level isinstance)
    if t is not float and t is not int and (not isinstance(v, numbers.Real) or t is bool):
        raise ValueError(f"{fn}: {name} must be a number, got {v!r}")
    v = float(v)
    if not math.isfinite(v) or (lo is not None and (v < lo or (lo_open and v == lo))) or (
            hi is not None and v > hi):
        rng = f"{'(' if lo_open else '['}{lo}, {hi if hi is not None else 'inf'}]"
        raise ValueError(f"{fn}: {name} must be in {rng}, got {v}")
    return v


# -- activations -------------------------------------------------------------------------
def relu(x):
    """max(x, 0); the gradient at 0 is 0."""
    if not isinstance(x, Tensor):
        x = _tensor(x, "relu")
    if x.data.dtype.itemsize > 2:  # not half: nothing to cast under autocast
        return ReLU.apply(x)
    return ReLU.apply(x if _keeps_half(x, "relu") else _amp.cast_float32(x))


def leaky_relu(x, negative_slope=0.01):
    """x for x > 0, negative_slope * x otherwise (the chapter's max(a x, x))."""
    return LeakyReLU.apply(_float(x, "leaky_relu", fused="leaky_relu"),
                           negative_slope=_number(negative_slope, "leaky_relu", "negative_slope"))


def _approx(approximate, fn):
    if approximate not in ("none", "tanh"):
        raise ValueError(f"{fn}: approximate must be 'none' or 'tanh', got {approximate!r}")
    return approximate


def gelu(x, approximate="none"):
    """x Phi(x) with the exact erf form, or the tanh approximation (``approximate="tanh"``)."""
    return GELU.apply(_float(x, "gelu", fused="gelu"), approximate=_approx(approximate, "gelu"))


def bias_gelu(x, bias, approximate="none"):
    """gelu(x + bias), ``bias`` of shape (x.shape[-1],): one fused op for Linear + GELU.

    Under ``dp.autocast`` a half ``x`` (a low-precision Linear's output) stays half on
    a backend that runs bias+GELU on half inputs (``backend.half_fused``), and the bias
    keeps its own dtype: a float32 parameter stays float32 and its gradient is float32
    (summed over the rows in float32); the output and x's gradient are half."""
    x = _float(x, "bias_gelu", fused="bias_gelu")
    half_x = _dtype.is_half(x.data.dtype) and _keeps_half(x, "bias_gelu")
    bias = _float(bias, "bias_gelu", "bias", amp=not half_x)
    if bias.ndim != 1 or x.ndim < 1 or x.shape[-1] != bias.shape[0]:
        raise ValueError(f"bias_gelu: bias of shape {bias.shape} does not match the last "
                         f"axis of x of shape {x.shape}")
    return BiasGELU.apply(x, bias, approximate=_approx(approximate, "bias_gelu"))


def silu(x):
    """x sigma(x) (Swish)."""
    return SiLU.apply(_float(x, "silu", fused="silu"))


def sigmoid(x):
    """1 / (1 + e^-x), stable for inputs of +-1e4."""
    return Sigmoid.apply(_float(x, "sigmoid", fused="sigmoid"))


def tanh(x):
    return Tanh.apply(_float(x, "tanh", fused="tanh"))


def elu(x, alpha=1.0):
    """x for x > 0, alpha (e^x - 1) otherwise."""
    return ELU.apply(_float(x, "elu", fused="elu"), alpha=_number(alpha, "elu", "alpha"))


def _axis(x, axis, fn):
    if not isinstance(axis, numbers.Integral) or not -max(x.ndim, 1) <= axis < max(x.ndim, 1):
        raise ValueError(f"{fn}: axis {axis!r} is out of range for a tensor of shape {x.shape}")
    return int(axis)


def softmax(x, axis=-1):
    """e^x / sum e^x along ``axis``, computed after subtracting the maximum."""
    x = _float(x, "softmax")
    return Softmax.apply(x, axis=_axis(x, axis, "softmax"))


def log_softmax(x, axis=-1):
    """x - logsumexp(x) along ``axis``; finite for logits of +-1e4."""
    x = _float(x, "log_softmax")
    return LogSoftmax.apply(x, axis=_axis(x, axis, "log_softmax"))


# -- layers --------------------------------------------------------------------------------
def linear(x, weight, bias=None):
    """x W^T + b with ``weight`` of shape (out, in), ``bias`` (out,).

    The checks run at every call of every Linear layer, so the common case (float32 or
    float64 Tensors of matching shapes) is tested with as few reads as tell it apart."""
    if not (isinstance(x, Tensor) and x.data.dtype in _F3264):
        x = _float(x, "linear", amp=False)
    if not (isinstance(weight, Tensor) and weight.data.dtype in _F3264):
        weight = _float(weight, "linear", "weight", amp=False)
    ws = weight.data.shape
    if len(ws) != 2 or x.data.shape[-1:] != ws[1:]:
        _linear_shape_error(x.data.shape, ws)
    if bias is not None:
        if not (isinstance(bias, Tensor) and bias.data.dtype in _F3264):
            bias = _float(bias, "linear", "bias", amp=False)
        if bias.data.shape != ws[:1]:
            raise ValueError(f"linear: bias of shape {bias.data.shape} does not match weight "
                             f"of shape {ws}; expected ({ws[0]},)")
    if _amp_state["dtype"] is not None:   # _amp.autocast_dtype(), read without a call
        x, weight, bias = _amp.cast_low(x), _amp.cast_low(weight), _amp.cast_low(bias)
    return Linear.apply(x, weight, bias)


#: float32 and float64: the dtypes a Linear takes as they are (``in`` tests identity first)
_F3264 = (np.dtype(np.float32), np.dtype(np.float64))


def _linear_shape_error(xs, ws):
    if len(ws) != 2:
        raise ValueError(f"linear: weight must be 2-D (out_features, in_features), "
                         f"got shape {ws}")
    raise ValueError(f"linear: input of shape {xs} does not match weight of shape "
                     f"{ws}: the input's last axis must be {ws[1]}")


def dropout(x, p=0.5, training=True):
    """Zero each element with probability p and scale the rest by 1 / (1 - p).

    Identity when ``training`` is False or p == 0. The mask is regenerated in
    backward from a (seed, counter) key, so it costs no memory in the graph. Under
    ``dp.autocast`` a half ``x`` stays half on a backend with a half dropout
    (``backend.half_fused``): the same mask as a float32 ``x`` under the same key, the
    scale applied in float32 and rounded once.
    """
    x = _float(x, "dropout", fused="dropout")
    p = _number(p, "dropout", "p", 0.0, 1.0)
    if not training or p == 0.0:
        return x
    return Dropout.apply(x, p=p)


def _buffer(t, fn, name, c, x):
    if t is None:
        return None
    arr = t.data if isinstance(t, Tensor) else t
    if tuple(arr.shape) != (c,):
        raise ValueError(f"{fn}: {name} of shape {tuple(arr.shape)} does not match {c} channels")
    if isinstance(t, Tensor) and t.backend is not x.backend:
        raise RuntimeError(f"{fn}: {name} is on backend {t.backend.name!r}, the input on "
                           f"{x.backend.name!r}")
    return arr


def batch_norm(x, running_mean=None, running_var=None, weight=None, bias=None, training=False,
               momentum=0.1, eps=1e-5):
    """Batch normalization of (N, C) or (N, C, L) input over N (and L), per channel.

    In training, batch statistics normalize and the running statistics (if given)
    are updated in place: running = (1 - momentum) running + momentum * batch, with
    the unbiased batch variance, as PyTorch does. Otherwise the running statistics
    normalize.
    """
    x = _float(x, "batch_norm")
    if x.ndim not in (2, 3):
        raise ValueError(f"batch_norm: expected (N, C) or (N, C, L) input, got shape {x.shape}")
    c = x.shape[1]
    momentum = _number(momentum, "batch_norm", "momentum", 0.0, 1.0)
    eps = _number(eps, "batch_norm", "eps", 0.0, lo_open=True)
    rm = _buffer(running_mean, "batch_norm", "running_mean", c, x)
    rv = _buffer(running_var, "batch_norm", "running_var", c, x)
    if training:
        if x.shape[0] * (x.shape[2] if x.ndim == 3 else 1) < 2:
            raise ValueError(f"batch_norm: training needs more than one value per channel, "
                             f"got input of shape {x.shape}")
    elif rm is None or rv is None:
        raise ValueError("batch_norm: evaluation mode needs running_mean and running_var")
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and tuple(t.shape) != (c,):
            raise ValueError(f"batch_norm: {name} of shape {tuple(t.shape)} does not match "
                             f"{c} channels")
    if training:
        for t in (running_mean, running_var):
            if isinstance(t, Tensor):
                t._bump_version("batch_norm's running-statistics update")
    return BatchNorm.apply(x, weight, bias, running_mean=rm, running_var=rv,
                           training=bool(training), momentum=momentum, eps=eps)


def layer_norm(x, normalized_shape, weight=None, bias=None, eps=1e-5):
    """Normalize over the trailing axes given by ``normalized_shape``."""
    x = _float(x, "layer_norm")
    if isinstance(normalized_shape, numbers.Integral):
        normalized_shape = (int(normalized_shape),)
    normalized_shape = tuple(normalized_shape)
    k = len(normalized_shape)
    if k == 0 or x.shape[x.ndim - k:] != normalized_shape or x.ndim < k:
        raise ValueError(f"layer_norm: input of shape {x.shape} does not end in "
                         f"normalized_shape {normalized_shape}")
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and tuple(t.shape) != normalized_shape:
            raise ValueError(f"layer_norm: {name} of shape {tuple(t.shape)} does not match "
                             f"normalized_shape {normalized_shape}")
    eps = _number(eps, "layer_norm", "eps", 0.0, lo_open=True)
    return LayerNorm.apply(x, weight, bias, k=k, eps=eps)


# -- losses --------------------------------------------------------------------------------
def _reduction(reduction, fn):
    if reduction not in REDUCTIONS:
        raise ValueError(f"{fn}: reduction must be one of {', '.join(REDUCTIONS)}; "
                         f"got {reduction!r}")
    return reduction


def _class_target(logits, target, fn, fused=None):
    """Validate (N, C) float logits and (N,) integer targets in [0, C); return the target array."""
    dt = logits.data.dtype if isinstance(logits, Tensor) else None
    if dt is None or dt.kind != "f" or dt.itemsize <= 2:  # float32/64 need no cast (_float)
        logits = _float(logits, fn, "logits", fused=fused)
    if logits.data.ndim != 2:
        raise ValueError(f"{fn}: logits must have shape (N, C), got {logits.shape}")
    n, c = logits.data.shape
    be = logits._backend
    if isinstance(target, Tensor):
        if target._backend is not be:
            raise RuntimeError(f"{fn}: target is on backend {target.backend.name!r}, the logits "
                               f"on {be.name!r}; move one with .to()")
        arr = target.data
    else:
        arr = be.asarray(np.asarray(target))
    if arr.dtype.kind not in "iu":
        raise ValueError(f"{fn}: target must hold integer class indices, got dtype {arr.dtype}")
    if arr.shape != (n,):
        raise ValueError(f"{fn}: target of shape {tuple(arr.shape)} does not match logits of "
                         f"shape {logits.shape}; expected ({n},) class indices")
    be.check_class_targets(arr, c, fn)  # a device flag on CUDA: no host sync
    return logits, arr


def _pair(input, target, fn, input_name="input"):
    """Validate a float input and a float target of the same shape, dtype and backend."""
    input = _float(input, fn, input_name)
    if isinstance(target, Tensor):
        if target.backend is not input.backend:
            raise RuntimeError(f"{fn}: target is on backend {target.backend.name!r}, the "
                               f"{input_name} on {input.backend.name!r}; move one with .to()")
        if target.dtype.kind != "f":
            raise ValueError(f"{fn}: target must be floating point, got dtype {target.dtype}")
        if target.dtype != input.dtype:
            raise ValueError(f"{fn}: target dtype {target.dtype} differs from {input_name} "
                             f"dtype {input.dtype}; cast one with .astype()")
    else:
        arr = np.asarray(target)
        if arr.dtype.kind not in "fiub":
            raise ValueError(f"{fn}: target must be numeric, got dtype {arr.dtype}")
        target = tensor(arr.astype(input.dtype), backend=input.backend)
    if target.shape != input.shape:
        raise ValueError(f"{fn}: target of shape {target.shape} does not match {input_name} of "
                         f"shape {input.shape}")
    return input, target


def cross_entropy(logits, target, label_smoothing=0.0, reduction="mean"):
    """Softmax cross-entropy of (N, C) logits against (N,) integer class targets.

    The chapter's L_CE = -sum_c y_c log yhat_c with yhat = softmax(logits) and the
    targets smoothed to (1 - eps) onehot + eps / C. One fused Function: its backward
    is (softmax - smoothed onehot), never a division by a probability.
    """
    logits, t = _class_target(logits, target, "cross_entropy", fused="cross_entropy")
    eps = label_smoothing   # a float in [0, 1] is checked here; anything else by _number
    if type(eps) is not float or not 0.0 <= eps <= 1.0:
        eps = _number(label_smoothing, "cross_entropy", "label_smoothing", 0.0, 1.0)
    if reduction not in REDUCTIONS:
        _reduction(reduction, "cross_entropy")
    return CrossEntropy.apply(logits, t, label_smoothing=eps, reduction=reduction)


def mse_loss(input, target, reduction="mean"):
    """(input - target)^2, the chapter's mean squared error."""
    input, target = _pair(input, target, "mse_loss")
    return MSELoss.apply(input, target, reduction=_reduction(reduction, "mse_loss"))


def l1_loss(input, target, reduction="mean"):
    """|input - target|, the chapter's mean absolute error."""
    input, target = _pair(input, target, "l1_loss")
    return L1Loss.apply(input, target, reduction=_reduction(reduction, "l1_loss"))


def huber_loss(input, target, delta=1.0, reduction="mean"):
    """0.5 d^2 for |d| < delta, delta (|d| - 0.5 delta) beyond (PyTorch's huber_loss)."""
    input, target = _pair(input, target, "huber_loss")
    delta = _number(delta, "huber_loss", "delta", 0.0, lo_open=True)
    return HuberLoss.apply(input, target, delta=delta, reduction=_reduction(reduction, "huber_loss"))


def binary_cross_entropy_with_logits(logits, target, reduction="mean"):
    """-[y log s(x) + (1 - y) log(1 - s(x))] on logits x, stable for any x."""
    logits, target = _pair(logits, target, "binary_cross_entropy_with_logits", "logits")
    return BCEWithLogits.apply(logits, target,
                               reduction=_reduction(reduction, "binary_cross_entropy_with_logits"))


def focal_loss(logits, target, gamma=2.0, alpha=None, reduction="mean"):
    """Multiclass focal loss -alpha_t (1 - p_t)^gamma log p_t over softmax(logits).

    ``alpha``: None (no weighting), a float (the same weight for every class), or a
    sequence of C per-class weights (alpha_t = alpha[target]). gamma = 0 and
    alpha = None give cross-entropy. ``mean`` averages over the N rows.
    """
    logits, t = _class_target(logits, target, "focal_loss")
    gamma = _number(gamma, "focal_loss", "gamma", 0.0)
    c = logits.shape[1]
    a = None
    if alpha is not None:
        if isinstance(alpha, numbers.Real) and not isinstance(alpha, bool):
            a = np.full(c, float(alpha))
        else:
            a = np.asarray(alpha.numpy() if isinstance(alpha, Tensor) else alpha, dtype=float)
            if a.shape != (c,):
                raise ValueError(f"focal_loss: alpha must be None, a float or {c} per-class "
                                 f"weights, got shape {a.shape}")
        if not np.isfinite(a).all():
            raise ValueError("focal_loss: alpha must be finite")
        a = logits.backend.asarray(a.astype(logits.dtype))
    return FocalLoss.apply(logits, t, alpha=a, gamma=gamma,
                           reduction=_reduction(reduction, "focal_loss"))
