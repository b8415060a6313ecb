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
    an index is out of range (on a device backend at ``dp.check_deferred()``, as a
    loss's bad class target: the check reads nothing back inside a step).
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

    def error(count, bad, shape=weight.shape):
        times = "" if count == 1 else f" ({count} batches had a bad index)"
        return IndexError(f"embedding: index {bad} is out of range for a table of {shape[0]} rows "
                          f"(weight shape {shape}; valid: 0..{shape[0] - 1}){times}")
    # on a device the range check is a flag read at logging time (dp.check_deferred()),
    # not a host read per step; CuPy's gather wraps an out-of-range index meanwhile
    weight.backend.check_range(idx.data, v, ("embedding", v), error)
    return Embedding.apply(idx, weight)
