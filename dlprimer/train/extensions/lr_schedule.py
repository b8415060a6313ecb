"""Learning-rate scheduling: step a scheduler after each optimizer step or each epoch."""
from __future__ import annotations

from ..trainer import PRIORITY_ACT, Extension


class LRSchedule(Extension):
    """Step ``scheduler`` after every optimizer step (``interval="step"``) or every
    complete epoch ("epoch"); ReduceLROnPlateau steps per epoch on the validation loss.
    The training checkpoint holds the scheduler (``trainer.scheduler``)."""

    priority = PRIORITY_ACT

    def __init__(self, scheduler, interval: str = "step"):
        if interval not in ("step", "epoch"):
            raise ValueError(f"scheduler_interval must be 'step' or 'epoch', got {interval!r}")
        self.scheduler, self.interval = scheduler, interval
        self.plateau = type(scheduler).__name__ == "ReduceLROnPlateau"

    def on_run_start(self, trainer):
        if self.plateau and trainer.val_loader is None:
            raise ValueError("ReduceLROnPlateau steps on the validation loss: pass val_loader")

    def on_step_end(self, trainer, rec):
        if self.interval == "step" and not self.plateau:
            self.scheduler.step()

    def on_evaluate_end(self, trainer, rec):
        if rec["partial"]:
            return
        if self.plateau:
            self.scheduler.step(rec["val_loss"])
        elif self.interval == "epoch":
            self.scheduler.step()
