"""BatchNorm1d and LayerNorm layers."""
from __future__ import annotations

import numbers

from .. import _dtype
from ..tensor import ones, tensor, zeros
from . import functional as F
from .module import Module
from .parameter import Parameter


class BatchNorm1d(Module):
    """Batch normalization over (N, C) or (N, C, L) inputs, per channel C.

    Training normalizes with the batch's mean and biased variance and moves the
    buffers ``running_mean`` / ``running_var`` towards the batch mean and the
    unbiased variance by ``momentum`` (0.1), counting ``num_batches_tracked``, as
    PyTorch does; eval mode normalizes with the running statistics.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1,
                 affine: bool = True, track_running_stats: bool = True, dtype="float32",
                 backend=None):
        super().__init__()
        if not isinstance(num_features, int) or isinstance(num_features, bool) or num_features < 1:
            raise ValueError(f"BatchNorm1d: num_features must be a positive int, got {num_features!r}")
        dt = _dtype.as_dtype(dtype)
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.affine, self.track_running_stats = affine, track_running_stats
        if affine:
            self.weight = Parameter(ones(num_features, dtype=dt, backend=backend))
            self.bias = Parameter(zeros(num_features, dtype=dt, backend=backend))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        if track_running_stats:
            self.register_buffer("running_mean", zeros(num_features, dtype=dt, backend=backend))
            self.register_buffer("running_var", ones(num_features, dtype=dt, backend=backend))
            self.register_buffer("num_batches_tracked", tensor(0, dtype="int64", backend=backend))
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)
            self.register_buffer("num_batches_tracked", None)

    def forward(self, x):
        use_batch = self.training or self.running_mean is None
        y = F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                         use_batch, self.momentum, self.eps)
        if self.training and self.num_batches_tracked is not None:
            self.num_batches_tracked.data += 1
            self.num_batches_tracked._bump_version("BatchNorm's num_batches_tracked update")
        return y

    def extra_repr(self):
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}"


class LayerNorm(Module):
    """Normalizes over the trailing ``normalized_shape`` axes of each sample, then
    scales and shifts by ``weight`` (ones) and ``bias`` (zeros)."""

    def __init__(self, normalized_shape, eps: float = 1e-5, elementwise_affine: bool = True,
                 dtype="float32", backend=None):
        super().__init__()
        if isinstance(normalized_shape, numbers.Integral):
            normalized_shape = (int(normalized_shape),)
        self.normalized_shape = tuple(int(s) for s in normalized_shape)
        self.eps = eps
        dt = _dtype.as_dtype(dtype)
        if elementwise_affine:
            self.weight = Parameter(ones(self.normalized_shape, dtype=dt, backend=backend))
            self.bias = Parameter(zeros(self.normalized_shape, dtype=dt, backend=backend))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)

    def forward(self, x):
        return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)

    def extra_repr(self):
        return f"{self.normalized_shape}, eps={self.eps}"
