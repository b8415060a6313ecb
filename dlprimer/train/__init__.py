"""The training loop (:class:`Trainer`, :func:`fit`) and training checkpoints."""
from __future__ import annotations

from . import checkpoints
from .loop import *  # noqa: F401,F403
from .loop import (EPOCH_METRICS, STEP_METRICS, DyingReLUWarning, ExplodingGradientWarning,
                   FitResult, TrainingDiverged, TrainingWarning, VanishingGradientWarning,
                   default_loss, diagnose_nonfinite, evaluate, fit)
