"""Reductions: sum, mean, max, min over None, an int or a tuple of axes."""
from __future__ import annotations

from ..autograd import Function
from ._util import norm_axis, prod


def _keep_shape(shape, axes):
    return tuple(1 if i in axes else s for i, s in enumerate(shape))


class Sum(Function):
    def forward(self, x, axis=None, keepdims=False):
        self.xshape = x.shape
        self.axes = norm_axis(axis, x.ndim)
        return x.sum(axis=self.axes, keepdims=keepdims)

    def backward(self, gy):
        return self.backend.broadcast_to(gy.reshape(_keep_shape(self.xshape, self.axes)),
                                         self.xshape)

    def flops(self):
        return prod(self.in_shapes[0]), prod(self.in_shapes[0])


class Mean(Function):
    def forward(self, x, axis=None, keepdims=False):
        self.xshape = x.shape
        self.axes = norm_axis(axis, x.ndim)
        self.n = prod(x.shape[a] for a in self.axes)
        if x.dtype.kind != "f":
            x = x.astype("float32")
        return x.mean(axis=self.axes, keepdims=keepdims)

    def backward(self, gy):
        g = gy.reshape(_keep_shape(self.xshape, self.axes)) / (self.n or 1)
        return self.backend.broadcast_to(g, self.xshape)

    def flops(self):
        return prod(self.in_shapes[0]), prod(self.in_shapes[0])


class _Extreme(Function):
    """max/min: the gradient is shared evenly among the tied extreme elements."""
    reduce_name = "max"

    def forward(self, x, axis=None, keepdims=False):
        self.xshape = x.shape
        self.axes = norm_axis(axis, x.ndim)
        empty = [a for a in self.axes if x.shape[a] == 0]
        if empty:
            raise ValueError(f"{self.reduce_name}() over axis {empty[0]} of size 0 (tensor of "
                             f"shape {x.shape}): there is no element to take the {self.reduce_name} of")
        y = getattr(x, self.reduce_name)(axis=self.axes, keepdims=True)
        self.save(x, y)
        return y if keepdims else y.reshape(tuple(s for i, s in enumerate(x.shape) if i not in self.axes))

    def backward(self, gy):
        """Evenly shared among the elements equal to the result; where the result is NaN
        (NaN propagates through max/min) only the NaN elements share it, as in PyTorch."""
        x, y = self.saved
        mask = (x == y)
        if x.dtype.kind == "f":
            xp = self.backend.xp
            mask |= xp.isnan(x) & xp.isnan(y)
        count = mask.sum(axis=self.axes, keepdims=True)
        g = gy.reshape(y.shape) / count
        return mask * g

    def flops(self):
        return prod(self.in_shapes[0]), 3 * prod(self.in_shapes[0])


class Max(_Extreme):
    reduce_name = "max"


class Min(_Extreme):
    reduce_name = "min"


def sum(x, axis=None, keepdims=False):
    return Sum.apply(x, axis=axis, keepdims=keepdims)


def mean(x, axis=None, keepdims=False):
    return Mean.apply(x, axis=axis, keepdims=keepdims)


def max(x, axis=None, keepdims=False):
    return Max.apply(x, axis=axis, keepdims=keepdims)


def min(x, axis=None, keepdims=False):
    return Min.apply(x, axis=axis, keepdims=keepdims)


def install(T):
    T.sum = sum
    T.mean = mean
    T.max = max
    T.min = min
