"""Normalization layers' Functions: batch normalization and layer normalization.

Both normalize x_hat = (x - mu) / sqrt(var + eps) and apply y = gamma x_hat + beta
(the chapter's batch norm, "pinning the target in place" for each layer). Backward
uses the closed form over the m normalized elements:
gx = inv_std / m * (m g - sum g - x_hat sum(g x_hat)), g = gy * gamma,
so each node keeps only x_hat and inv_std.
"""
from __future__ import annotations

from ..autograd import Function
from ._util import prod


class BatchNorm(Function):
    """Batch norm over axis 0 (and 2 for (N, C, L) inputs), per channel C.

    Training: batch statistics (biased variance) normalize, and ``running_mean`` /
    ``running_var`` (arrays, updated in place, no gradient) move by ``momentum``
    towards the batch mean and the *unbiased* batch variance, as PyTorch keeps them.
    Evaluation: the running statistics normalize and are left alone.
    """
    fwd_flops_per_elem = 7
    bwd_flops_per_elem = 9

    def forward(self, x, weight=None, bias=None, running_mean=None, running_var=None,
                training=True, momentum=0.1, eps=1e-5):
        xp = self.backend.xp
        axes = (0,) if x.ndim == 2 else (0, 2)
        shape = (1, x.shape[1]) + (1,) * (x.ndim - 2)
        self.axes, self.shape, self.training = axes, shape, training
        if training:
            m = prod(x.shape[a] for a in axes)
            mean = x.mean(axis=axes)
            xc = x - mean.reshape(shape)
            var = (xc * xc).mean(axis=axes)
            if running_mean is not None:
                running_mean *= 1 - momentum
                running_mean += momentum * mean
            if running_var is not None:
                running_var *= 1 - momentum
                running_var += (momentum * m / max(m - 1, 1)) * var
        else:
            mean, var = running_mean, running_var
            xc = x - mean.reshape(shape)
        inv = 1.0 / xp.sqrt(var + eps)
        inv = inv.astype(x.dtype, copy=False)
        xhat = xc
        xhat *= inv.reshape(shape)
        y = xhat * weight.reshape(shape) if weight is not None else xhat.copy()
        if bias is not None:
            y += bias.reshape(shape)
        self.save(xhat, inv, weight)
        return y

    def backward(self, gy):
        xhat, inv, weight = self.saved
        nx, nw, nb = self.needs_input_grad
        shape, axes = self.shape, self.axes
        g = gy * weight.reshape(shape) if weight is not None else gy
        gx = gw = gb = None
        if nx:
            if self.training:
                gx = g - g.mean(axis=axes, keepdims=True)
                gx -= xhat * (g * xhat).mean(axis=axes, keepdims=True)
                gx *= inv.reshape(shape)
            else:
                gx = g * inv.reshape(shape)
        if nw:
            gw = (gy * xhat).sum(axis=axes)
        if nb:
            gb = gy.sum(axis=axes)
        return gx, gw, gb


class LayerNorm(Function):
    """Layer norm over the last ``k`` axes of x, one mean and variance per leading
    index (no running statistics); ``weight`` and ``bias`` have those k axes' shape."""
    fwd_flops_per_elem = 7
    bwd_flops_per_elem = 9

    def forward(self, x, weight=None, bias=None, k=1, eps=1e-5):
        xp = self.backend.xp
        axes = tuple(range(x.ndim - k, x.ndim))
        self.axes = axes
        mean = x.mean(axis=axes, keepdims=True)
        xhat = x - mean
        var = (xhat * xhat).mean(axis=axes, keepdims=True)
        inv = (1.0 / xp.sqrt(var + eps)).astype(x.dtype, copy=False)
        xhat *= inv
        y = xhat * weight if weight is not None else xhat.copy()
        if bias is not None:
            y += bias
        self.save(xhat, inv, weight)
        return y

    def backward(self, gy):
        xhat, inv, weight = self.saved
        nx, nw, nb = self.needs_input_grad
        axes = self.axes
        lead = tuple(range(gy.ndim - len(axes)))
        g = gy * weight if weight is not None else gy
        gx = gw = gb = None
        if nx:
            gx = g - g.mean(axis=axes, keepdims=True)
            gx -= xhat * (g * xhat).mean(axis=axes, keepdims=True)
            gx *= inv
        if nw:
            gw = (gy * xhat).sum(axis=lead)
        if nb:
            gb = gy.sum(axis=lead)
        return gx, gw, gb
