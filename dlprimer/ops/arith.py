"""Arithmetic: + - * / **, negation, casts and matmul, with broadcasting.

Broadcasting in forward is a reduction in backward: each gradient is summed
back to its input's shape (:func:`unbroadcast`).
"""
from __future__ import annotations

import math

import numpy as np

from .. import _dtype
from .. import amp as _amp
from ..autograd import Function
from ..tensor import Tensor
from ._util import as_operand, mm, prod, unbroadcast


def _shape_of(a):
    return getattr(a, "shape", ())


class Add(Function):
    def forward(self, a, b):
        self.sa, self.sb = _shape_of(a), _shape_of(b)
        return a + b

    def backward(self, gy):
        na, nb = self.needs_input_grad
        return (unbroadcast(gy, self.sa) if na else None,
                unbroadcast(gy, self.sb) if nb else None)


class Sub(Function):
    def forward(self, a, b):
        self.sa, self.sb = _shape_of(a), _shape_of(b)
        return a - b

    def backward(self, gy):
        na, nb = self.needs_input_grad
        return (unbroadcast(gy, self.sa) if na else None,
                unbroadcast(-gy, self.sb) if nb else None)


class Mul(Function):
    def forward(self, a, b):
        na, nb = self.needs_input_grad or (False, False)
        self.save(b if na else None, a if nb else None)
        self.sa, self.sb = _shape_of(a), _shape_of(b)
        return a * b

    def backward(self, gy):
        b, a = self.saved
        na, nb = self.needs_input_grad
        return (unbroadcast(gy * b, self.sa) if na else None,
                unbroadcast(gy * a, self.sb) if nb else None)


class Div(Function):
    fwd_flops_per_elem = 1
    bwd_flops_per_elem = 2

    def forward(self, a, b):
        self.sa, self.sb = _shape_of(a), _shape_of(b)
        y = a / b
        nb = self.needs_input_grad[1] if self._record else False
        self.save(b, y if nb else None)
        return y

    def backward(self, gy):
        b, y = self.saved
        na, nb = self.needs_input_grad
        ga = gy / b
        return (unbroadcast(ga, self.sa) if na else None,
                unbroadcast(-ga * y, self.sb) if nb else None)


class Neg(Function):
    def forward(self, a):
        return -a

    def backward(self, gy):
        return -gy


class PowScalar(Function):
    """x ** p for a constant exponent p: d/dx = p x^(p-1)."""
    bwd_flops_per_elem = 3

    def forward(self, x, p):
        self.p = p
        self.save(x)
        return x ** p

    def backward(self, gy):
        (x,) = self.saved
        p = self.p
        if p == 0:  # x**0 is constant (PyTorch: gradient 0, also at x == 0)
            return self.backend.xp.zeros_like(gy * x), None
        if p == 2:
            return gy * (2 * x), None
        return gy * (p * x ** (p - 1)), None


class RPowScalar(Function):
    """c ** x for a constant base c: d/dx = c^x ln c."""
    bwd_flops_per_elem = 2

    def forward(self, c, x):
        self.logc = math.log(c) if c > 0 else float("nan")
        y = c ** x
        self.save(y)
        return y

    def backward(self, gy):
        (y,) = self.saved
        return None, gy * y * self.logc


class Pow(Function):
    """a ** b for two tensors: da = b a^(b-1), db = a^b ln a. As in PyTorch, da is 0 where
    b = 0, db is 0 at a = 0 with b >= 0 (a^b is 0 or 1 there), and ln a is NaN for a < 0."""
    bwd_flops_per_elem = 4

    def forward(self, a, b):
        self.sa, self.sb = _shape_of(a), _shape_of(b)
        y = a ** b
        self.save(a, b, y)
        return y

    def backward(self, gy):
        a, b, y = self.saved
        na, nb = self.needs_input_grad
        xp = self.backend.xp
        dt = y.dtype.type
        ga = None
        if na:  # b = 0: a^b is constant 1, gradient 0 (also at a = 0, where b a^(b-1) is 0 inf)
            ga = unbroadcast(xp.where(b == 0, dt(0), gy * b * a ** (b - 1)), self.sa)
        gb = None
        if nb:
            pos = a > 0
            at_zero = xp.where(b >= 0, dt(0), dt(-math.inf))  # y ln a: 0 * -inf -> 0
            other = xp.where(a == 0, at_zero, dt(math.nan))
            log_a = xp.where(pos, xp.log(xp.where(pos, a, dt(1))), other)
            gb = unbroadcast(gy * y * log_a, self.sb)
        return ga, gb


