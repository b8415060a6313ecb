"""Scaled dot-product attention as one Function (the Transformer's core op).

out = dropout(softmax(Q K^T * scale + mask)) V, over (..., L, E) queries, (..., S, E)
keys and (..., S, Ev) values. One node instead of matmul, scale, mask, softmax,
dropout and matmul: the graph keeps Q, K, V and the (..., L, S) probabilities P
(float32), the dropout mask is regenerated from its key, and backward is

    gV = P_d^T gO,   gP_d = gO V^T,   gP = dropout'(gP_d),
    gS = P * (gP - rowsum(gP * P)) * scale,   gQ = gS K,   gK = gS^T Q,

four products of the forward's two sizes, hence about twice the forward's FLOPs.
Half-precision inputs (under ``dp.autocast``) are multiplied and normalised in
float32 inside and the output is rounded to their dtype.
"""
from __future__ import annotations

import math
import numbers

from .. import _dtype
from .. import amp as _amp
from ..autograd import Function
from ..tensor import Tensor
from ._util import prod, unbroadcast


def _up(a):
    return a.astype(_dtype.float32) if _dtype.is_half(a.dtype) else a


def _t(xp, a):
    return xp.swapaxes(a, -1, -2)


def _add_into(s, add):
    """``s + add``, in place when ``add`` broadcasts into ``s``'s shape."""
    if add.ndim <= s.ndim and all(a in (1, b) for a, b in zip(add.shape[::-1], s.shape[::-1])):
        s += add
        return s
    return s + add


class ScaledDotProductAttention(Function):
    """softmax(Q K^T scale + mask) V. FLOPs with B batch elements: forward
    2 B L S (E + Ev) for the two products + 5 B L S for scale, mask and softmax;
    backward 2 B L S Ev for each of gV and gP, 4 B L S for the softmax, and
    2 B L S E for each of gQ and gK that is needed."""

    def forward(self, q, k, v, mask=None, scale=1.0, is_causal=False, dropout_p=0.0):
        xp = self.backend.xp
        qf, kf, vf = _up(q), _up(k), _up(v)
        s = xp.matmul(qf, _t(xp, kf))
        s *= scale
        L, S = s.shape[-2], s.shape[-1]
        if is_causal:
            mask = xp.tril(xp.ones((L, S), dtype=bool))
        if mask is not None:   # as an additive 0 / -inf mask: one broadcast add, no where
            add = xp.where(mask, 0.0, -xp.inf) if mask.dtype == bool else mask
            s = _add_into(s, add.astype(s.dtype, copy=False))
        s -= s.max(axis=-1, keepdims=True)
        p = xp.exp(s, out=s)
        p /= p.sum(axis=-1, keepdims=True)
        self.scale, self.dropout_p = scale, dropout_p
        self.key = self.backend.next_key() if dropout_p > 0 else None
        pd = self.backend.dropout_forward(p, dropout_p, self.key) if self.key else p
        out = xp.matmul(pd, vf)
        self.shapes = (q.shape, k.shape, v.shape)
        self.save(q, k, v, p)
        return out if out.dtype == q.dtype else out.astype(q.dtype)

    def backward(self, go):
        q, k, v, p = self.saved
        nq, nk, nv = self.needs_input_grad[:3]
        xp = self.backend.xp
        go = _up(go)
        gq = gk = gv = None
        if nv:
            pd = self.backend.dropout_forward(p, self.dropout_p, self.key) if self.key else p
            gv = unbroadcast(xp.matmul(_t(xp, pd), go), self.shapes[2])
        if nq or nk:
            gp = xp.matmul(go, _t(xp, _up(v)))
            if self.key:
                gp = self.backend.dropout_backward(gp, self.dropout_p, self.key)
            gs = gp
            gs -= (gp * p).sum(axis=-1, keepdims=True)
            gs *= p
            gs *= self.scale
            if nq:
                gq = unbroadcast(xp.matmul(gs, _up(k)), self.shapes[0])
            if nk:
                gk = unbroadcast(xp.matmul(_t(xp, gs), _up(q)), self.shapes[1])
        return gq, gk, gv

    def flops(self):
        sq, sk, sv = self.in_shapes[:3]
        L, E, S, Ev = sq[-2], sq[-1], sk[-2], sv[-1]
        B = prod(self.out_shape[:-2])
        lse = B * L * S
        fwd = 2 * lse * (E + Ev) + 5 * lse
        if not self._record:
            return fwd, 0
        nq, nk, nv = self.needs_input_grad[:3]
        bwd = 2 * lse * Ev * int(nv)
        if nq or nk:
            bwd += 2 * lse * Ev + 4 * lse + 2 * lse * E * (int(nq) + int(nk))
        return fwd, bwd


