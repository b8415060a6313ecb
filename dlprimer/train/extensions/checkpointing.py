"""Training checkpoints: every N steps, at each epoch's end, and on Ctrl-C."""
from __future__ import annotations

import os

from ..checkpoints import CheckpointError, CheckpointManager
from ..trainer import PRIORITY_SAVE, Extension


class Checkpoints(Extension):
    """Save a training checkpoint (:mod:`dlprimer.train.checkpoints`) every ``every``
    steps (when given), after every epoch, and when the run is interrupted at a step
    boundary (Ctrl-C); keep the newest ``keep`` of this run.

    Runs after every other extension (:data:`PRIORITY_SAVE`), so a checkpoint holds
    the step's log records, scheduler step and early-stopping decision.
    """

    priority = PRIORITY_SAVE

    def __init__(self, directory, every: int | None = None, keep: int = 3):
        if every is not None and (not isinstance(every, int) or isinstance(every, bool)
                                  or every < 1):
            raise ValueError(f"checkpoint_every must be a positive integer, got {every!r}")
        self.directory, self.every = os.fspath(directory), every
        self.manager = CheckpointManager(self.directory, keep=keep)
        self.manager.clean_temporaries()

    def resolve_resume(self, resume, force: bool = False) -> str | None:
        """The checkpoint to resume from: ``resume`` itself when it is a path, the newest
        good one here when it is True. Refuses (CheckpointError) to resume from nothing, or
        to start a fresh run over another run's checkpoints, unless ``force``."""
        if isinstance(resume, (str, os.PathLike)):
            self.manager.adopt(os.fspath(resume))
            return os.fspath(resume)
        if resume:
            path = self.manager.latest()
            if path is None and not force:
                raise CheckpointError(self._nothing_to_resume())
            if path is not None:
                self.manager.adopt(path)
            return path
        others = self.manager.all_checkpoints()
        if others and not force:
            raise CheckpointError(
                f"{self.directory} already holds checkpoints of another run (newest "
                f"{os.path.basename(others[-1][2])}): resume it (resume=True, --resume) or "
                "start a new run beside it (force=True, --force)")
        return None

    def _nothing_to_resume(self) -> str:
        moved = self.manager.moved_aside
        if moved:
            return (f"nothing usable to resume in {self.directory}: all {len(moved)} "
                    "checkpoint(s) there are corrupt (moved aside as *.corrupt); start a new "
                    "run with force=True (--force)")
        return (f"nothing to resume: {self.directory} holds no checkpoint; start a new run "
                "without resume=True (--resume), or pass force=True (--force)")

    def save(self, trainer) -> str:
        path = self.manager.save(trainer.step, model=trainer.model, optimizer=trainer.optimizer,
                                 scheduler=trainer.scheduler, loader=trainer.train_loader,
                                 extra=trainer.run_state())
        trainer.result.checkpoint, trainer.result.checkpoint_step = path, trainer.step
        return path

    def on_step_end(self, trainer, rec):
        if self.every and trainer.step % self.every == 0:
            self.save(trainer)

    def on_epoch_end(self, trainer, rec):
        self.save(trainer)

    def on_interrupt(self, trainer):
        if trainer.at_boundary:
            self.save(trainer)
