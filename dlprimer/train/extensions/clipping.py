"""Gradient clipping by the global norm, before the optimizer step."""
from __future__ import annotations

from ..trainer import PRIORITY_ACT, Extension


class GradientClipping(Extension):
    """Scale all gradients so their global 2-norm is at most ``max_norm``
    (:func:`dlprimer.nn.utils.clip_grad_norm_`, PyTorch's rule)."""

    priority = PRIORITY_ACT

    def __init__(self, max_norm: float):
        if not (max_norm > 0):
            raise ValueError(f"clip must be a positive max norm, got {max_norm!r}")
        self.max_norm = max_norm

    def on_backward_end(self, trainer, rec):
        from ...nn.utils import clip_grad_norm_
        clip_grad_norm_(trainer.params, self.max_norm)
