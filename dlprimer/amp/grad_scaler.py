"""Dynamic loss scaling with PyTorch's ``GradScaler`` semantics and defaults."""
from __future__ import annotations

import numbers


def _positive(v, name, above_one=None):
    if not isinstance(v, numbers.Real) or isinstance(v, bool) or not v > 0 or v != v:
        raise ValueError(f"GradScaler: {name} must be a positive number, got {v!r}")
    if above_one is True and not v > 1:
        raise ValueError(f"GradScaler: {name} must be > 1, got {v!r}")
    if above_one is False and not v < 1:
        raise ValueError(f"GradScaler: {name} must be < 1, got {v!r}")
    return float(v)


class GradScaler:
    """Scale the loss by S, unscale gradients by 1/S, skip steps with inf/NaN gradients.

    ``scale(loss)`` returns ``loss * S``; ``unscale_(opt)`` divides the gradients of
    ``opt``'s parameters by S in place and records whether any is inf/NaN;
    ``step(opt)`` unscales (unless done) and calls ``opt.step()`` only if every
    gradient was finite; ``update()`` then halves S (``backoff_factor``) after a
    skipped step, or multiplies it by ``growth_factor`` after ``growth_interval``
    finite steps in a row. Defaults are PyTorch's: 65536, 2, 0.5, 2000.
    """

    def __init__(self, init_scale=65536.0, growth_factor=2.0, backoff_factor=0.5,
                 growth_interval=2000, enabled: bool = True):
        self._scale = _positive(init_scale, "init_scale")
        self.growth_factor = _positive(growth_factor, "growth_factor", above_one=True)
        self.backoff_factor = _positive(backoff_factor, "backoff_factor", above_one=False)
        if not isinstance(growth_interval, numbers.Integral) or growth_interval < 1:
            raise ValueError(f"GradScaler: growth_interval must be a positive int, got "
                             f"{growth_interval!r}")
        self.growth_interval = int(growth_interval)
        self.enabled = bool(enabled)
        self._growth_tracker = 0
        self._per_opt: dict = {}   # id(optimizer) -> {"unscaled": bool, "found_inf": bool, "stepped": bool}

    def get_scale(self) -> float:
        """The current scale S (1.0 when disabled)."""
        return self._scale if self.enabled else 1.0

    def is_enabled(self) -> bool:
        return self.enabled

    def scale(self, outputs):
        """``outputs * S`` (a Tensor, or a list/tuple of them)."""
        if not self.enabled:
            return outputs
        if isinstance(outputs, (list, tuple)):
            return type(outputs)(self.scale(o) for o in outputs)
        return outputs * self._scale

    def _opt_state(self, optimizer):
        return self._per_opt.setdefault(id(optimizer), {"unscaled": False, "found_inf": False,
                                                        "stepped": False})

    def unscale_(self, optimizer):
        """Divide every gradient of ``optimizer`` by S in place; note inf/NaN."""
        if not self.enabled:
            return
        st = self._opt_state(optimizer)
        if st["unscaled"]:
            raise RuntimeError("GradScaler.unscale_() has already been called on this optimizer "
                               "since the last update()")
        if st["stepped"]:
            raise RuntimeError("GradScaler.unscale_() is being called after step(); call update() first")
        inv = 1.0 / self._scale
        found = False
        for group in optimizer.param_groups:
            for p in group["params"]:
                g = p.grad
                if g is None:
                    continue
                g.data *= inv
                if not found:
                    found = not p.backend.all_finite(g.data.reshape(-1))
        st["unscaled"], st["found_inf"] = True, found

    def step(self, optimizer):
        """Unscale (if not yet) and step ``optimizer`` unless a gradient was inf/NaN.
        Returns what ``optimizer.step()`` returned, or None for a skipped step."""
        if not self.enabled:
            return optimizer.step()
        st = self._opt_state(optimizer)
        if st["stepped"]:
            raise RuntimeError("GradScaler.step() has already been called since the last update()")
        just_checked = not st["unscaled"]
        if just_checked:
            self.unscale_(optimizer)
        st["stepped"] = True
        if st["found_inf"]:
            return None
        if just_checked and hasattr(optimizer, "_step"):
            # the gradients were checked a moment ago, after unscaling, with nothing in
            # between: the optimizer need not read them all once more for its own check
            return optimizer._step(check=False)
        return optimizer.step()

    def update(self, new_scale=None):
        """Back off after a skipped step, grow after ``growth_interval`` good ones;
        or set S to ``new_scale``."""
        if not self.enabled:
            return
        if new_scale is not None:
            self._scale = _positive(float(new_scale), "new_scale")
        else:
            if not self._per_opt:
                raise RuntimeError("GradScaler.update(): no unscale_()/step() was recorded since "
                                   "the last update()")
            if any(st["found_inf"] for st in self._per_opt.values()):
                self._scale *= self.backoff_factor
                self._growth_tracker = 0
            else:
                self._growth_tracker += 1
                if self._growth_tracker == self.growth_interval:
                    self._scale *= self.growth_factor
                    self._growth_tracker = 0
        self._per_opt = {}

    def found_inf(self, optimizer) -> bool:
        """Whether the last unscale_ of ``optimizer`` saw an inf/NaN gradient."""
        return self._opt_state(optimizer)["found_inf"]

    def state_dict(self) -> dict:
        return {"scale": self._scale, "growth_factor": self.growth_factor,
                "backoff_factor": self.backoff_factor, "growth_interval": self.growth_interval,
                "_growth_tracker": self._growth_tracker}

    def load_state_dict(self, state: dict):
        self._scale = float(state["scale"])
        self.growth_factor = float(state["growth_factor"])
        self.backoff_factor = float(state["backoff_factor"])
        self.growth_interval = int(state["growth_interval"])
        self._growth_tracker = int(state["_growth_tracker"])
