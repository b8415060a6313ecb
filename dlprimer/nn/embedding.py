"""Embedding: a learned table of vectors looked up by integer index."""
from __future__ import annotations

from .. import _dtype
from ..ops.embedding import embedding
from ..tensor import empty
from . import init
from .module import Module
from .parameter import Parameter


def _positive_int(v, cls, name):
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        raise ValueError(f"{cls}: {name} must be a positive int, got {v!r}")
    return v


class Embedding(Module):
    """``weight`` (num_embeddings, embedding_dim) ~ N(0, 1) as in PyTorch;
    ``forward(idx)`` returns ``weight[idx]`` of shape ``idx.shape + (embedding_dim,)``."""

    def __init__(self, num_embeddings: int, embedding_dim: int, dtype="float32", backend=None):
        super().__init__()
        self.num_embeddings = _positive_int(num_embeddings, "Embedding", "num_embeddings")
        self.embedding_dim = _positive_int(embedding_dim, "Embedding", "embedding_dim")
        self.weight = Parameter(empty(num_embeddings, embedding_dim, dtype=_dtype.as_dtype(dtype),
                                      backend=backend))
        self.reset_parameters()

    def reset_parameters(self):
        init.normal_(self.weight, 0.0, 1.0)

    def forward(self, idx):
        return embedding(idx, self.weight)

    def extra_repr(self):
        return f"{self.num_embeddings}, {self.embedding_dim}"
