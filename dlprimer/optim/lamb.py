"""LAMB: layer-wise adaptive moments for large-batch training."""
from __future__ import annotations

from .adam import _Moments


class LAMB(_Moments):
    """LAMB (You et al. 2019, "Large Batch Optimization for Deep Learning", Alg. 2):

        m, v as in Adam;  r = (m/(1-b1^t)) / (sqrt(v/(1-b2^t)) + eps)
        u = r + wd*w;     w = w - lr * (||w|| / ||u||) * u

    with the trust ratio ||w||/||u|| taken per parameter (1 where either norm is 0).
    It lets each layer move in proportion to its own scale, which is what keeps very
    large batches (and hence large learning rates) stable. State: m and v.
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.0,
                 skip_nonfinite=False, check_finite=True):
        super().__init__(params, lr, betas, eps, weight_decay, skip_nonfinite, check_finite)

    def _update(self, arena, group, i0, i1):
        s, e = arena.slice(i0, i1)
        arena.counts[i0:i1] += 1
        b1, b2 = group["betas"]
        arena.backend.lamb_update(
            arena.data[s:e], arena.grad[s:e], arena.state["exp_avg"][s:e],
            arena.state["exp_avg_sq"][s:e], arena.offsets[i0:i1 + 1] - s, float(group["lr"]),
            float(b1), float(b2), float(group["eps"]), float(group["weight_decay"]),
            int(arena.counts[i0]))
