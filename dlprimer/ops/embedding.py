"""Embedding lookup as one Function: rows of a weight table picked by integer indices."""
from __future__ import annotations

from .. import _dtype
from ..autograd import Function
from ..tensor import Tensor
from ._util import prod


class Embedding(Function):
    """y[..., :] = W[idx[...], :] for W of shape (V, D).

    Forward is a gather (no FLOPs); backward scatters gy into a zero (V, D) table,
    and rows picked more than once accumulate (``backend.scatter_add``): V*D zeros
    plus one add per element of gy. Keeps only the indices.
    """

    def forward(self, idx, weight):
        self.save(idx)
        self.wshape = weight.shape
        return weight[idx]

    def backward(self, gy):
        (idx,) = self.saved
        xp = self.backend.xp
        d = self.wshape[1]
        gw = xp.zeros(self.wshape, dtype=gy.dtype)
        self.backend.scatter_add(gw, idx.reshape(-1), gy.reshape(-1, d))
        return None, gw

    def flops(self):
        n = prod(self.out_shape)
        return 0, (n if self._record and self.needs_input_grad[1] else 0)


def embedding(idx, weight):
    """``weight[idx]``: ``idx`` an integer Tensor (any shape) of rows of ``weight``
    (V, D); the output has shape ``idx.shape + (D,)``. Gradients of rows picked
    more than once accumulate, as in PyTorch's ``F.embedding``.

    Raises TypeError for float indices and IndexError naming the index and V when
    an index is out of range.
    """
    if not isinstance(weight, Tensor) or not _dtype.is_float(weight.dtype):
        raise TypeError(f"embedding: weight must be a floating-point Tensor, got "
                        f"{getattr(weight, 'dtype', type(weight).__name__)}")
    if weight.ndim != 2:
        raise ValueError(f"embedding: weight must be 2-D (num_embeddings, embedding_dim), got "
                         f"shape {weight.shape}")
    if not isinstance(idx, Tensor):
        from ..tensor import tensor
        try:
            idx = tensor(idx, backend=weight.backend)
        except (TypeError, ValueError) as e:
            raise TypeError(f"embedding: indices must be an integer Tensor ({e})") from None
    if idx.dtype.kind not in "iu":
        raise TypeError(f"embedding: indices must be integers (int32/int64), got dtype {idx.dtype}")
    if idx.backend is not weight.backend:
        raise RuntimeError(f"embedding: indices are on backend {idx.backend.name!r}, the weight on "
                           f"{weight.backend.name!r}; move one with .to()")
    v = weight.shape[0]
    if idx.size:
        xp = weight.backend.xp
        lo, hi = (int(a) for a in weight.backend.to_numpy(xp.stack([idx.data.min(), idx.data.max()])))
        if lo < 0 or hi >= v:
            raise IndexError(f"embedding: index {lo if lo < 0 else hi} is out of range for a table "
                             f"of {v} rows (weight shape {weight.shape}; valid: 0..{v - 1})")
    return Embedding.apply(idx, weight)