def _broadcast_ok(a, b):
    for x, y in zip(reversed(a), reversed(b)):
        if x != y and x != 1 and y != 1:
            return False
    return True


def scaled_dot_product_attention(query, key, value, attn_mask=None, dropout_p=0.0,
                                 is_causal=False, scale=None):
    """PyTorch's ``F.scaled_dot_product_attention`` over (..., L, E), (..., S, E), (..., S, Ev).

    ``attn_mask``: a boolean mask (True = may attend) or a float mask added to the
    scores, broadcastable to (..., L, S). ``is_causal``: query i attends to keys
    0..i (the upper-left triangle); not together with ``attn_mask``. ``scale``
    defaults to 1/sqrt(E) (the Transformer's 1/sqrt(d_k)).
    """
    fn = "scaled_dot_product_attention"
    for name, t in (("query", query), ("key", key), ("value", value)):
        if not isinstance(t, Tensor) or not _dtype.is_float(t.dtype) or t.ndim < 2:
            raise ValueError(f"{fn}: {name} must be a floating-point Tensor of at least 2 dims "
                             f"(..., L, E), got {getattr(t, 'shape', type(t).__name__)}")
    q, k, v = query, key, value
    if q.shape[-1] != k.shape[-1] or k.shape[-2] != v.shape[-2]:
        raise ValueError(f"{fn}: query {q.shape}, key {k.shape} and value {v.shape} do not match: "
                         f"query and key need the same last dim, key and value the same length S")
    if not (_broadcast_ok(q.shape[:-2], k.shape[:-2]) and _broadcast_ok(k.shape[:-2], v.shape[:-2])):
        raise ValueError(f"{fn}: batch dims of query {q.shape}, key {k.shape} and value {v.shape} "
                         f"do not broadcast")
    if not isinstance(dropout_p, numbers.Real) or not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"{fn}: dropout_p must be in [0, 1), got {dropout_p!r}")
    L, S = q.shape[-2], k.shape[-2]
    mask = None
    if attn_mask is not None:
        if is_causal:
            raise ValueError(f"{fn}: pass either attn_mask or is_causal=True, not both")
        mask = attn_mask.data if isinstance(attn_mask, Tensor) else q.backend.asarray(attn_mask)
        if mask.ndim < 2 or not _broadcast_ok(mask.shape, q.shape[:-2] + (L, S)) or \
                mask.shape[-2] not in (1, L) or mask.shape[-1] not in (1, S):
            raise ValueError(f"{fn}: attn_mask of shape {tuple(mask.shape)} does not broadcast to "
                             f"the scores' shape {q.shape[:-2] + (L, S)} (..., L, S)")
        if mask.dtype != bool and not _dtype.is_float(mask.dtype):
            raise ValueError(f"{fn}: attn_mask must be bool (True = attend) or float (added), "
                             f"got {mask.dtype}")
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    if _amp.autocast_dtype() is not None:
        q, k, v = _amp.cast_low(q), _amp.cast_low(k), _amp.cast_low(v)
    return ScaledDotProductAttention.apply(q, k, v, mask=mask, scale=scale,
                                           is_causal=bool(is_causal), dropout_p=float(dropout_p))
