"""LARS: layer-wise adaptive rate scaling for large-batch SGD."""
from __future__ import annotations

from .optimizer import Optimizer, _check_number


class LARS(Optimizer):
    """LARS (You et al. 2017, "Large Batch Training of Convolutional Networks", Alg. 1),
    per parameter (layer):

        local_lr = tc * ||w|| / (||g|| + wd*||w|| + eps)   (1 where ||w|| or ||g|| is 0)
        b = momentum*b + local_lr * (g + wd*w);   w = w - lr*b

    The global ``lr`` multiplies outside the buffer (as PyTorch's SGD does), so
    schedules act at once. State: the momentum buffer (4 bytes per float32
    parameter; none when ``momentum == 0``).
    """

    graph_safe = True  # lr and momentum are the same arguments at every step

    def __init__(self, params, lr, momentum=0.9, weight_decay=0.0, trust_coefficient=0.001,
                 eps=1e-9, skip_nonfinite=False, check_finite=True):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay,
                                      trust_coefficient=trust_coefficient, eps=eps),
                         skip_nonfinite=skip_nonfinite, check_finite=check_finite)

    def _validate(self, group, where):
        _check_number("learning rate lr", group["lr"], where=where)
        _check_number("momentum", group["momentum"], where=where)
        _check_number("weight_decay", group["weight_decay"], where=where)
        _check_number("trust_coefficient", group["trust_coefficient"], where=where)
        _check_number("eps", group["eps"], where=where)

    def _state_names(self, group):
        return ("momentum_buffer",) if group["momentum"] else ()

    def _run_key(self, arena, group):
        return None

    def _update(self, arena, group, i0, i1):
        s, e = arena.slice(i0, i1)
        arena.counts[i0:i1] += 1
        momentum = float(group["momentum"])
        buf = arena.state["momentum_buffer"][s:e] if momentum else None
        arena.backend.lars_update(
            arena.data[s:e], arena.grad[s:e], buf, arena.offsets[i0:i1 + 1] - s,
            float(group["lr"]), momentum, float(group["weight_decay"]),
            float(group["trust_coefficient"]), eps=float(group["eps"]))
