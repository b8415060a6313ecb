"""Loss functions as autograd Functions (chapter section 04, Table 3.4).

Each loss is one Function that computes the per-element loss, reduces it
(``"mean"``, ``"sum"`` or ``"none"``) and differentiates both steps at once.
Cross-entropy runs as the backend's fused softmax-cross-entropy op, whose
gradient is simply ``softmax(logits) - onehot``. On CUDA it is the fused classifier:
one online-softmax pass, only (N, 2) row statistics saved, and the logits gradient
written over the logits when nothing else holds them (not even the caller's logits
Tensor). Every loss is computed in a form that stays finite for logits of +-1e4
(log-sum-exp, log1p(e^-|x|)).

Argument checking (shapes, dtypes, class ranges) lives in
:mod:`dlprimer.nn.functional`; these Functions assume valid arrays.
"""
from __future__ import annotations

import sys

from .. import _dtype, autograd
from ..autograd import Function
from ..backend.unfused import fusion_enabled
from ._util import prod

REDUCTIONS = ("mean", "sum", "none")


class _Loss(Function):
    """Shared reduction: ``self._reduce(l)`` in forward, ``self._expand(gy)`` in backward."""
    fwd_flops_per_elem = 3
    bwd_flops_per_elem = 3

    def _reduce(self, loss, reduction):
        self.reduction = reduction
        self.n = n = loss.size
        if reduction == "none":
            return loss
        s = loss.sum()
        if reduction == "mean":
            s = s / n if n else s * self.backend.xp.nan
        return self.backend.xp.asarray(s, dtype=loss.dtype)

    def _expand(self, gy):
        """The gradient with respect to the per-element loss, as an array that broadcasts
        to the loss's shape: for ``mean`` and ``sum`` the 0-d gy (/ n), never a
        broadcast view (NumPy's ``broadcast_to`` costs more than the small ops it feeds)."""
        if self.reduction == "mean":
            return gy / self.n
        return gy

    def flops(self):
        n = prod(self.in_shapes[0]) if self.in_shapes else 0
        k = sum(1 for r in self.needs_input_grad if r) if self._record else 0
        return self.fwd_flops_per_elem * n, self.bwd_flops_per_elem * n * k


class CrossEntropy(_Loss):
    """The chapter's L_CE = -sum_c y_c log yhat_c over softmax(logits), targets smoothed
    to q = (1 - eps) onehot + eps / C; gradient (softmax - q) * gy, fused."""
    fwd_flops_per_elem = 5
    bwd_flops_per_elem = 3

    def forward(self, logits, target, label_smoothing=0.0, reduction="mean"):
        be = self.backend
        self.label_smoothing = label_smoothing
        half = logits.dtype.itemsize == 2 and _dtype.is_half(logits.dtype)  # float32 math
        self.fused = (be.fused_classifier or half) and fusion_enabled()
        if self.fused:  # the fused classifier: saves (N, 2) row stats, not N x C probabilities
            loss, stats = be.fused_classifier_forward(logits, target, label_smoothing)
            self.save(logits, stats, target)
        else:
            loss, probs = be.softmax_cross_entropy_forward(logits, target, label_smoothing)
            self.save(probs, target)
        return self._reduce(loss, reduction)

    def backward(self, gy):
        g = gy / self.n if self.reduction == "mean" else gy   # _expand, without its call
        if not self.fused:
            probs, target = self.saved
            return self.backend.softmax_cross_entropy_backward(
                probs, target, g, self.label_smoothing), None
        logits, stats, target = self.saved
        probe = object()
        keep = (probe,)  # probe is held as logits is: one tuple, one local name
        inplace = (not autograd.retaining_graph and getattr(logits, "base", None) is None
                   and sys.getrefcount(logits) <= sys.getrefcount(probe))
        del keep
        return self.backend.fused_classifier_backward(
            logits, stats, target, g, self.label_smoothing, inplace=inplace), None


class MSELoss(_Loss):
    """(x - y)^2 (Table 3.4's mean squared error); gradient 2 (x - y)."""
    fwd_flops_per_elem = 2
    bwd_flops_per_elem = 2

    def forward(self, x, y, reduction="mean"):
        d = x - y
        self.save(d)
        return self._reduce(d * d, reduction)

    def backward(self, gy):
        (d,) = self.saved
        g = self._expand(gy) * (2 * d)
        nx, ny = self.needs_input_grad
        return (g if nx else None), (-g if ny else None)


