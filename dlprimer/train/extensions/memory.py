"""Step memory: the peak bytes a step allocates, and the bytes held between steps."""
from __future__ import annotations

from ...tensor import Tensor
from ..trainer import PRIORITY_ACT, Extension


def state_bytes(params, optimizer) -> int:
    """Bytes held between steps: parameters, gradients and the optimizer's state."""
    n = sum(p.data.nbytes for p in params)
    n += sum(p.grad.data.nbytes for p in params if p.grad is not None)
    seen = set()

    def walk(o, depth=0):
        nonlocal n
        if depth > 4:
            return
        if isinstance(o, Tensor):
            o = o.data
        if hasattr(o, "nbytes") and hasattr(o, "shape") and id(o) not in seen:
            seen.add(id(o))
            n += int(o.nbytes)
        elif isinstance(o, dict):
            for v in o.values():
                walk(v, depth + 1)
        elif isinstance(o, (list, tuple)):
            for v in o:
                walk(v, depth + 1)
    state = getattr(optimizer, "state", None)
    if state is not None:
        walk(state)
    return int(n)


def _steps_left(trainer) -> int:
    """Steps this run has left (2 when the loader has no length: at least one more)."""
    try:
        return trainer.total_steps - trainer.step
    except TypeError:
        return 2


class StepMemory(Extension):
    """Meter the peak memory of every ``every``-th step (and each epoch's first) with
    the backend's meter (default: every step where metering is free, CUDA; every 50th
    on the CPU, whose tracemalloc meter slows the step: those steps' times are left
    out of ``time_train``).

    Where the meter would count the backend's warm-up (``meter.sees_warm_up``: the JIT's
    compiles and cache loads on the CPU, Python objects that tracemalloc sees), the run's
    first step is not metered, and left out of ``time_train`` as warm-up; the next step is
    the first metered one. Under tracemalloc a compile also ran 2-3x slower.
    """

    priority = PRIORITY_ACT + 10  # reads the peak before the timing extension runs

    def __init__(self, every: int | None = None):
        self.every = every
        self.first = True
        self.metered = False
        self.warm_up = False
        self.base = 0

    def on_run_start(self, trainer):
        self.meter = trainer.backend.memory
        if self.every is None:
            self.every = 1 if self.meter.active else 50
        self.warm_up = getattr(self.meter, "sees_warm_up", False) and _steps_left(trainer) > 1

    def on_epoch_start(self, trainer):
        self.first = True

    def on_step_start(self, trainer):
        if self.warm_up:    # self.first stays set: the next step is metered
            return
        self.metered = self.first or trainer.step % self.every == 0
        self.first = False
        if self.metered:
            self.meter.start()
            self.base = self.meter.current()
            self.meter.reset_peak()

    def on_step_end(self, trainer, rec):
        if self.warm_up:
            self.warm_up = False
            trainer.timing_disturbed = True
            return
        if not self.metered:
            return
        peak = int(self.meter.peak() - self.base)
        self.meter.stop()
        self.metered = False
        rec["mem_peak"] = peak
        rec["metered"] = not self.meter.active or self.meter.slows_steps
        trainer.timing_disturbed = self.meter.slows_steps
        trainer.acc["mem_peak"] = max(trainer.acc["mem_peak"], peak)

    def on_evaluate_end(self, trainer, rec):
        if trainer.acc["mem_peak"]:
            rec["mem_peak"] = trainer.acc["mem_peak"]
        rec["mem_state"] = state_bytes(trainer.params, trainer.optimizer)

    def on_run_end(self, trainer):
        if self.metered:
            self.meter.stop()
            self.metered = False
