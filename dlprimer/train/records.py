"""What the training loop reports: the metric names, :class:`FitResult`, the warning and
error types, and the helpers every extension shares (evaluation, the learning rate,
parameter and module names)."""
from __future__ import annotations

from dataclasses import dataclass, field

from ..autograd import no_grad

#: Metric names every step record carries (per-layer ones add ``/<layer>``).
STEP_METRICS = ("loss", "lr", "grad_norm", "update_ratio", "dead_relu", "time_forward",
                "time_backward", "time_optimizer", "time_step", "samples_per_s")
#: Metric names every epoch record carries (val_* only with a validation loader).
EPOCH_METRICS = ("train_loss", "train_acc", "val_loss", "val_acc", "time_epoch", "mem_peak",
                 "mem_state")


class TrainingWarning(RuntimeWarning):
    """A training pathology the chapter describes."""


class VanishingGradientWarning(TrainingWarning):
    pass


class ExplodingGradientWarning(TrainingWarning):
    pass


class DyingReLUWarning(TrainingWarning):
    pass


class TrainingDiverged(RuntimeError):
    """The loss or the gradients became NaN/inf; ``report`` says where it started."""

    def __init__(self, message, step=None, report=None):
        super().__init__(message)
        self.step = step
        self.report = report or {}


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped training; the message says at which step and which checkpoint
    (``checkpoint``, holding ``checkpoint_step``) a resume starts from."""

    def __init__(self, message, step=None, checkpoint=None, checkpoint_step=None):
        super().__init__(message)
        self.step, self.checkpoint, self.checkpoint_step = step, checkpoint, checkpoint_step


@dataclass
class FitResult:
    """What :func:`fit` returns: the records it logged and how it ended."""
    steps: list = field(default_factory=list)
    epochs: list = field(default_factory=list)
    warnings: list = field(default_factory=list)
    step: int = 0
    stopped_early: bool = False
    resumed_from: str | None = None
    best_val_loss: float | None = None
    log_path: str | None = None
    checkpoint: str | None = None
    checkpoint_step: int | None = None
    already_complete: bool = False

    @property
    def final(self) -> dict:
        return self.epochs[-1] if self.epochs else {}


def layer_of(param_name: str) -> str:
    return param_name.rsplit(".", 1)[0] if "." in param_name else param_name


def named_params(model):
    if callable(getattr(model, "named_parameters", None)):
        return [(n, p) for n, p in model.named_parameters()]
    return [(str(i), p) for i, p in enumerate(model.parameters())]


def named_modules(model):
    """(dotted name, module, is_leaf) for every module below ``model`` (depth first)."""
    out = []
    stack = [("", model)]
    while stack:
        prefix, m = stack.pop()
        if callable(getattr(m, "named_children", None)):
            kids = list(m.named_children())
        elif callable(getattr(m, "children", None)):
            kids = [(str(i), c) for i, c in enumerate(m.children())]
        else:
            kids = []
        out.append((prefix or "(model)", m, not kids))
        for n, c in reversed(kids):
            stack.append((f"{prefix}.{n}" if prefix else n, c))
    return out


def lr_of(optimizer):
    groups = getattr(optimizer, "param_groups", None)
    if groups:
        return float(groups[0]["lr"])
    return float(getattr(optimizer, "lr", float("nan")))


def default_loss(out, target):
    """Cross-entropy for integer targets, mean squared error for float targets."""
    from ..nn import functional as F
    if target.dtype.kind in "iu":
        return F.cross_entropy(out, target)
    return F.mse_loss(out, target)


def evaluate(model, loader, loss_fn=None) -> dict:
    """Mean loss (and accuracy for integer targets) of ``model`` over ``loader``, in
    eval mode without a graph. The loader's position is restored afterwards."""
    loss_fn = loss_fn or default_loss
    was_training = getattr(model, "training", True)
    if callable(getattr(model, "eval", None)):
        model.eval()
    state = loader.state_dict() if callable(getattr(loader, "state_dict", None)) else None
    if state is not None:
        loader.set_epoch(0)
    total, n, correct, classify = 0.0, 0, 0, False
    try:
        with no_grad():
            for x, y in loader:
                out = model(x)
                loss = loss_fn(out, y)
                b = len(y)
                total += float(loss.item()) * b
                n += b
                if y.dtype.kind in "iu" and out.ndim == 2:
                    classify = True
                    correct += int((out.argmax(axis=-1) == y).sum().item())
    finally:
        if state is not None:
            loader.load_state_dict(state)
        if was_training and callable(getattr(model, "train", None)):
            model.train()
    res = {"val_loss": total / max(n, 1)}
    if classify:
        res["val_acc"] = correct / max(n, 1)
    return res
