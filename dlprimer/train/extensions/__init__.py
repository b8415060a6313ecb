"""The training loop's extensions, one concern per module (see :mod:`..trainer`)."""
from __future__ import annotations

from ..trainer import PRIORITY_ACT, PRIORITY_RECORD, PRIORITY_SAVE, Extension
from .checkpointing import Checkpoints
from .clipping import GradientClipping
from .early_stopping import EarlyStopping
from .grad_diagnostics import GradientDiagnostics
from .lr_schedule import LRSchedule
from .memory import StepMemory
from .metric_log import MetricLog
from .progress import ProgressBar
from .step_timing import StepTiming

__all__ = ["Extension", "PRIORITY_ACT", "PRIORITY_RECORD", "PRIORITY_SAVE", "Checkpoints",
           "GradientClipping", "EarlyStopping", "GradientDiagnostics", "LRSchedule",
           "StepMemory", "MetricLog", "ProgressBar", "StepTiming"]
