"""Convolution and pooling over NCHW images: conv2d, max_pool2d, avg_pool2d.

A convolution is a matrix product over unfolded windows ("im2col"): the input's
KH x KW shifted, strided slices are stacked into cols of shape (C*KH*KW, N*OH*OW),
and y = W (O, C*KH*KW) @ cols. Backward is two more products, gW = gy cols^T and
gcols = W^T gy, the latter folded back onto the input by adding the same slices
("col2im"). The unfolding is KH*KW slice copies, the same code on every backend.
The cols are laid out (C*KH*KW, N*OH*OW) so that one matrix product covers the
whole batch. The Conv2d node keeps the input (as PyTorch does), not the KH*KW
times larger cols, and unfolds again in backward: memory over a copy's worth of time.
"""
from __future__ import annotations

import numbers

from .. import _dtype
from .. import amp as _amp
from ..autograd import Function
from ..tensor import Tensor
from ._util import mm, prod


def _up(a):
    return a.astype(_dtype.float32) if _dtype.is_half(a.dtype) else a


def _pad(xp, x, ph, pw, value=0.0):
    if not ph and not pw:
        return x
    return xp.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=value)


def _windows(xp, xpad, kh, kw, sh, sw, oh, ow):
    """(N, C, KH, KW, OH, OW): window element (i, j) of every output position (pooling)."""
    n, c = xpad.shape[:2]
    cols = xp.empty((n, c, kh, kw, oh, ow), dtype=xpad.dtype)
    for i in range(kh):
        for j in range(kw):
            cols[:, :, i, j] = xpad[:, :, i:i + sh * oh:sh, j:j + sw * ow:sw]
    return cols


def _unfold(xp, xpad, kh, kw, sh, sw, oh, ow):
    """im2col as a (C KH KW, N OH OW) matrix, so that one matrix product covers the
    whole batch: row (c, i, j) holds window element (i, j) of channel c at every
    output position of every image."""
    n, c = xpad.shape[:2]
    cols = xp.empty((c, kh, kw, n, oh, ow), dtype=xpad.dtype)
    xt = xpad.transpose(1, 0, 2, 3)
    for i in range(kh):
        for j in range(kw):
            cols[:, i, j] = xt[:, :, i:i + sh * oh:sh, j:j + sw * ow:sw]
    return cols.reshape(c * kh * kw, n * oh * ow)


def _fold(xp, gcols, pad_shape, kh, kw, sh, sw, oh, ow):
    """col2im, the adjoint of :func:`_unfold`: add each window element back where it
    came from, giving the (N, C, H + 2 ph, W + 2 pw) gradient."""
    n, c = pad_shape[:2]
    g6 = gcols.reshape(c, kh, kw, n, oh, ow)
    g = xp.zeros(pad_shape, dtype=gcols.dtype)
    gt = g.transpose(1, 0, 2, 3)
    for i in range(kh):
        for j in range(kw):
            gt[:, :, i:i + sh * oh:sh, j:j + sw * ow:sw] += g6[:, i, j]
    return g


def _crop(g, ph, pw):
    if not ph and not pw:
        return g
    return g[:, :, ph:g.shape[2] - ph, pw:g.shape[3] - pw]


