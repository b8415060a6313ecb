"""Shape and selection ops: reshape, transpose, indexing, concat, stack, where,
maximum/minimum, clip, broadcast, and the cross-backend move."""
from __future__ import annotations

import numbers

import numpy as np

from ..autograd import Function
from ..tensor import Tensor
from ._util import as_operand, norm_axis, unbroadcast


class Reshape(Function):
    fwd_flops_per_elem = 0
    bwd_flops_per_elem = 0

    def forward(self, x, shape):
        self.xshape = x.shape
        try:
            return x.reshape(shape)
        except ValueError:
            raise ValueError(f"reshape: cannot reshape a tensor of shape {x.shape} "
                             f"({x.size} elements) into {tuple(shape)}") from None

    def backward(self, gy):
        return gy.reshape(self.xshape), None


class Transpose(Function):
    fwd_flops_per_elem = 0
    bwd_flops_per_elem = 0

    def forward(self, x, axes):
        if axes is None:
            axes = tuple(reversed(range(x.ndim)))
        if sorted(a % max(x.ndim, 1) for a in axes) != list(range(x.ndim)):
            raise ValueError(f"transpose: axes {tuple(axes)} are not a permutation of a "
                             f"{x.ndim}-d tensor's axes")
        self.axes = tuple(a % x.ndim for a in axes)
        return x.transpose(self.axes)

    def backward(self, gy):
        inv = [0] * len(self.axes)
        for i, a in enumerate(self.axes):
            inv[a] = i
        return gy.transpose(inv), None


class BroadcastTo(Function):
    fwd_flops_per_elem = 0

    def forward(self, x, shape):
        self.xshape = x.shape
        return self.backend.xp.broadcast_to(x, shape)

    def backward(self, gy):
        return unbroadcast(gy, self.xshape), None


def _is_basic(idx) -> bool:
    items = idx if isinstance(idx, tuple) else (idx,)
    return all(isinstance(i, (slice, numbers.Integral)) or i is None or i is Ellipsis for i in items)


def _index_arrays(idx, backend):
    """Tensors inside an index become arrays of ``backend``; lists become int arrays."""
    def conv(i):
        if isinstance(i, Tensor):
            return i.data
        if isinstance(i, list):
            a = np.asarray(i)
            if a.size == 0 and a.dtype.kind == "f":
                a = a.astype(np.int64)  # [] is an empty integer index, as in NumPy's x[[]]
            return backend.asarray(a)
        if hasattr(i, "__array__") and not isinstance(i, (slice, numbers.Number)):
            return backend.asarray(i)
        return i
    if isinstance(idx, tuple):
        return tuple(conv(i) for i in idx)
    return conv(idx)


class GetItem(Function):
    """x[idx]. Backward scatters into zeros; repeated integer indices accumulate."""
    fwd_flops_per_elem = 0

    def forward(self, x, idx):
        self.xshape, self.dtype, self.idx = x.shape, x.dtype, idx
        try:
            return x[idx]
        except IndexError as e:
            raise IndexError(f"index into a tensor of shape {x.shape}: {e}") from None

    def backward(self, gy):
        xp = self.backend.xp
        gx = xp.zeros(self.xshape, dtype=gy.dtype)
        if _is_basic(self.idx):
            gx[self.idx] = gy
        else:
            self.backend.scatter_add(gx, self.idx, gy)
        return gx, None


class Concat(Function):
    fwd_flops_per_elem = 0
    bwd_flops_per_elem = 0

    def forward(self, *xs, axis=0):
        nd = xs[0].ndim
        self.axis = norm_axis(axis, nd)[0]
        self.sizes = [x.shape[self.axis] for x in xs]
        try:
            return self.backend.xp.concatenate(xs, axis=self.axis)
        except ValueError:
            raise ValueError("concat: shapes " + ", ".join(str(x.shape) for x in xs) +
                             f" do not match outside axis {axis}") from None

    def backward(self, gy):
        out, start = [], 0
        for n, need in zip(self.sizes, self.needs_input_grad):
            sl = [slice(None)] * gy.ndim
            sl[self.axis] = slice(start, start + n)
            out.append(gy[tuple(sl)] if need else None)
            start += n
        return tuple(out)


class Stack(Function):
    fwd_flops_per_elem = 0
    bwd_flops_per_elem = 0

    def forward(self, *xs, axis=0):
        self.axis = norm_axis(axis, xs[0].ndim + 1)[0]
        try:
            return self.backend.xp.stack(xs, axis=self.axis)
        except ValueError:
            raise ValueError("stack: all tensors need the same shape, got " +
                             ", ".join(str(x.shape) for x in xs)) from None

    def backward(self, gy):
        xp = self.backend.xp
        return tuple(xp.take(gy, i, axis=self.axis) if need else None
                     for i, need in enumerate(self.needs_input_grad))


