"""Differentiable ops, one module per family; importing this installs the
Tensor operators and methods."""
from ..tensor import Tensor
from . import arith, elementwise, reduce, shape

for _m in (arith, elementwise, reduce, shape):
    _m.install(Tensor)

from .arith import add, div, matmul, mul, neg, pow, sub  # noqa: E402
from .elementwise import abs, exp, log, relu, sigmoid, sqrt, tanh  # noqa: E402
from .reduce import max, mean, min, sum  # noqa: E402
from .shape import (broadcast_to, clip, concat, maximum, minimum, reshape, stack,  # noqa: E402
                    transpose, where)