class Cast(Function):
    """Change dtype; the gradient is cast back to the input's dtype."""
    fwd_flops_per_elem = 0
    bwd_flops_per_elem = 0

    def forward(self, x, dtype):
        self.src = x.dtype
        return x.astype(dtype)

    def backward(self, gy):
        return gy.astype(self.src), None


def _check_matmul(sa, sb):
    if len(sa) == 0 or len(sb) == 0:
        raise ValueError(f"matmul: both operands need at least one dimension, got shapes {sa} and {sb}")
    k_a = sa[-1]
    k_b = sb[0] if len(sb) == 1 else sb[-2]
    if k_a != k_b:
        raise ValueError(
            f"matmul: shapes {sa} and {sb} do not match: the last dimension of the first "
            f"({k_a}) must equal the {'only' if len(sb) == 1 else 'second-to-last'} dimension "
            f"of the second ({k_b})")
    ba, bb = sa[:-2], sb[:-2]
    for x, y in zip(reversed(ba), reversed(bb)):
        if x != y and x != 1 and y != 1:
            raise ValueError(f"matmul: batch dimensions of shapes {sa} and {sb} do not broadcast")


class MatMul(Function):
    """a @ b with NumPy semantics (1-D, 2-D, batched with broadcast batch dims).

    Forward costs 2*M*K*N FLOPs per batch element; backward costs the same again
    for each input that needs a gradient (dA = dY B^T, dB = A^T dY), so a layer
    whose input needs no gradient (the first one) backprops at 1x, others at 2x.
    """

    def forward(self, a, b):
        sa, sb = a.shape, b.shape
        _check_matmul(sa, sb)
        na, nb = self.needs_input_grad or (False, False)
        self.save(b if na else None, a if nb else None)
        self.sa, self.sb = sa, sb
        y = mm(self.backend.xp, a, b)   # half inputs: float32 accumulation, rounded below
        return y if y.dtype == a.dtype else y.astype(a.dtype)

    def backward(self, gy):
        b, a = self.saved
        na, nb = self.needs_input_grad
        xp = self.backend.xp
        sa, sb = self.sa, self.sb
        if len(sa) == 2 and len(sb) == 2:  # the common case, without the batched bookkeeping
            if gy.itemsize == 2:   # half gradients stay half, as NumPy multiplies them
                return (xp.matmul(gy, b.T) if na else None), (xp.matmul(a.T, gy) if nb else None)
            return (mm(xp, gy, b.T) if na else None), (mm(xp, a.T, gy) if nb else None)
        a1, b1 = len(sa) == 1, len(sb) == 1
        if a1 and b1:  # dot product: gy is a scalar
            return (gy * b if na else None), (gy * a if nb else None)
        if a1:
            gy = xp.expand_dims(gy, -2)
        if b1:
            gy = xp.expand_dims(gy, -1)
        ga = gb = None
        if na:
            b2 = b[:, None] if b1 else b
            ga = mm(xp, gy, xp.swapaxes(b2, -1, -2))
            ga = unbroadcast(ga, (1,) + sa if a1 else sa).reshape(sa)
        if nb:
            a2 = a[None, :] if a1 else a
            gb = mm(xp, xp.swapaxes(a2, -1, -2), gy)
            gb = unbroadcast(gb, sb + (1,) if b1 else sb).reshape(sb)
        return ga, gb

    def flops(self):
        sa, sb = self.in_shapes
        m = 1 if len(sa) == 1 else sa[-2]
        k = sa[-1]
        n = 1 if len(sb) == 1 else sb[-1]
        batch = prod(self.out_shape) // max(m * n, 1) if self.out_shape else 1
        f = 2 * batch * m * k * n
        return f, f * sum(1 for r in self.needs_input_grad if r)


