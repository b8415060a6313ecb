"""Half-precision inputs for the CPU backend's fused ops, with float32 math inside.

Under ``dp.autocast`` the activations (GELU, SiLU, the ReLU family, sigmoid, tanh),
bias+GELU (row blocks, the bias in float32, its gradient summed in float32), dropout
(each block's mask hashed at its elements' own indices, so it is the float32 path's
mask) and the softmax cross-entropy take float16 / bfloat16 arrays as they are, so
what they save for backward stays half (2 bytes an element, not 4) -- the memory the
chapter's mixed-precision claim is about. The math still runs in float32, as on the GPU
(``kernels/*.cu`` load with ``__half2float``, compute in float, round once on the
store): each op walks its arrays in blocks of :data:`BLOCK` elements (64 KiB of
float32, cache-sized), converts a block into a float32 scratch, runs the backend's own
float32 op on it (the numba kernel when the JIT is on, the NumPy ufunc chain
otherwise) and rounds the result once into the half output. No float32 copy of the
whole tensor is ever made.

numba has no CPU float16 type, so the conversions are NumPy casts: ml_dtypes' bfloat16
casts (about 0.3 ns an element up, 1 ns down on the development machine) beat bit
shifts on a uint16 view (0.5 and 1.3 ns); NumPy's float16 casts are slower (about 3 ns
up, 7 ns down) but still a fraction of a GELU.
"""
from __future__ import annotations

import functools

import numpy as np

from .. import _dtype

#: elements per block: 16K float32 = 64 KiB, so a block's inputs, scratch and output
#: stay in L2 while the float32 op runs on them.
BLOCK = 1 << 14
_F32 = np.dtype(np.float32)


def is_half(a) -> bool:
    return isinstance(a, np.ndarray) and _dtype.is_half(a.dtype)


def _flat(a):
    return np.ascontiguousarray(a).reshape(-1)


def _blocks(n, block=BLOCK):
    for s in range(0, n, block):
        yield s, min(s + block, n)


def _as_f32(src, scratch):
    """``src`` (a flat block) as float32: a view when it already is, else cast into
    ``scratch``."""
    if src.dtype == _F32:
        return src
    out = scratch[:src.shape[0]]
    np.copyto(out, src, casting="unsafe")
    return out


def elementwise(op, arrays, out_dtype, *params, **kw):
    """``op(*float32 blocks, *params, **kw)`` over ``arrays`` (one shape), the result
    rounded once into a new array of ``out_dtype`` and the arrays' shape."""
    shape = arrays[0].shape
    for a in arrays[1:]:
        if a.shape != shape:
            raise ValueError(f"half-precision fused op: arrays of shapes {shape} and {a.shape} "
                             "must match")
    flats = [_flat(a) for a in arrays]
    out = np.empty(shape, dtype=out_dtype)
    flat_out = out.reshape(-1)
    n = flat_out.shape[0]
    scratch = [np.empty(min(n, BLOCK), _F32) for _ in arrays]
    for s, e in _blocks(n):
        blocks = [_as_f32(f[s:e], t) for f, t in zip(flats, scratch)]
        np.copyto(flat_out[s:e], op(*blocks, *params, **kw), casting="unsafe")
    return out


def float32_inside(n_arrays):
    """Decorator for a CPU backend fused op whose first ``n_arrays`` arguments are
    arrays: when any of them is float16 / bfloat16, the op runs as :func:`elementwise`
    over float32 blocks through ``getattr(self, name)`` (so a subclass's float32 kernel,
    the JIT's, is the one called) and returns the first array's dtype (a gradient has
    its input's dtype). Otherwise the op runs as written."""
    def deco(method):
        name = method.__name__

        @functools.wraps(method)
        def wrapper(self, *args, **kw):
            arrays = args[:n_arrays]
            if any(is_half(a) for a in arrays):
                arrays = [np.asarray(a) for a in arrays]
                return elementwise(getattr(self, name), arrays, arrays[0].dtype,
                                   *args[n_arrays:], **kw)
            return method(self, *args, **kw)
        wrapper.float32_inside = True
        return wrapper
    return deco


