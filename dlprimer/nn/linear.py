"""Linear (fully connected) layer and Identity."""
from __future__ import annotations

from .. import _dtype
from ..tensor import empty
from . import functional as F
from . import init
from .module import Module
from .parameter import Parameter


class Identity(Module):
    """Returns its input unchanged (a placeholder layer)."""

    def forward(self, x):
        return x


class Linear(Module):
    """y = x W^T + b with W of shape (out_features, in_features).

    PyTorch's default initialization: W ~ kaiming_uniform(a = sqrt 5), i.e.
    U(-1/sqrt(in), 1/sqrt(in)), and b ~ U(-1/sqrt(in), 1/sqrt(in)).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 dtype="float32", backend=None):
        super().__init__()
        for name, v in (("in_features", in_features), ("out_features", out_features)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ValueError(f"Linear: {name} must be a non-negative int, got {v!r}")
        dt = _dtype.as_dtype(dtype)
        self.in_features, self.out_features = in_features, out_features
        self.weight = Parameter(empty(out_features, in_features, dtype=dt, backend=backend))
        if bias:
            self.bias = Parameter(empty(out_features, dtype=dt, backend=backend))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self):
        init.default_layer_init_(self.weight, self.bias, self.in_features)

    def forward(self, x):
        p = self._parameters  # the registry itself: no __getattr__ per parameter per call
        return F.linear(x, p["weight"], p["bias"])

    def extra_repr(self):
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}")