class Where(Function):
    def forward(self, cond, a, b):
        self.cond = cond
        self.sa, self.sb = getattr(a, "shape", ()), getattr(b, "shape", ())
        return self.backend.xp.where(cond, a, b)

    def backward(self, gy):
        xp = self.backend.xp
        _, na, nb = self.needs_input_grad
        zero = xp.zeros((), dtype=gy.dtype)
        return (None,
                unbroadcast(xp.where(self.cond, gy, zero), self.sa) if na else None,
                unbroadcast(xp.where(self.cond, zero, gy), self.sb) if nb else None)


class _Pairwise(Function):
    """maximum/minimum: ties split the gradient half and half."""
    fwd_flops_per_elem = 1
    bwd_flops_per_elem = 3
    pick = "maximum"

    def forward(self, a, b):
        self.sa, self.sb = getattr(a, "shape", ()), getattr(b, "shape", ())
        self.save(a, b)
        return getattr(self.backend.xp, self.pick)(a, b)

    def backward(self, gy):
        a, b = self.saved
        na, nb = self.needs_input_grad
        win = (a > b) if self.pick == "maximum" else (a < b)
        share = win + 0.5 * (a == b)
        share = share.astype(gy.dtype)
        return (unbroadcast(gy * share, self.sa) if na else None,
                unbroadcast(gy * (1 - share), self.sb) if nb else None)


class Maximum(_Pairwise):
    pick = "maximum"


class Minimum(_Pairwise):
    pick = "minimum"


class Clip(Function):
    def forward(self, x, lo, hi):
        if lo is None and hi is None:
            raise ValueError("clip: give at least one of min and max")
        xp = self.backend.xp
        inside = xp.ones(x.shape, dtype=bool)
        if lo is not None:
            inside &= x >= lo
        if hi is not None:
            inside &= x <= hi
        self.save(inside)
        return xp.clip(x, lo, hi)

    def backward(self, gy):
        (inside,) = self.saved
        return gy * inside, None, None


class ToBackend(Function):
    """Move between backends; the gradient moves back."""
    fwd_flops_per_elem = 0
    bwd_flops_per_elem = 0

    def forward(self, x, dst):
        self.src = self.backend
        self.backend = dst
        return dst.asarray(self.src.to_numpy(x))

    def backward(self, gy):
        return self.src.asarray(self.backend.to_numpy(gy)), None


# -- tensor-facing functions -----------------------------------------------------------
def reshape(x, *shape):
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        shape = tuple(shape[0])
    return Reshape.apply(x, tuple(int(s) for s in shape))


def transpose(x, *axes):
    if len(axes) == 1 and isinstance(axes[0], (tuple, list)):
        axes = tuple(axes[0])
    return Transpose.apply(x, tuple(axes) if axes else None)


def broadcast_to(x, shape):
    return BroadcastTo.apply(x, tuple(shape))


def getitem(x, idx):
    return GetItem.apply(x, _index_arrays(idx, x.backend))


def _tensors(ts, name):
    ts = list(ts)
    if not ts:
        raise ValueError(f"{name}: needs at least one tensor")
    like = next((t for t in ts if isinstance(t, Tensor)), None)
    if like is None:
        raise TypeError(f"{name}: expects a sequence of tensors")
    from ..tensor import tensor
    return [t if isinstance(t, Tensor) else tensor(t, backend=like.backend) for t in ts]


def concat(ts, axis=0):
    return Concat.apply(*_tensors(ts, "concat"), axis=axis)


def stack(ts, axis=0):
    return Stack.apply(*_tensors(ts, "stack"), axis=axis)


def where(cond, a, b):
    like = next((t for t in (a, b, cond) if isinstance(t, Tensor)), None)
    c = cond.data if isinstance(cond, Tensor) else cond
    if like is not None:
        a, b = as_operand(a, like), as_operand(b, like)
        if not isinstance(cond, Tensor):
            c = like.backend.asarray(c)
    return Where.apply(c, a, b)


def maximum(a, b):
    like = a if isinstance(a, Tensor) else b
    return Maximum.apply(as_operand(a, like), as_operand(b, like))


def minimum(a, b):
    like = a if isinstance(a, Tensor) else b
    return Minimum.apply(as_operand(a, like), as_operand(b, like))


def clip(x, min=None, max=None):
    return Clip.apply(x, min, max)


def install(T):
    T.reshape = reshape
    T.view = reshape
    T.transpose = transpose
    T.T = property(lambda self: transpose(self))
    T.__getitem__ = getitem
    T.clip = clip
    T.broadcast_to = broadcast_to
