"""Weight initialization, in place, from the backend's seeded random stream.

The formulas are PyTorch's (``torch.nn.init``): a layer's fan-in is its input
size (times the receptive field for >2-D weights), gain(relu) = sqrt 2,
gain(leaky_relu, a) = sqrt(2 / (1 + a^2)). Values are written into the tensor's
existing array, so views of it (an optimizer's arena) see the new values.
"""
from __future__ import annotations

import math

from ..autograd import no_grad
from ..tensor import Tensor

__all__ = ["calculate_gain", "kaiming_uniform_", "kaiming_normal_", "xavier_uniform_",
           "xavier_normal_", "uniform_", "normal_", "zeros_", "ones_", "constant_",
           "default_layer_init_"]


def _check(t, fn):
    if not isinstance(t, Tensor):
        raise TypeError(f"{fn}: expected a Tensor, got {type(t).__name__}")
    if t.dtype.kind != "f":
        raise TypeError(f"{fn}: expected a floating-point tensor, got {t.dtype}")


def _fans(t, fn):
    if t.ndim < 2:
        raise ValueError(f"{fn}: fan in and fan out need a tensor of at least 2 dimensions, "
                         f"got shape {t.shape}")
    receptive = 1
    for s in t.shape[2:]:
        receptive *= s
    return t.shape[1] * receptive, t.shape[0] * receptive


def calculate_gain(nonlinearity: str = "leaky_relu", param=None) -> float:
    """The gain that keeps activations' variance through ``nonlinearity``."""
    if nonlinearity in ("linear", "identity", "sigmoid") or nonlinearity.startswith("conv"):
        return 1.0
    if nonlinearity == "tanh":
        return 5.0 / 3
    if nonlinearity == "relu":
        return math.sqrt(2.0)
    if nonlinearity == "leaky_relu":
        a = 0.01 if param is None else float(param)
        return math.sqrt(2.0 / (1 + a * a))
    if nonlinearity == "selu":
        return 0.75
    raise ValueError(f"calculate_gain: unknown nonlinearity {nonlinearity!r}")


def _draw(t, kind):
    """Random values shaped like ``t`` from its backend's stream, in float32 or float64."""
    b = t.backend
    dt = t.dtype if t.dtype.itemsize >= 4 else "float32"
    return getattr(b, kind)(t.shape, b.xp.dtype(dt))


@no_grad()
def uniform_(t, a: float = 0.0, b: float = 1.0):
    """Fill with U(a, b)."""
    _check(t, "uniform_")
    u = _draw(t, "rand")
    t.data[...] = u * (b - a) + a
    t._bump_version("nn.init.uniform_")
    return t


@no_grad()
def normal_(t, mean: float = 0.0, std: float = 1.0):
    """Fill with N(mean, std^2)."""
    _check(t, "normal_")
    t.data[...] = _draw(t, "randn") * std + mean
    t._bump_version("nn.init.normal_")
    return t


def constant_(t, value: float):
    _check(t, "constant_")
    t.data[...] = value
    t._bump_version("nn.init.constant_")
    return t


def zeros_(t):
    """Fill with zeros."""
    return constant_(t, 0.0)


def ones_(t):
    return constant_(t, 1.0)


def _fan(t, mode, fn):
    fan_in, fan_out = _fans(t, fn)
    if mode not in ("fan_in", "fan_out"):
        raise ValueError(f"{fn}: mode must be 'fan_in' or 'fan_out', got {mode!r}")
    return fan_in if mode == "fan_in" else fan_out


def kaiming_uniform_(t, a: float = 0.0, mode: str = "fan_in", nonlinearity: str = "leaky_relu"):
    """U(-bound, bound), bound = gain * sqrt(3 / fan) (He et al. 2015).

    nn.Linear uses a = sqrt 5, which gives bound = 1 / sqrt(fan_in).
    """
    _check(t, "kaiming_uniform_")
    std = calculate_gain(nonlinearity, a) / math.sqrt(max(_fan(t, mode, "kaiming_uniform_"), 1))
    bound = math.sqrt(3.0) * std
    return uniform_(t, -bound, bound)


def kaiming_normal_(t, a: float = 0.0, mode: str = "fan_in", nonlinearity: str = "leaky_relu"):
    """N(0, std^2), std = gain / sqrt(fan) (He et al. 2015)."""
    _check(t, "kaiming_normal_")
    std = calculate_gain(nonlinearity, a) / math.sqrt(max(_fan(t, mode, "kaiming_normal_"), 1))
    return normal_(t, 0.0, std)


def xavier_uniform_(t, gain: float = 1.0):
    """U(-a, a), a = gain * sqrt(6 / (fan_in + fan_out)) (Glorot and Bengio 2010)."""
    _check(t, "xavier_uniform_")
    fan_in, fan_out = _fans(t, "xavier_uniform_")
    bound = gain * math.sqrt(6.0 / max(fan_in + fan_out, 1))
    return uniform_(t, -bound, bound)


def xavier_normal_(t, gain: float = 1.0):
    """N(0, std^2), std = gain * sqrt(2 / (fan_in + fan_out))."""
    _check(t, "xavier_normal_")
    fan_in, fan_out = _fans(t, "xavier_normal_")
    return normal_(t, 0.0, gain * math.sqrt(2.0 / max(fan_in + fan_out, 1)))


def default_layer_init_(weight, bias, fan_in: int):
    """PyTorch's default initialisation of Linear and Conv layers: Kaiming-uniform weights
    with a = sqrt(5) (so U(-1/sqrt(fan_in), 1/sqrt(fan_in))) and the bias uniform in the
    same bound (``bias`` may be None; a layer with no inputs gets a zero bias)."""
    kaiming_uniform_(weight, a=math.sqrt(5))
    if bias is not None:
        bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0.0
        uniform_(bias, -bound, bound)
