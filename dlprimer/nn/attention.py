"""Multi-head attention with PyTorch's parameter names, so its state dicts load as they are."""
from __future__ import annotations

import math

from .. import _dtype
from .. import amp as _amp
from ..ops.attention import scaled_dot_product_attention
from ..tensor import Tensor, empty
from . import functional as F
from . import init
from .linear import Linear
from .module import Module
from .parameter import Parameter


class MultiheadAttention(Module):
    """softmax(Q_h K_h^T / sqrt(d) + mask) V_h for each of ``num_heads`` heads of size
    d = embed_dim / num_heads, concatenated and projected by ``out_proj``.

    Parameters as PyTorch names them: ``in_proj_weight`` (3E, E) and ``in_proj_bias``
    (3E,) stack the Q, K and V projections; ``out_proj.weight`` / ``out_proj.bias``.
    ``forward(query, key, value, attn_mask=None, need_weights=False, is_causal=False)``
    takes (L, N, E) inputs ((N, L, E) with ``batch_first``, or unbatched (L, E)) and
    returns ``(output, weights)``: weights averaged over heads (N, L, S) when
    ``need_weights``, else None. As in PyTorch, a boolean ``attn_mask`` marks with True
    the positions that may NOT be attended (the opposite of
    ``F.scaled_dot_product_attention``); a float mask is added. ``attn_mask`` is (L, S)
    or (N * num_heads, L, S); ``is_causal=True`` without a mask applies the causal mask.
    """

    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0, bias: bool = True,
                 batch_first: bool = False, dtype="float32", backend=None):
        super().__init__()
        for name, v in (("embed_dim", embed_dim), ("num_heads", num_heads)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"MultiheadAttention: {name} must be a positive int, got {v!r}")
        if embed_dim % num_heads:
            raise ValueError(f"MultiheadAttention: num_heads {num_heads} does not divide "
                             f"embed_dim {embed_dim}")
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"MultiheadAttention: dropout must be in [0, 1), got {dropout!r}")
        dt = _dtype.as_dtype(dtype)
        self.embed_dim, self.num_heads, self.head_dim = embed_dim, num_heads, embed_dim // num_heads
        self.dropout, self.batch_first = float(dropout), bool(batch_first)
        self.in_proj_weight = Parameter(empty(3 * embed_dim, embed_dim, dtype=dt, backend=backend))
        if bias:
            self.in_proj_bias = Parameter(empty(3 * embed_dim, dtype=dt, backend=backend))
        else:
            self.register_parameter("in_proj_bias", None)
        self.out_proj = Linear(embed_dim, embed_dim, bias=bias, dtype=dt, backend=backend)
        self.reset_parameters()

    def reset_parameters(self):
        """PyTorch's: xavier_uniform in_proj_weight, zero biases."""
        init.xavier_uniform_(self.in_proj_weight)
        if self.in_proj_bias is not None:
            init.zeros_(self.in_proj_bias)
            init.zeros_(self.out_proj.bias)

    def _project(self, x, i):
        e = self.embed_dim
        w = self.in_proj_weight[i * e:(i + 1) * e]
        b = self.in_proj_bias[i * e:(i + 1) * e] if self.in_proj_bias is not None else None
        return F.linear(x, w, b)

    def _batch(self, x, unbatched):
        """(N, L, E) from the caller's layout."""
        if unbatched:
            return x.reshape(1, *x.shape)
        return x if self.batch_first else x.transpose(1, 0, 2)

    def _heads(self, x, n, length):
        """(N, L, E) -> (N, H, L, d)."""
        return x.reshape(n, length, self.num_heads, self.head_dim).transpose(0, 2, 1, 3)

    def _mask(self, attn_mask, n, L, S):
        """The mask in SDPA's convention (True = may attend, or float added), (N, H, L, S)-broadcastable."""
        m = attn_mask.data if isinstance(attn_mask, Tensor) else attn_mask
        shape = tuple(m.shape)
        if shape == (L, S):
            pass
        elif shape == (n * self.num_heads, L, S):
            m = m.reshape(n, self.num_heads, L, S)
        else:
            raise ValueError(f"MultiheadAttention: attn_mask of shape {shape} must be (L, S) = "
                             f"{(L, S)} or (N * num_heads, L, S) = {(n * self.num_heads, L, S)}")
        return ~m if m.dtype == bool else m

    def forward(self, query, key, value, attn_mask=None, need_weights=False, is_causal=False):
        e = self.embed_dim
        unbatched = query.ndim == 2
        if query.ndim not in (2, 3) or key.ndim != query.ndim or value.ndim != query.ndim:
            raise ValueError(f"MultiheadAttention: query {query.shape}, key {key.shape} and value "
                             f"{value.shape} must all be 3-D (or all 2-D, unbatched)")
        if query.shape[-1] != e or key.shape[-1] != e or value.shape[-1] != e:
            raise ValueError(f"MultiheadAttention: query {query.shape}, key {key.shape} and value "
                             f"{value.shape} must end in embed_dim {e}")
        same_k, same_v = key is query, value is query    # self-attention: one copy
        query = self._batch(_amp.cast_low(query), unbatched)
        key = query if same_k else self._batch(_amp.cast_low(key), unbatched)
        value = query if same_v else self._batch(_amp.cast_low(value), unbatched)
        n, L, S = query.shape[0], query.shape[1], key.shape[1]
        if key.shape[:2] != value.shape[:2] or key.shape[0] != n:
            raise ValueError(f"MultiheadAttention: key {key.shape} and value {value.shape} must share "
                             f"batch and length, and the batch of query {query.shape}")
        q = self._heads(self._project(query, 0), n, L)
        k = self._heads(self._project(key, 1), n, S)
        v = self._heads(self._project(value, 2), n, S)
        mask = self._mask(attn_mask, n, L, S) if attn_mask is not None else None
        causal = bool(is_causal) and mask is None
        p = self.dropout if self.training else 0.0
        weights = None
        if need_weights:
            out, weights = self._explicit(q, k, v, mask, causal, p, L, S)
        else:
            out = scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p, is_causal=causal)
        out = self.out_proj(out.transpose(0, 2, 1, 3).reshape(n, L, e))
        if unbatched:
            return out.reshape(L, e), (weights.reshape(L, S) if weights is not None else None)
        if not self.batch_first:
            out = out.transpose(1, 0, 2)
        return out, weights

    def _explicit(self, q, k, v, mask, causal, p, L, S):
        """Attention from primitive ops, keeping the weights (need_weights=True)."""
        from ..tensor import tensor
        xp = q.backend.xp
        s = (q @ k.transpose(0, 1, 3, 2)) * (1.0 / math.sqrt(self.head_dim))
        if causal:
            mask = xp.tril(xp.ones((L, S), dtype=bool))
        if mask is not None:
            add = xp.where(mask, 0.0, -xp.inf) if mask.dtype == bool else mask
            s = s + tensor(add.astype(s.dtype), backend=q.backend)
        w = F.softmax(s, axis=-1)
        out = F.dropout(w, p) @ v if p else w @ v
        return out, w.mean(axis=1)

    def extra_repr(self):
        return (f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, "
                f"batch_first={self.batch_first}")
