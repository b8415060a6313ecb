"""Stochastic gradient descent with momentum, dampening, Nesterov and L2 decay."""
from __future__ import annotations

from .optimizer import Optimizer, _check_number


class SGD(Optimizer):
    """PyTorch's SGD, step for step (the chapter's mini-batch SGD plus momentum):

        d = g + wd*w
        b = d on a parameter's first momentum step, else b = mu*b + (1 - dampening)*d
        d = d + mu*b (Nesterov) or d = b
        w = w - lr*d

    One fused ``backend.sgd_update`` per group (with the step's non-finite check in the
    same kernel call on the JIT CPU backend: ``backend.checked_update``). State: the
    momentum buffer (4 bytes per float32 parameter) when ``momentum != 0``, nothing
    otherwise.
    """

    graph_safe = True  # lr and momentum are the same arguments at every step

    def __init__(self, params, lr, momentum=0.0, dampening=0.0, nesterov=False,
                 weight_decay=0.0, skip_nonfinite=False, check_finite=True):
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening,
                                      nesterov=nesterov, weight_decay=weight_decay),
                         skip_nonfinite=skip_nonfinite, check_finite=check_finite)

    def _validate(self, group, where):
        _check_number("learning rate lr", group["lr"], where=where)
        _check_number("momentum", group["momentum"], where=where)
        _check_number("dampening", group["dampening"], where=where)
        _check_number("weight_decay", group["weight_decay"], where=where)
        if group["nesterov"] and (group["momentum"] <= 0 or group["dampening"] != 0):
            raise ValueError(f"Nesterov momentum needs momentum > 0 and dampening = 0, got "
                             f"momentum={group['momentum']}, dampening={group['dampening']}{where}")

    def _state_names(self, group):
        return ("momentum_buffer",) if group["momentum"] else ()

    def _run_key(self, arena, group):
        # whether a momentum buffer is initialised; without momentum nothing differs
        return arena.counts > 0 if group["momentum"] else None

    def _args(self, arena, group, i0, i1):
        s, e = arena.slice(i0, i1)
        momentum = float(group["momentum"])
        buf = arena.state["momentum_buffer"][s:e] if momentum else None
        return ((arena.data[s:e], arena.grad[s:e], buf, float(group["lr"])),
                dict(momentum=momentum, dampening=float(group["dampening"]),
                     nesterov=bool(group["nesterov"]), weight_decay=float(group["weight_decay"]),
                     first_step=bool(momentum) and arena.counts[i0] == 0))

    def _update(self, arena, group, i0, i1, check=False):
        args, kwargs = self._args(arena, group, i0, i1)
        be = arena.backend
        if check:
            if not be.checked_update("sgd", *args, **kwargs):
                return False
        else:
            be.sgd_update(*args, **kwargs)
        if kwargs["momentum"]:
            arena.counts[i0:i1] += 1
        return True

    def _update_checked(self, arena, group, i0, i1):
        return self._update(arena, group, i0, i1, check=True)

    def _plan_key(self, arena, group, runs):
        if not group["momentum"]:
            return None
        counts = arena.counts
        return tuple(bool(counts[i0]) for i0, _ in runs)

    def _bound_update(self, arena, group, i0, i1, check=False):
        args, kwargs = self._args(arena, group, i0, i1)
        fn = arena.backend.bind_sgd_update(*args, check=check, **kwargs)
        if fn is None or not kwargs["momentum"]:
            return fn
        counts = arena.counts

        def update():
            if not fn():
                return False
            counts[i0:i1] += 1
            return True
        return update
