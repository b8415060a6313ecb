"""Early stopping on the validation loss, optionally restoring the best epoch's weights."""
from __future__ import annotations

import numpy as np

from ...tensor import Tensor
from ..trainer import PRIORITY_ACT, Extension


def early_stopping_config(early_stopping) -> dict | None:
    """``fit``'s ``early_stopping`` argument as {"patience", "min_delta"}, or None."""
    if early_stopping is None or early_stopping is False:
        return None
    if isinstance(early_stopping, bool):
        return {"patience": 5, "min_delta": 0.0}
    if isinstance(early_stopping, int):
        if early_stopping < 1:
            raise ValueError(f"early_stopping patience must be >= 1, got {early_stopping}")
        return {"patience": early_stopping, "min_delta": 0.0}
    if isinstance(early_stopping, dict):
        cfg = {"patience": 5, "min_delta": 0.0, **early_stopping}
        unknown = set(cfg) - {"patience", "min_delta"}
        if unknown:
            raise ValueError(f"early_stopping: unknown keys {sorted(unknown)} "
                             "(valid: patience, min_delta)")
        return cfg
    raise TypeError(f"early_stopping must be None, an int patience or a dict, got "
                    f"{type(early_stopping).__name__}")


def copy_state(model) -> dict:
    return {k: (v.data.copy() if isinstance(v, Tensor) else np.copy(v))
            for k, v in model.state_dict().items()}


class EarlyStopping(Extension):
    """Stop when the validation loss has not improved by ``min_delta`` for ``patience``
    complete epochs; ``restore_best`` reloads the best epoch's weights at the end (they
    are kept in the training checkpoint, so this survives a resume)."""

    priority = PRIORITY_ACT

    def __init__(self, patience: int = 5, min_delta: float = 0.0, restore_best: bool = False):
        self.patience, self.min_delta, self.restore_best = patience, min_delta, restore_best
        self.best, self.bad_epochs, self.best_state = None, 0, None

    def on_run_start(self, trainer):
        if trainer.val_loader is None:
            raise ValueError("early_stopping watches the validation loss: pass val_loader")

    def on_evaluate_end(self, trainer, rec):
        if rec["partial"]:
            return
        v = rec["val_loss"]
        if self.best is None or v < self.best - self.min_delta:
            self.best, self.bad_epochs = v, 0
            if self.restore_best:
                self.best_state = copy_state(trainer.model)
            return
        self.bad_epochs += 1
        if self.bad_epochs >= self.patience:
            trainer.result.stopped_early = True
            rec["stopped_early"] = True
            trainer.request_stop()

    def state_dict(self) -> dict:
        state = {"best": self.best, "bad_epochs": self.bad_epochs}
        if self.restore_best and self.best_state is not None:
            state["best_state"] = self.best_state
        return state

    def load_state_dict(self, run):
        self.best = run.get("best")
        self.bad_epochs = int(run.get("bad_epochs", 0))
        self.best_state = run.get("best_state") if self.restore_best else None

    def on_run_end(self, trainer):
        trainer.result.best_val_loss = self.best
        if trainer.completed and self.restore_best and self.best_state is not None:
            trainer.model.load_state_dict(self.best_state)