# -- the fused classifier (softmax cross-entropy) on half logits -------------------------
def _row_blocks(rows, c):
    per = max(1, BLOCK // max(int(c), 1))
    return _blocks(rows, per), per


def classifier_forward(fn32, logits, target, label_smoothing):
    """Row losses (float32) and stats (N, 2) float32 = (max, log sum e^(x - max)) of
    half (N, C) logits; ``fn32`` is the backend's float32 fused classifier forward,
    run on float32 row blocks. The loss is float32, as under PyTorch's autocast."""
    x = np.ascontiguousarray(logits)
    rows, c = x.shape
    loss = np.empty(rows, _F32)
    stats = np.empty((rows, 2), _F32)
    blocks, per = _row_blocks(rows, c)
    scratch = np.empty((min(rows, per), c), _F32)
    for s, e in blocks:
        xb = scratch[:e - s]
        np.copyto(xb, x[s:e], casting="unsafe")
        lb, sb = fn32(xb, target[s:e], label_smoothing)
        loss[s:e] = lb
        stats[s:e] = sb
    return loss, stats


def classifier_backward(fn32, logits, stats, target, gy, label_smoothing, inplace=False):
    """The half gradient (e^((x - m) - log s) - q) * gy of half logits, computed in
    float32 row blocks by ``fn32`` (the backend's float32 fused classifier backward)
    and rounded once; with ``inplace`` written over ``logits``."""
    x = logits if inplace and logits.flags.c_contiguous else np.ascontiguousarray(logits)
    rows, c = x.shape
    g = x if inplace and x is logits else np.empty(x.shape, x.dtype)
    stats = np.asarray(stats, dtype=_F32)
    gy = np.asarray(gy, dtype=_F32)
    gy = np.broadcast_to(gy, (rows,)) if gy.ndim == 0 else gy
    blocks, per = _row_blocks(rows, c)
    scratch = np.empty((min(rows, per), c), _F32)
    for s, e in blocks:
        xb = scratch[:e - s]
        np.copyto(xb, x[s:e], casting="unsafe")
        gb = fn32(xb, stats[s:e], target[s:e], gy[s:e], label_smoothing, inplace=True)
        np.copyto(g[s:e], gb, casting="unsafe")
    return g


# -- bias + GELU on half x (row blocks: the bias runs along the last axis) ---------------
def _bias_rows(x, b):
    c = b.shape[0]
    rows = x.size // c if c else 0
    return np.ascontiguousarray(x).reshape(rows, c), rows, c


def bias_gelu_forward(fn32, x, b, approximate):
    """gelu(x + b) of a half ``x`` with a float32 (or half) bias ``b`` of shape (C,):
    ``fn32``, the backend's float32 bias+GELU, runs on float32 row blocks with the
    bias as float32, and the result is rounded once into ``x``'s dtype."""
    x2, rows, c = _bias_rows(x, b)
    out = np.empty(x.shape, x.dtype)
    o2 = out.reshape(rows, c)
    b32 = np.asarray(b, dtype=_F32)
    blocks, per = _row_blocks(rows, c)
    scratch = np.empty((min(rows, per), c), _F32)
    for s, e in blocks:
        xb = scratch[:e - s]
        np.copyto(xb, x2[s:e], casting="unsafe")
        np.copyto(o2[s:e], fn32(xb, b32, approximate), casting="unsafe")
    return out


def bias_gelu_backward(fn32, x, b, gy, approximate):
    """(gx, gb) of gelu(x + b) for a half ``x`` (or ``gy``): ``fn32`` (the backend's
    float32 bias+GELU backward) on float32 row blocks; gx rounded once into ``x``'s
    dtype, gb -- a sum over the rows -- accumulated in float32 from the unrounded
    float32 gx and returned in ``b``'s dtype."""
    if gy.shape != x.shape:
        raise ValueError(f"bias_gelu_backward: gy of shape {gy.shape} does not match x of "
                         f"shape {x.shape}")
    x2, rows, c = _bias_rows(x, b)
    g2 = np.ascontiguousarray(gy).reshape(rows, c)
    gx = np.empty(x.shape, x.dtype)
    o2 = gx.reshape(rows, c)
    b32 = np.asarray(b, dtype=_F32)
    gb = np.zeros(c, _F32)
    blocks, per = _row_blocks(rows, c)
    xs, gs = (np.empty((min(rows, per), c), _F32) for _ in range(2))
    for s, e in blocks:
        xb, gb_ = xs[:e - s], gs[:e - s]
        np.copyto(xb, x2[s:e], casting="unsafe")
        np.copyto(gb_, g2[s:e], casting="unsafe")
        gxb, gbb = fn32(xb, b32, gb_, approximate)
        np.copyto(o2[s:e], gxb, casting="unsafe")
        gb += gbb
    return gx, gb.astype(b.dtype, copy=False)


# -- dropout on half x -------------------------------------------------------------------
def dropout(fn32, x, p, key, key_at):
    """(x * scale) * mask of a half ``x``: ``fn32`` (the backend's float32 dropout, the
    JIT kernel when on) on float32 blocks, each keyed ``key_at(key, start)`` so that it
    draws the mask of its own elements of the whole call -- the mask the float32 path
    draws, so a half and a float32 run with one key drop the same elements -- and the
    result (scale = float32(1 / (1 - p)) applied in float32) rounded once."""
    flat = _flat(x)
    out = np.empty(x.shape, x.dtype)
    flat_out = out.reshape(-1)
    scratch = np.empty(min(flat.shape[0], BLOCK), _F32)
    for s, e in _blocks(flat.shape[0]):
        xb = _as_f32(flat[s:e], scratch)
        np.copyto(flat_out[s:e], fn32(xb, p, key_at(key, s)), casting="unsafe")
    return out
