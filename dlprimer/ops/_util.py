"""Helpers shared by the op families."""
from __future__ import annotations

import numbers

from .. import _dtype
from ..backend import matmul_for
from ..tensor import Tensor, tensor


def unbroadcast(g, shape):
    """Sum ``g`` down to ``shape``: the gradient of a broadcast is a reduction."""
    if g.shape == shape:
        return g
    lead = g.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(
        i + lead for i, s in enumerate(shape) if s == 1 and g.shape[i + lead] != 1)
    if axes:
        g = g.sum(axis=axes, keepdims=True)
    if lead:
        g = g.reshape(g.shape[lead:])
    return g.reshape(shape)


def as_operand(x, like: Tensor):
    """Scalars pass through (they take ``like``'s dtype); array-likes become constants."""
    if isinstance(x, (Tensor, float, int)) or isinstance(x, numbers.Number):
        return x
    return tensor(x, backend=like.backend)


def norm_axis(axis, ndim):
    """``axis`` (None, int or tuple) as a sorted tuple of non-negative ints."""
    if axis is None:
        return tuple(range(ndim))
    if isinstance(axis, numbers.Integral):
        axis = (axis,)
    out = []
    for a in axis:
        a = int(a)
        if not -ndim <= a < max(ndim, 1):
            raise ValueError(f"axis {a} is out of range for a tensor of {ndim} dimensions")
        out.append(a % ndim if ndim else 0)
    if len(set(out)) != len(out):
        raise ValueError(f"repeated axis in {axis}")
    return tuple(sorted(out))


def prod(shape):
    n = 1
    for s in shape:
        n *= s
    return n


def mm(xp, a, b, out=None):
    """``a @ b`` through the backend's matmul (``backend.matmul_for``: on the CPU, MKL's
    GEMM for large 2-D float32/float64 products when ``DLPRIMER_BLAS`` selects it).
    Half-precision operands (float16, bfloat16) are multiplied in float32 and the float32
    product is returned, as tensor cores accumulate in float32 (and NumPy has no fast
    half-precision matmul). The caller casts the result down."""
    matmul = matmul_for(xp)
    if (a.itemsize == 2 or b.itemsize == 2) and (
            _dtype.is_half(a.dtype) or _dtype.is_half(b.dtype)):
        return matmul(a.astype(_dtype.float32), b.astype(_dtype.float32))
    return matmul(a, b) if out is None else matmul(a, b, out=out)
