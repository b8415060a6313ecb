"""Unary elementwise math (exp, log, sqrt, abs) and the three activations the
core needs (tanh, sigmoid, relu), which run as fused backend ops."""
from __future__ import annotations

from .. import _dtype
from ..autograd import Function
from ..tensor import Tensor


class Exp(Function):
    def forward(self, x):
        y = self.backend.xp.exp(x)
        self.save(y)
        return y

    def backward(self, gy):
        (y,) = self.saved
        return gy * y


class Log(Function):
    def forward(self, x):
        self.save(x)
        return self.backend.xp.log(x)

    def backward(self, gy):
        (x,) = self.saved
        return gy / x


class Sqrt(Function):
    bwd_flops_per_elem = 2

    def forward(self, x):
        y = self.backend.xp.sqrt(x)
        self.save(y)
        return y

    def backward(self, gy):
        (y,) = self.saved
        return gy / (2 * y)


class Abs(Function):
    def forward(self, x):
        self.save(x)
        return self.backend.xp.abs(x)

    def backward(self, gy):
        (x,) = self.saved
        return gy * self.backend.xp.sign(x)


class Tanh(Function):
    """tanh; backward from the output: gy * (1 - y^2)."""
    fwd_flops_per_elem = 4
    bwd_flops_per_elem = 3

    def forward(self, x):
        y = self.backend.tanh_forward(x)
        self.save(y)
        return y

    def backward(self, gy):
        return self.backend.tanh_backward(self.saved[0], gy)


class Sigmoid(Function):
    """sigma(x) = 1 / (1 + e^-x), stable for |x| of 1e4; backward gy * y (1 - y)."""
    fwd_flops_per_elem = 4
    bwd_flops_per_elem = 3

    def forward(self, x):
        y = self.backend.sigmoid_forward(x)
        self.save(y)
        return y

    def backward(self, gy):
        return self.backend.sigmoid_backward(self.saved[0], gy)


class ReLU(Function):
    """max(x, 0); keeps only its output (y > 0 exactly where x > 0); gradient 0 at 0."""

    def forward(self, x):
        y = self.backend.relu_forward(x)
        self.save(y)
        return y

    def backward(self, gy):
        return self.backend.relu_backward(self.saved[0], gy)


def _unary(cls, floating=False):
    """The op as a function; ``floating`` ops take an integer or bool tensor as float32,
    as PyTorch does (NumPy would give float64)."""
    if floating:
        def op(x):
            if isinstance(x, Tensor) and x.data.dtype.kind not in "fc":
                x = x.astype(_dtype.DEFAULT_FLOAT)
            return cls.apply(x)
    else:
        def op(x):
            return cls.apply(x)
    op.__name__ = cls.__name__.lower()
    op.__doc__ = cls.__doc__
    return op


exp = _unary(Exp, floating=True)
log = _unary(Log, floating=True)
sqrt = _unary(Sqrt, floating=True)
abs = _unary(Abs)
tanh = _unary(Tanh, floating=True)
sigmoid = _unary(Sigmoid, floating=True)
relu = _unary(ReLU)


def _compare(name):
    def op(self, other):
        o = other.data if isinstance(other, Tensor) else other
        if isinstance(other, Tensor) and other.backend is not self.backend:
            raise RuntimeError(f"comparison of tensors on two backends, {self.backend.name!r} and "
                               f"{other.backend.name!r}")
        return Tensor(getattr(self.data, name)(o), False, self.backend)
    return op


def install(T):
    for f in (exp, log, sqrt, abs, tanh, sigmoid, relu):
        setattr(T, f.__name__, f)
    T.__abs__ = abs
    for name in ("__lt__", "__le__", "__gt__", "__ge__", "__eq__", "__ne__"):
        setattr(T, name, _compare(name))
    T.any = lambda self, axis=None: Tensor(self.data.any(axis=axis), False, self.backend)
    T.all = lambda self, axis=None: Tensor(self.data.all(axis=axis), False, self.backend)
    T.argmax = lambda self, axis=None: Tensor(self.data.argmax(axis=axis), False, self.backend)
    T.argmin = lambda self, axis=None: Tensor(self.data.argmin(axis=axis), False, self.backend)
