"""float64 formulas of each fused activation's forward and backward (with respect to x),
the reference that the CPU half-precision tests and the host-compiled CUDA kernel math
are both held to."""
import math

import numpy as np
import scipy.special as sp

#: the parameter each parametrised activation is tested with (leaky_relu's slope, elu's alpha)
PARAM = {"leaky_relu": 0.01, "elu": 1.0}
#: the activations whose backward takes their output y, not their input x
FROM_OUTPUT = ("relu", "sigmoid", "tanh")


def reference(name, x, gy, a=None):
    """(forward, backward) in float64; ``a`` is leaky_relu's slope or elu's alpha; the exact
    GELU answers to "gelu" and "gelu_erf"."""
    x = x.astype(np.float64)
    gy = gy.astype(np.float64)
    with np.errstate(all="ignore"):
        s = sp.expit(x)
        if name == "relu":
            return np.maximum(x, 0), gy * (x > 0)
        if name == "leaky_relu":
            return np.where(x > 0, x, x * a), np.where(x > 0, gy, gy * a)
        if name == "elu":
            xn = np.minimum(x, 0)
            return (np.where(x > 0, x, a * np.expm1(xn)),
                    np.where(x > 0, 1.0, a * np.exp(xn)) * gy)
        if name in ("gelu", "gelu_erf"):
            cdf = 0.5 * (1 + sp.erf(x / math.sqrt(2)))
            return x * cdf, gy * (cdf + x * np.exp(-0.5 * x * x) / math.sqrt(2 * math.pi))
        if name == "gelu_tanh":
            k = math.sqrt(2 / math.pi)
            t = np.tanh(k * (x + 0.044715 * x ** 3))
            return (0.5 * x * (1 + t),
                    gy * (0.5 * (1 + t) + 0.5 * x * (1 - t * t) * k * (1 + 3 * 0.044715 * x * x)))
        if name == "silu":
            return x * s, gy * s * (1 + x * (1 - s))
        if name == "sigmoid":
            return s, gy * s * (1 - s)
        if name == "tanh":
            t = np.tanh(x)
            return t, gy * (1 - t * t)
    raise KeyError(name)