class Conv2d(Function):
    """y[n, o] = sum_{c, i, j} W[o, c, i, j] x[n, c, s h + i, s w + j] + b[o] (cross-correlation,
    as PyTorch's conv2d). With K = C KH KW and L = OH OW output positions, forward costs
    2 N O K L FLOPs (+ N O L for the bias); backward 2 N O K L for each of x and W that
    needs a gradient (+ N O L for the bias): the 2x rule, as for a Linear layer.
    """

    def forward(self, x, w, b=None, stride=(1, 1), padding=(0, 0)):
        nx, nw, _ = self.needs_input_grad or (False, False, False)
        xp = self.backend.xp
        (sh, sw), (ph, pw) = stride, padding
        n, c, h, wd = x.shape
        o, _, kh, kw = w.shape
        oh, ow = (h + 2 * ph - kh) // sh + 1, (wd + 2 * pw - kw) // sw + 1
        self.geom = (x.shape, kh, kw, sh, sw, ph, pw, oh, ow)
        self.save(x if nw else None, w if nx else None)
        cols = _unfold(xp, _pad(xp, x, ph, pw), kh, kw, sh, sw, oh, ow)
        y = mm(xp, w.reshape(o, -1), cols)                    # (O, N OH OW)
        if b is not None:
            y += b.reshape(o, 1)
        y = xp.ascontiguousarray(y.reshape(o, n, oh, ow).transpose(1, 0, 2, 3))
        return y if y.dtype == x.dtype else y.astype(x.dtype)

    def backward(self, gy):
        x, w = self.saved
        nx, nw, nb = self.needs_input_grad
        xp = self.backend.xp
        xshape, kh, kw, sh, sw, ph, pw, oh, ow = self.geom
        n, c = xshape[:2]
        o = gy.shape[1]
        g2 = xp.ascontiguousarray(gy.transpose(1, 0, 2, 3)).reshape(o, n * oh * ow)
        gx = gw = gb = None
        if nw:
            cols = _unfold(xp, _pad(xp, x, ph, pw), kh, kw, sh, sw, oh, ow)
            gw = mm(xp, g2, cols.T).reshape(o, c, kh, kw)
        if nb:
            gb = _up(g2).sum(axis=1)
        if nx:
            gcols = mm(xp, w.reshape(o, -1).T, g2)            # (C KH KW, N OH OW)
            pad_shape = (n, c, xshape[2] + 2 * ph, xshape[3] + 2 * pw)
            gx = _crop(_fold(xp, gcols, pad_shape, kh, kw, sh, sw, oh, ow), ph, pw)
        return gx, gw, gb

    def flops(self):
        sw_ = self.in_shapes[1]
        n, o, oh, ow = self.out_shape
        k = prod(sw_[1:])
        has_b = len(self.in_shapes) > 2 and self.in_shapes[2] != ()
        mac = 2 * n * o * k * oh * ow
        fwd = mac + (n * o * oh * ow if has_b else 0)
        if not self._record:
            return fwd, 0
        nx, nw, nb = self.needs_input_grad
        return fwd, mac * (int(nx) + int(nw)) + (n * o * oh * ow if nb else 0)


