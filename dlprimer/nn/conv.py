"""Convolution, pooling and flattening layers over NCHW images, and a small CNN."""
from __future__ import annotations


from .. import _dtype
from ..ops.conv import _pair, avg_pool2d, conv2d, max_pool2d
from ..tensor import empty
from . import init
from .activation import ReLU
from .container import Sequential
from .linear import Linear
from .module import Module
from .parameter import Parameter


class Conv2d(Module):
    """2-D convolution: ``weight`` (out_channels, in_channels, KH, KW), ``bias`` (out_channels,),
    PyTorch's initialisation (kaiming_uniform with a = sqrt 5: U(+-1/sqrt(fan_in)),
    fan_in = in_channels KH KW). Input (N, C, H, W), output (N, O, OH, OW) with
    OH = (H + 2 padding - KH) // stride + 1."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 bias: bool = True, dtype="float32", backend=None):
        super().__init__()
        for name, v in (("in_channels", in_channels), ("out_channels", out_channels)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"Conv2d: {name} must be a positive int, got {v!r}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size = _pair(kernel_size, "Conv2d", "kernel_size", 1)
        self.stride = _pair(stride, "Conv2d", "stride", 1)
        self.padding = _pair(padding, "Conv2d", "padding", 0)
        dt = _dtype.as_dtype(dtype)
        self.weight = Parameter(empty(out_channels, in_channels, *self.kernel_size, dtype=dt,
                                      backend=backend))
        if bias:
            self.bias = Parameter(empty(out_channels, dtype=dt, backend=backend))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self):
        init.default_layer_init_(self.weight, self.bias,
                                 self.in_channels * self.kernel_size[0] * self.kernel_size[1])

    def forward(self, x):
        return conv2d(x, self.weight, self.bias, self.stride, self.padding)

    def extra_repr(self):
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, bias={self.bias is not None}")


class _Pool2d(Module):
    _fn = None

    def __init__(self, kernel_size, stride=None, padding=0):
        super().__init__()
        name = type(self).__name__
        self.kernel_size = _pair(kernel_size, name, "kernel_size", 1)
        self.stride = self.kernel_size if stride is None else _pair(stride, name, "stride", 1)
        self.padding = _pair(padding, name, "padding", 0)

    def forward(self, x):
        return type(self)._fn(x, self.kernel_size, self.stride, self.padding)

    def extra_repr(self):
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class MaxPool2d(_Pool2d):
    """Max over KH x KW windows; ``stride`` defaults to ``kernel_size``."""
    _fn = staticmethod(max_pool2d)


class AvgPool2d(_Pool2d):
    """Mean over KH x KW windows (zero padding counted); ``stride`` defaults to ``kernel_size``."""
    _fn = staticmethod(avg_pool2d)


class Flatten(Module):
    """Reshape axes ``start_dim`` .. ``end_dim`` into one (default: all but the batch axis)."""

    def __init__(self, start_dim: int = 1, end_dim: int = -1):
        super().__init__()
        self.start_dim, self.end_dim = int(start_dim), int(end_dim)

    def forward(self, x):
        nd = x.ndim
        s, e = self.start_dim % max(nd, 1), self.end_dim % max(nd, 1)
        if not (-nd <= self.start_dim < nd and -nd <= self.end_dim < nd) or s > e:
            raise ValueError(f"Flatten: start_dim {self.start_dim} and end_dim {self.end_dim} do not "
                             f"fit an input of shape {x.shape}")
        n = 1
        for d in x.shape[s:e + 1]:
            n *= d
        return x.reshape(*x.shape[:s], n, *x.shape[e + 1:])

    def extra_repr(self):
        return f"start_dim={self.start_dim}, end_dim={self.end_dim}"


class SmallCNN(Sequential):
    """A small CNN for (N, 1, 8, 8) digit images: two 3x3 convolutions (same padding)
    with ReLU, a 2x2 max-pool, and a two-layer classifier:
    conv(1->c1) relu conv(c1->c2) relu maxpool(2) flatten linear(c2*4*4 -> hidden) relu
    linear(hidden -> classes)."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, channels=(16, 32),
                 hidden: int = 64, image_size: int = 8):
        c1, c2 = channels
        side = image_size // 2
        super().__init__(Conv2d(in_channels, c1, 3, padding=1), ReLU(),
                         Conv2d(c1, c2, 3, padding=1), ReLU(), MaxPool2d(2), Flatten(),
                         Linear(c2 * side * side, hidden), ReLU(), Linear(hidden, num_classes))