class L1Loss(_Loss):
    """|x - y| (mean absolute error); gradient sign(x - y), 0 where x == y."""
    fwd_flops_per_elem = 2
    bwd_flops_per_elem = 2

    def forward(self, x, y, reduction="mean"):
        d = x - y
        self.save(self.backend.xp.sign(d))
        self.backend.xp.abs(d, out=d)
        return self._reduce(d, reduction)

    def backward(self, gy):
        (s,) = self.saved
        g = self._expand(gy) * s
        nx, ny = self.needs_input_grad
        return (g if nx else None), (-g if ny else None)


class HuberLoss(_Loss):
    """0.5 d^2 where |d| < delta, else delta (|d| - 0.5 delta), d = x - y (Table 3.4:
    MSE for small errors, MAE for large); gradient clip(d, -delta, delta)."""
    fwd_flops_per_elem = 5
    bwd_flops_per_elem = 2

    def forward(self, x, y, delta=1.0, reduction="mean"):
        xp = self.backend.xp
        d = x - y
        self.save(xp.clip(d, -delta, delta))
        a = xp.abs(d)
        loss = xp.where(a < delta, 0.5 * d * d, delta * (a - 0.5 * delta))
        return self._reduce(loss.astype(d.dtype, copy=False), reduction)

    def backward(self, gy):
        (c,) = self.saved
        g = self._expand(gy) * c
        nx, ny = self.needs_input_grad
        return (g if nx else None), (-g if ny else None)


class BCEWithLogits(_Loss):
    """Binary cross-entropy on logits: -[y log s(x) + (1 - y) log(1 - s(x))], written
    max(x, 0) - x y + log1p(e^-|x|) so it is finite for any x; gradient s(x) - y
    (for the logits) and -x (for the targets)."""
    fwd_flops_per_elem = 7
    bwd_flops_per_elem = 4

    def forward(self, x, y, reduction="mean"):
        xp = self.backend.xp
        self.save(x, y)
        loss = xp.maximum(x, 0)
        loss -= x * y
        t = xp.abs(x)
        xp.negative(t, out=t)
        xp.exp(t, out=t)
        xp.log1p(t, out=t)
        loss += t
        return self._reduce(loss, reduction)

    def backward(self, gy):
        x, y = self.saved
        g = self._expand(gy)
        nx, ny = self.needs_input_grad
        gx = (self.backend.sigmoid_forward(x) - y) * g if nx else None
        gt = -x * g if ny else None
        return gx, gt


class FocalLoss(_Loss):
    """Multiclass focal loss (Lin et al. 2017; Table 3.4): -alpha_t (1 - p_t)^gamma log p_t
    with p = softmax(logits), t the target class and alpha_t the target's weight.

    With l = log p_t (log-softmax, finite for huge logits) and u = 1 - p_t
    (computed as -expm1(l) for accuracy near p_t = 1):
    dL/dl = -alpha_t (u^gamma - gamma u^(gamma-1) p_t l), and dl/dz = onehot - p.
    """
    fwd_flops_per_elem = 8
    bwd_flops_per_elem = 4

    def forward(self, logits, target, alpha=None, gamma=2.0, reduction="mean"):
        xp = self.backend.xp
        n = logits.shape[0]
        rows = xp.arange(n)
        z = logits - logits.max(axis=1, keepdims=True)
        p = xp.exp(z)
        s = p.sum(axis=1, keepdims=True)
        p /= s
        lp = z[rows, target] - xp.log(s[:, 0])
        u = -xp.expm1(lp)
        w = u ** gamma
        a_t = None if alpha is None else alpha[target].astype(lp.dtype, copy=False)
        loss = -w * lp
        if a_t is not None:
            loss *= a_t
        self.gamma = gamma
        self.save(p, target, lp, u, a_t)
        return self._reduce(loss, reduction)

    def backward(self, gy):
        xp = self.backend.xp
        p, target, lp, u, a_t = self.saved
        g = self.gamma
        pt = xp.exp(lp)
        if g == 0:
            dl = -xp.ones_like(lp)
        else:
            # u^(g-1) p_t l -> -u^g as u -> 0, so the term vanishes where u == 0
            safe_u = xp.where(u > 0, u, 1)
            second = xp.where(u > 0, g * safe_u ** (g - 1) * pt * lp, 0)
            dl = -(u ** g - second)
        if a_t is not None:
            dl *= a_t
        dl *= self._expand(gy)
        gz = -p * dl[:, None]
        gz[xp.arange(p.shape[0]), target] += dl
        return gz, None
