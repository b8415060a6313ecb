"""The affine map of a Linear layer as one Function: y = x W^T + b."""
from __future__ import annotations

from .. import _dtype
from ..autograd import Function
from ._util import mm, prod


class Linear(Function):
    """y = x W^T + b for x (..., in), W (out, in), b (out,) (PyTorch's layout).

    One node instead of transpose, matmul and add: backward computes
    gx = gy W, gW = gy^T x and gb = sum(gy) over all leading axes, and the node
    keeps x only if W needs a gradient and W only if x does. When W and b are
    parameters of an optimizer, gW and gb are computed straight into their slots
    of the gradient arena (:meth:`Function.leaf_grad_out`): no temporary, no copy.
    Half-precision inputs (under ``dp.autocast``) are multiplied with float32
    accumulation and the output is rounded to the input's dtype.
    Inputs of more than two dims are multiplied as one (M, in) @ (in, out) product:
    NumPy's matmul of an (N, T, in) stack against ``W^T`` runs N small products (about
    half the speed of one gemm at N=256, T=32, in=64), which made a Transformer's
    Linear forward as slow as its two-product backward.
    Forward costs 2 M in out (+ M out for the bias) FLOPs for M rows; backward 2 M in out for
    each of x and W that needs a gradient, plus M out for the bias.
    """

    def forward(self, x, w, b=None):
        nx, nw, _ = self.needs_input_grad or (False, False, False)
        self.save(x if nw else None, w if nx else None)
        xp = self.backend.xp
        if x.ndim == 2:   # the usual (batch, in) input: no reshape either side
            y = mm(xp, x, w.T)
        else:
            self.xshape = x.shape
            y = mm(xp, x.reshape(-1, x.shape[-1]), w.T).reshape(*x.shape[:-1], w.shape[0])
        if b is not None:
            y += b
        dt = x.dtype
        return y if y.dtype is dt or y.dtype == dt else y.astype(dt)

    def backward(self, gy):
        # gy has x's number of dims (y's shape is x's with the last axis replaced)
        x, w = self.saved
        nx, nw, nb = self.needs_input_grad
        xp = self.backend.xp
        flat = gy.ndim == 2
        g2 = gy if flat else gy.reshape(-1, gy.shape[-1])
        gx = gw = gb = None
        if nx:   # one (M, out) @ (out, in) gemm, whatever the leading dims
            gx = mm(xp, g2, w)
            if not flat:
                gx = gx.reshape(self.xshape)
        if nw or nb:
            out = g2.shape[1]
            dt = gy.dtype
        if nw:
            x2 = x if flat else x.reshape(-1, x.shape[-1])
            xdt = x2.dtype
            buf = self.leaf_grad_out(1, (out, x2.shape[1]),
                                     dt if xdt is dt or xdt == dt else xp.result_type(gy, x))
            gw = mm(xp, g2.T, x2, out=buf)
        if nb:
            buf = self.leaf_grad_out(2, (out,), dt)
            ones = _ones.get((self.backend, dt))   # _column_sums' float path, without its call
            if ones is not None and len(ones) == len(g2):
                gb = xp.matmul(ones, g2, out=buf)
            else:
                gb = _column_sums(xp, self.backend, g2, buf)
        return gx, gw, gb

    def flops(self):
        sx, sw = self.in_shapes[0], self.in_shapes[1]
        m = prod(sx[:-1])
        out, inn = sw
        has_b = len(self.in_shapes) > 2 and self.in_shapes[2] != ()
        fwd = 2 * m * inn * out + (m * out if has_b else 0)
        if not self._record:
            return fwd, 0
        nx, nw, nb = self.needs_input_grad
        bwd = 2 * m * inn * out * (int(nx) + int(nw)) + (m * out if nb else 0)
        return fwd, bwd


_ones: dict = {}   # (backend, dtype) -> a vector of ones, as long as the most rows seen


def _column_sums(xp, backend, g2, out=None):
    """sum(g2, axis=0) (the bias gradient), into ``out`` when given.

    float32/float64: a product with a vector of ones, one gemv (kept per backend and dtype,
    grown to the most rows seen): 1.6-2.7x faster than NumPy's column reduction from
    (32, 10) to (8192, 1024), and no less accurate (the BLAS accumulates in blocks where
    the reduction adds row after row). Half precision is summed as before: into ``out``,
    or in float32 to a float32 result."""
    dt = g2.dtype
    if dt.itemsize == 2 and _dtype.is_half(dt):
        if out is not None:
            return g2.sum(axis=0, out=out)
        return g2.sum(axis=0, dtype=_dtype.float32)
    m = g2.shape[0]
    ones = _ones.get((backend, dt))
    if ones is None or len(ones) < m:
        ones = _ones[backend, dt] = xp.ones(m, dt)
    return xp.matmul(ones if len(ones) == m else ones[:m], g2, out=out)
