"""Optimizers over flat parameter arenas, learning-rate schedules, the linear scaling rule.

``SGD``, ``Adam``, ``AdamW`` (PyTorch's updates, step for step), ``LAMB`` and ``LARS``
(large-batch, per-layer trust ratios); ``lr_scheduler``; ``scale_lr``.
"""
from __future__ import annotations

from . import lr_scheduler
from .adam import Adam, AdamW
from .lamb import LAMB
from .lars import LARS
from .lr_scheduler import scale_lr
from .optimizer import Arena, NonFiniteGradientError, Optimizer
from .sgd import SGD

__all__ = ["Optimizer", "Arena", "NonFiniteGradientError", "SGD", "Adam", "AdamW", "LAMB",
           "LARS", "lr_scheduler", "scale_lr"]
