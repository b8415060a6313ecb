"""Training: the loop as a :class:`Trainer` with extensions, :func:`fit` that builds one,
and training checkpoints (:mod:`dlprimer.train.checkpoints`; not to be confused with
gradient checkpointing, :mod:`dlprimer.checkpoint`).

``from dlprimer.train import fit, Trainer, Extension``; the extensions themselves are
in :mod:`dlprimer.train.extensions`, one module each.
"""
from __future__ import annotations

from . import checkpoints, extensions
from .checkpoints import CheckpointError, CheckpointManager, CheckpointWarning
from .diagnostics import diagnose_nonfinite
from .fitting import fit
from .records import (EPOCH_METRICS, STEP_METRICS, DyingReLUWarning, ExplodingGradientWarning,
                      FitResult, TrainingDiverged, TrainingInterrupted, TrainingWarning, VanishingGradientWarning,
                      default_loss, evaluate)
from .trainer import PRIORITY_ACT, PRIORITY_RECORD, PRIORITY_SAVE, Extension, Trainer

__all__ = ["fit", "Trainer", "Extension", "extensions", "checkpoints", "FitResult", "evaluate",
           "default_loss", "diagnose_nonfinite", "TrainingDiverged", "TrainingInterrupted", "TrainingWarning",
           "VanishingGradientWarning", "ExplodingGradientWarning", "DyingReLUWarning",
           "STEP_METRICS", "EPOCH_METRICS", "CheckpointManager", "CheckpointError",
           "CheckpointWarning", "PRIORITY_ACT", "PRIORITY_RECORD", "PRIORITY_SAVE"]