# -- type promotion ---------------------------------------------------------------------
def promote(a, b, true_div: bool = False):
    """``a`` and ``b`` (Tensors or Python numbers) cast to the dtype PyTorch gives
    ``a op b`` with float32 as the default float (``_dtype.result_type``): int64 +
    float32 is float32, an int tensor + 2.5 is float32, and ``/`` of integers (true
    division) is float32. NumPy would give float64 in all three. The usual cases
    (equal dtypes; a float tensor and a Python number) return after a few checks."""
    if isinstance(a, Tensor):
        if isinstance(b, Tensor):
            da = a.data.dtype
            if da == b.data.dtype and (not true_div or da.kind == "f"):
                return a, b
        else:
            tn = type(b)
            if tn is float or tn is int:
                k = a.data.dtype.kind
                if k == "f" or (tn is int and not true_div and k in "iu"):
                    return a, b
    elif isinstance(b, Tensor):
        tn = type(a)
        if tn is float or tn is int:
            k = b.data.dtype.kind
            if k == "f" or (tn is int and not true_div and k in "iu"):
                return a, b
    return _promote_cast(a, b, true_div)


def _promote_cast(a, b, true_div):
    if isinstance(a, np.generic):
        a = a.item()  # a NumPy scalar counts as a Python number, as in PyTorch
    if isinstance(b, np.generic):
        b = b.item()
    rt = _dtype.result_type(a, b)
    if true_div and rt.kind != "f":
        rt = _dtype.DEFAULT_FLOAT
    return (a.astype(rt) if isinstance(a, Tensor) and a.dtype != rt else a,
            b.astype(rt) if isinstance(b, Tensor) and b.dtype != rt else b)


# -- tensor-facing functions ----------------------------------------------------------
def add(a, b):
    return Add.apply(*promote(a, b))


def sub(a, b):
    return Sub.apply(*promote(a, b))


def mul(a, b):
    return Mul.apply(*promote(a, b))


def div(a, b):
    return Div.apply(*promote(a, b, true_div=True))


def neg(a):
    return Neg.apply(a)


def pow(a, b):
    a, b = promote(a, b)
    if isinstance(b, Tensor):
        if isinstance(a, Tensor):
            return Pow.apply(a, b)
        return RPowScalar.apply(a if b.dtype.kind in "iu" else float(a), b)
    return PowScalar.apply(a, b)


def matmul(a, b):
    if not isinstance(a, Tensor) or not isinstance(b, Tensor):
        like = a if isinstance(a, Tensor) else b
        a, b = as_operand(a, like), as_operand(b, like)
        from ..tensor import tensor
        a = a if isinstance(a, Tensor) else tensor(a, backend=like.backend)
        b = b if isinstance(b, Tensor) else tensor(b, backend=like.backend)
    if _amp._state["dtype"] is not None:   # under dp.autocast: the product in half precision
        a, b = _amp.cast_low(a), _amp.cast_low(b)
    return MatMul.apply(*promote(a, b))


def _binary(cls, swap=False):
    true_div = cls is Div

    def op(self, other):
        other = as_operand(other, self)
        a, b = (other, self) if swap else (self, other)
        return cls.apply(*promote(a, b, true_div))
    return op


def install(T):
    T.__add__ = _binary(Add)
    T.__radd__ = _binary(Add, swap=True)
    T.__sub__ = _binary(Sub)
    T.__rsub__ = _binary(Sub, swap=True)
    T.__mul__ = _binary(Mul)
    T.__rmul__ = _binary(Mul, swap=True)
    T.__truediv__ = _binary(Div)
    T.__rtruediv__ = _binary(Div, swap=True)
    T.__neg__ = neg
    T.__pos__ = lambda self: self
    T.__pow__ = lambda self, p: pow(self, as_operand(p, self))
    T.__rpow__ = lambda self, c: pow(as_operand(c, self), self)
    T.__matmul__ = lambda self, o: matmul(self, o)
    T.__rmatmul__ = lambda self, o: matmul(o, self)
    T.matmul = T.__matmul__
