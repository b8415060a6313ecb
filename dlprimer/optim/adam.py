"""Adam and AdamW: adaptive moments over the flat arena."""
from __future__ import annotations

from .optimizer import Optimizer, _check_number


def _check_betas(betas, where):
    try:
        b1, b2 = betas
    except (TypeError, ValueError):
        raise ValueError(f"invalid betas: {betas!r} (need a pair (beta1, beta2)){where}") from None
    _check_number("beta1 (betas[0])", b1, 0.0, 1.0, hi_open=True, where=where)
    _check_number("beta2 (betas[1])", b2, 0.0, 1.0, hi_open=True, where=where)
    return float(b1), float(b2)


class _Moments(Optimizer):
    """What Adam, AdamW and LAMB share: hyper-parameters, their checks, and the two
    moment arrays m ("exp_avg") and v ("exp_avg_sq") of the arena."""

    def __init__(self, params, lr, betas, eps, weight_decay, skip_nonfinite, check_finite):
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps,
                                      weight_decay=weight_decay),
                         skip_nonfinite=skip_nonfinite, check_finite=check_finite)

    def _validate(self, group, where):
        _check_number("learning rate lr", group["lr"], where=where)
        _check_betas(group["betas"], where)
        _check_number("eps", group["eps"], where=where)
        _check_number("weight_decay", group["weight_decay"], where=where)

    def _state_names(self, group):
        return ("exp_avg", "exp_avg_sq")


class Adam(_Moments):
    """Adam (Kingma & Ba 2015) as PyTorch runs it, step for step: with L2 decay the
    gradient becomes g + wd*w; then

        m = b1*m + (1-b1)*g,   v = b2*v + (1-b2)*g^2
        w = w - lr/(1-b1^t) * m / (sqrt(v)/sqrt(1-b2^t) + eps)

    ``t`` counts each parameter's own updates. State: m and v (8 bytes per float32
    parameter, the chapter's "4 for optimizer state" per moment). One fused
    ``backend.adam_update`` per group (with the step's non-finite check in the same
    kernel call on the JIT CPU backend: ``backend.checked_update``).
    """

    _decoupled = False

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 skip_nonfinite=False, check_finite=True):
        super().__init__(params, lr, betas, eps, weight_decay, skip_nonfinite, check_finite)

    def _update(self, arena, group, i0, i1, check=False):
        s, e = arena.slice(i0, i1)
        b1, b2 = group["betas"]
        args = (arena.data[s:e], arena.grad[s:e], arena.state["exp_avg"][s:e],
                arena.state["exp_avg_sq"][s:e], float(group["lr"]), float(b1), float(b2),
                float(group["eps"]), float(group["weight_decay"]), int(arena.counts[i0]) + 1)
        be = arena.backend
        if check:
            if not be.checked_update("adam", *args, decoupled=self._decoupled):
                return False
        else:
            be.adam_update(*args, decoupled=self._decoupled)
        arena.counts[i0:i1] += 1
        return True

    def _update_checked(self, arena, group, i0, i1):
        return self._update(arena, group, i0, i1, check=True)

    def _bound_update(self, arena, group, i0, i1, check=False):
        s, e = arena.slice(i0, i1)
        fn = arena.backend.bind_adam_update(
            arena.data[s:e], arena.grad[s:e], arena.state["exp_avg"][s:e],
            arena.state["exp_avg_sq"][s:e], decoupled=self._decoupled)
        if fn is None:
            return None
        b1, b2 = group["betas"]
        hyper = (float(group["lr"]), float(b1), float(b2), float(group["eps"]),
                 float(group["weight_decay"]))
        counts = arena.counts

        def update():    # the step count t changes at every step: read when called
            if not fn(*hyper, int(counts[i0]) + 1, check):
                return False
            counts[i0:i1] += 1
            return True
        return update


class AdamW(Adam):
    """AdamW (Loshchilov & Hutter 2019): Adam with decoupled weight decay,
    w = w * (1 - lr*wd) before the Adam step, instead of adding wd*w to the gradient."""

    _decoupled = True

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2,
                 skip_nonfinite=False, check_finite=True):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                         skip_nonfinite=skip_nonfinite, check_finite=check_finite)
