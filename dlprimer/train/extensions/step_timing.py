"""Step timing: forward, backward and optimizer time of every step, and throughput."""
from __future__ import annotations

from ..trainer import PRIORITY_ACT, Extension


class StepTiming(Extension):
    """Put the step's phase times (the backend's timers: CUDA events on the GPU) in its
    record, and the epoch's training time (steps slowed by a memory meter excluded) in
    the epoch record as ``time_train``."""

    priority = PRIORITY_ACT

    def on_step_end(self, trainer, rec):
        t = trainer.times
        opt = t["zero_grad"] + t["optimizer"]
        step = t["forward"] + t["backward"] + opt
        b = trainer.step_samples or len(trainer.batch[1])
        rec.update(time_forward=t["forward"], time_backward=t["backward"], time_optimizer=opt,
                   time_step=step, samples_per_s=b / step if step > 0 else float("nan"))
        if not trainer.timing_disturbed:
            trainer.acc["time"] += step

    def on_evaluate_end(self, trainer, rec):
        rec["time_train"] = trainer.acc["time"]