class MaxPool2d(Function):
    """y = max over each KH x KW window (padding counts as -inf). Keeps the argmax of
    each window (one small integer per output); backward routes gy to it.
    FLOPs: KH KW - 1 compares per output forward, KH KW selects per output backward."""

    def forward(self, x, kernel=(2, 2), stride=(2, 2), padding=(0, 0)):
        xp = self.backend.xp
        (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
        n, c, h, wd = x.shape
        oh, ow = (h + 2 * ph - kh) // sh + 1, (wd + 2 * pw - kw) // sw + 1
        cols = _windows(xp, _pad(xp, x, ph, pw, -float("inf")), kh, kw, sh, sw, oh, ow)
        cols = cols.reshape(n, c, kh * kw, oh, ow)
        arg = cols.argmax(axis=2)
        self.save(arg.astype(_dtype.uint8 if kh * kw < 256 else _dtype.int32))
        self.geom = (x.shape, kh, kw, sh, sw, ph, pw)
        return cols.max(axis=2)

    def backward(self, gy):
        (arg,) = self.saved
        xp = self.backend.xp
        (n, c, h, wd), kh, kw, sh, sw, ph, pw = self.geom
        oh, ow = gy.shape[2:]
        g = xp.zeros((n, c, h + 2 * ph, wd + 2 * pw), dtype=gy.dtype)
        for i in range(kh):
            for j in range(kw):
                g[:, :, i:i + sh * oh:sh, j:j + sw * ow:sw] += gy * (arg == i * kw + j)
        return _crop(g, ph, pw)

    def flops(self):
        k = self.geom[1] * self.geom[2]
        n = prod(self.out_shape)
        return (k - 1) * n, (k * n if self._record else 0)


class AvgPool2d(Function):
    """y = mean over each KH x KW window, zero padding included in the count (PyTorch's
    default ``count_include_pad=True``). Keeps nothing but the geometry.
    FLOPs: KH KW per output forward and backward."""

    def forward(self, x, kernel=(2, 2), stride=(2, 2), padding=(0, 0)):
        xp = self.backend.xp
        (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
        n, c, h, wd = x.shape
        oh, ow = (h + 2 * ph - kh) // sh + 1, (wd + 2 * pw - kw) // sw + 1
        xpad = _pad(xp, x, ph, pw)
        y = xp.zeros((n, c, oh, ow), dtype=x.dtype)
        for i in range(kh):
            for j in range(kw):
                y += xpad[:, :, i:i + sh * oh:sh, j:j + sw * ow:sw]
        y *= 1.0 / (kh * kw)
        self.geom = (x.shape, kh, kw, sh, sw, ph, pw)
        return y

    def backward(self, gy):
        xp = self.backend.xp
        (n, c, h, wd), kh, kw, sh, sw, ph, pw = self.geom
        oh, ow = gy.shape[2:]
        share = gy * (1.0 / (kh * kw))
        g = xp.zeros((n, c, h + 2 * ph, wd + 2 * pw), dtype=gy.dtype)
        for i in range(kh):
            for j in range(kw):
                g[:, :, i:i + sh * oh:sh, j:j + sw * ow:sw] += share
        return _crop(g, ph, pw)

    def flops(self):
        k = self.geom[1] * self.geom[2]
        n = prod(self.out_shape)
        return k * n, (k * n if self._record else 0)


# -- checked entry points (F.conv2d, F.max_pool2d, F.avg_pool2d) ----------------------------
def _pair(v, fn, name, minimum):
    vals = (v, v) if isinstance(v, numbers.Integral) else tuple(v) if isinstance(v, (tuple, list)) else None
    if (vals is None or len(vals) != 2 or not all(isinstance(a, numbers.Integral) and
                                                   not isinstance(a, bool) and a >= minimum for a in vals)):
        raise ValueError(f"{fn}: {name} must be an int >= {minimum} or a pair of them, got {v!r}")
    return int(vals[0]), int(vals[1])


def _image(x, fn):
    if not isinstance(x, Tensor) or not _dtype.is_float(x.dtype):
        raise TypeError(f"{fn}: input must be a floating-point Tensor, got "
                        f"{getattr(x, 'dtype', type(x).__name__)}")
    if x.ndim != 4:
        raise ValueError(f"{fn}: input must be 4-D (N, C, H, W), got shape {x.shape}")
    return x


def _check_window(fn, xshape, kernel, padding, what="kernel"):
    h, w = xshape[2] + 2 * padding[0], xshape[3] + 2 * padding[1]
    if kernel[0] > h or kernel[1] > w:
        raise ValueError(f"{fn}: {what} {kernel} is larger than the padded input "
                         f"({h}, {w}) (input shape {xshape}, padding {padding})")


def conv2d(input, weight, bias=None, stride=1, padding=0):
    """2-D convolution of NCHW ``input`` with ``weight`` (O, C, KH, KW) and ``bias`` (O,)."""
    x = _image(input, "conv2d")
    if not isinstance(weight, Tensor) or weight.ndim != 4:
        raise ValueError(f"conv2d: weight must be a 4-D Tensor (out_channels, in_channels, KH, KW), "
                         f"got shape {getattr(weight, 'shape', None)}")
    if weight.shape[1] != x.shape[1]:
        raise ValueError(f"conv2d: input of shape {x.shape} has {x.shape[1]} channels but weight of "
                         f"shape {weight.shape} expects {weight.shape[1]}")
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(f"conv2d: bias of shape {tuple(bias.shape)} does not match weight of shape "
                         f"{weight.shape}; expected ({weight.shape[0]},)")
    stride, padding = _pair(stride, "conv2d", "stride", 1), _pair(padding, "conv2d", "padding", 0)
    _check_window("conv2d", x.shape, weight.shape[2:], padding)
    if _amp.autocast_dtype() is not None:
        x, weight, bias = _amp.cast_low(x), _amp.cast_low(weight), _amp.cast_low(bias)
    return Conv2d.apply(x, weight, bias, stride=stride, padding=padding)


def _pool(cls, fn, input, kernel_size, stride, padding):
    x = _amp.cast_float32(_image(input, fn))
    kernel = _pair(kernel_size, fn, "kernel_size", 1)
    stride = kernel if stride is None else _pair(stride, fn, "stride", 1)
    padding = _pair(padding, fn, "padding", 0)
    if padding[0] > kernel[0] // 2 or padding[1] > kernel[1] // 2:
        raise ValueError(f"{fn}: padding {padding} must be at most half of kernel_size {kernel}")
    _check_window(fn, x.shape, kernel, padding, "kernel_size")
    return cls.apply(x, kernel=kernel, stride=stride, padding=padding)


def max_pool2d(input, kernel_size, stride=None, padding=0):
    """Max over KH x KW windows of NCHW ``input``; ``stride`` defaults to ``kernel_size``."""
    return _pool(MaxPool2d, "max_pool2d", input, kernel_size, stride, padding)


def avg_pool2d(input, kernel_size, stride=None, padding=0):
    """Mean over KH x KW windows (zero padding counted); ``stride`` defaults to ``kernel_size``."""
    return _pool(AvgPool2d, "avg_pool2d", input, kernel_size, stride, padding)
