"""Learning-rate schedules: the chapter's warm-up + cosine, step decay, one-cycle and
reduce-on-plateau, with PyTorch's semantics and numbers.

A scheduler writes ``group["lr"]`` of its optimizer's param groups; the optimizer
reads it at its next step. Construction sets the step-0 learning rate (and stores
``initial_lr`` in each group), then each ``step()`` after an ``optimizer.step()``
advances one step. ``get_last_lr()`` is the list of the groups' current rates.
"""
from __future__ import annotations

import math

from .optimizer import Optimizer


def _check_optimizer(opt):
    if not isinstance(opt, Optimizer):
        raise TypeError(f"{type(opt).__name__} is not a dlprimer Optimizer")


def _per_group(name, value, opt):
    if isinstance(value, (list, tuple)):
        if len(value) != len(opt.param_groups):
            raise ValueError(f"expected {len(opt.param_groups)} values for {name} "
                             f"(one per param group), got {len(value)}")
        return list(value)
    return [value] * len(opt.param_groups)


class _SchedulerState:
    """What every schedule shares: the last learning rates, and its state (everything
    but the optimizer) for checkpoints."""

    def get_last_lr(self) -> list:
        return list(self._last_lr)

    def state_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "optimizer"}

    def load_state_dict(self, state_dict: dict):
        self.__dict__.update(state_dict)


class LRScheduler(_SchedulerState):
    """Base: ``base_lrs`` (each group's ``initial_lr``), ``last_epoch`` (steps taken,
    0 after construction), ``step()``, ``get_last_lr()``, ``state_dict()``."""

    def __init__(self, optimizer):
        _check_optimizer(optimizer)
        self.optimizer = optimizer
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
        self.base_lrs = [group["initial_lr"] for group in optimizer.param_groups]
        self.last_epoch = -1
        self._initial = True
        self.step()
        self._initial = False

    def get_lr(self) -> list:
        """The learning rates for step ``last_epoch`` (subclasses)."""
        raise NotImplementedError

    def step(self):
        self.last_epoch += 1
        for group, lr in zip(self.optimizer.param_groups, self.get_lr()):
            group["lr"] = lr
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]


class StepLR(LRScheduler):
    """lr = base_lr * gamma ** (t // step_size), computed as PyTorch does (multiplying
    the current rate by gamma every ``step_size`` steps)."""

    def __init__(self, optimizer, step_size, gamma=0.1):
        if not isinstance(step_size, int) or step_size <= 0:
            raise ValueError(f"StepLR: step_size must be a positive int, got {step_size!r}")
        self.step_size = step_size
        self.gamma = gamma
        super().__init__(optimizer)

    def get_lr(self):
        groups = self.optimizer.param_groups
        if self.last_epoch == 0 or self.last_epoch % self.step_size != 0:
            return [g["lr"] for g in groups]
        return [g["lr"] * self.gamma for g in groups]


class CosineAnnealingLR(LRScheduler):
    """Cosine annealing (Loshchilov & Hutter, SGDR) without restarts:
    lr_t = eta_min + (base_lr - eta_min) (1 + cos(pi t / T_max)) / 2, evaluated with
    PyTorch's recursive update so the numbers equal PyTorch's (including its
    continuation past ``T_max``, where the rate climbs back up)."""

    def __init__(self, optimizer, T_max, eta_min=0.0):
        if not isinstance(T_max, int) or T_max <= 0:
            raise ValueError(f"CosineAnnealingLR: T_max must be a positive int, got {T_max!r}")
        self.T_max = T_max
        self.eta_min = eta_min
        super().__init__(optimizer)

    def get_lr(self):
        groups = self.optimizer.param_groups
        t, T, eta = self.last_epoch, self.T_max, self.eta_min
        if self._initial:
            return [g["lr"] for g in groups]
        if (t - 1 - T) % (2 * T) == 0:
            return [g["lr"] + (base - eta) * (1 - math.cos(math.pi / T)) / 2
                    for base, g in zip(self.base_lrs, groups)]
        return [(1 + math.cos(math.pi * t / T)) / (1 + math.cos(math.pi * (t - 1) / T))
                * (g["lr"] - eta) + eta for g in groups]


class OneCycleLR(LRScheduler):
    """The one-cycle policy (Smith & Topin 2018) with PyTorch's defaults: the rate
    rises from max_lr/div_factor to max_lr over the first ``pct_start`` of
    ``total_steps``, then falls to initial_lr/final_div_factor, both phases cosine
    (``anneal_strategy="linear"`` for straight lines; ``three_phase=True`` for
    PyTorch's three-phase variant). Momentum (SGD's ``momentum`` or Adam's beta1)
    cycles inversely between ``max_momentum`` and ``base_momentum`` unless
    ``cycle_momentum=False``. Stepping past ``total_steps`` raises ValueError."""

    def __init__(self, optimizer, max_lr, total_steps, pct_start=0.3, div_factor=25.0,
                 final_div_factor=1e4, anneal_strategy="cos", three_phase=False,
                 cycle_momentum=True, base_momentum=0.85, max_momentum=0.95):
        _check_optimizer(optimizer)
        if not isinstance(total_steps, int) or total_steps <= 0:
            raise ValueError(f"OneCycleLR: total_steps must be a positive int, got {total_steps!r}")
        if not 0.0 <= float(pct_start) <= 1.0:
            raise ValueError(f"OneCycleLR: pct_start must be in [0, 1], got {pct_start!r}")
        if anneal_strategy not in ("cos", "linear"):
            raise ValueError(f"OneCycleLR: anneal_strategy must be 'cos' or 'linear', "
                             f"got {anneal_strategy!r}")
        self.total_steps = total_steps
        self.anneal_strategy = anneal_strategy
        p = float(pct_start)
        if three_phase:
            self._phases = [
                (p * total_steps - 1, "initial_lr", "max_lr", "max_momentum", "base_momentum"),
                (2 * p * total_steps - 2, "max_lr", "initial_lr", "base_momentum", "max_momentum"),
                (total_steps - 1, "initial_lr", "min_lr", "max_momentum", "max_momentum")]
        else:
            self._phases = [
                (p * total_steps - 1, "initial_lr", "max_lr", "max_momentum", "base_momentum"),
                (total_steps - 1, "max_lr", "min_lr", "base_momentum", "max_momentum")]
        for group, mx in zip(optimizer.param_groups, _per_group("max_lr", max_lr, optimizer)):
            group["initial_lr"] = mx / div_factor
            group["max_lr"] = mx
            group["min_lr"] = group["initial_lr"] / final_div_factor
        self.cycle_momentum = cycle_momentum
        if cycle_momentum:
            defaults = optimizer.defaults
            if "momentum" not in defaults and "betas" not in defaults:
                raise ValueError("OneCycleLR: cycle_momentum=True needs an optimizer with "
                                 "'momentum' or 'betas' (or pass cycle_momentum=False)")
            self.use_beta1 = "betas" in defaults
            for group, mm, bm in zip(optimizer.param_groups,
                                     _per_group("max_momentum", max_momentum, optimizer),
                                     _per_group("base_momentum", base_momentum, optimizer)):
                self._set_momentum(group, mm)
                group["max_momentum"] = mm
                group["base_momentum"] = bm
        super().__init__(optimizer)

    def _set_momentum(self, group, value):
        if self.use_beta1:
            group["betas"] = (value, *group["betas"][1:])
        else:
            group["momentum"] = value

    def _anneal(self, start, end, pct):
        if self.anneal_strategy == "cos":
            return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)
        return (end - start) * pct + start

    def get_lr(self):
        t = self.last_epoch
        if t > self.total_steps:
            raise ValueError(f"OneCycleLR: tried to step {t} times; "
                             f"total_steps is {self.total_steps}")
        lrs = []
        for group in self.optimizer.param_groups:
            start = 0.0
            for i, (end, lr0, lr1, m0, m1) in enumerate(self._phases):
                if t <= end or i == len(self._phases) - 1:
                    pct = (t - start) / (end - start)
                    lrs.append(self._anneal(group[lr0], group[lr1], pct))
                    if self.cycle_momentum:
                        self._set_momentum(group, self._anneal(group[m0], group[m1], pct))
                    break
                start = end
        return lrs


class ReduceLROnPlateau(_SchedulerState):
    """Multiply the rate by ``factor`` once the metric has not improved for more than
    ``patience`` steps, then wait ``cooldown`` steps before counting again (PyTorch's
    rule). Improvement: ``metric < best*(1-threshold)`` (mode "min", threshold_mode
    "rel"), ``> best*(1+threshold)`` for "max"; ``best -/+ threshold`` for "abs".
    Rates never go below ``min_lr`` and changes smaller than ``eps`` are skipped."""

    def __init__(self, optimizer, mode="min", factor=0.1, patience=10, threshold=1e-4,
                 threshold_mode="rel", cooldown=0, min_lr=0.0, eps=1e-8):
        _check_optimizer(optimizer)
        if not factor < 1.0:
            raise ValueError(f"ReduceLROnPlateau: factor must be < 1.0, got {factor!r}")
        if mode not in ("min", "max"):
            raise ValueError(f"ReduceLROnPlateau: mode must be 'min' or 'max', got {mode!r}")
        if threshold_mode not in ("rel", "abs"):
            raise ValueError(f"ReduceLROnPlateau: threshold_mode must be 'rel' or 'abs', "
                             f"got {threshold_mode!r}")
        if not isinstance(patience, int) or patience < 0:
            raise ValueError(f"ReduceLROnPlateau: patience must be an int >= 0, got {patience!r}")
        if not isinstance(cooldown, int) or cooldown < 0:
            raise ValueError(f"ReduceLROnPlateau: cooldown must be an int >= 0, got {cooldown!r}")
        self.optimizer = optimizer
        self.mode, self.factor, self.patience = mode, factor, patience
        self.threshold, self.threshold_mode = threshold, threshold_mode
        self.cooldown, self.eps = cooldown, eps
        self.min_lrs = _per_group("min_lr", min_lr, optimizer)
        self.best = math.inf if mode == "min" else -math.inf
        self.num_bad_epochs = 0
        self.cooldown_counter = 0
        self.last_epoch = 0
        self._last_lr = [g["lr"] for g in optimizer.param_groups]

    def _is_better(self, a, best):
        if self.mode == "min":
            return a < (best * (1.0 - self.threshold) if self.threshold_mode == "rel"
                        else best - self.threshold)
        return a > (best * (self.threshold + 1.0) if self.threshold_mode == "rel"
                    else best + self.threshold)

    @property
    def in_cooldown(self) -> bool:
        return self.cooldown_counter > 0

    def step(self, metric):
        current = float(metric)
        self.last_epoch += 1
        if self._is_better(current, self.best):
            self.best = current
            self.num_bad_epochs = 0
        else:
            self.num_bad_epochs += 1
        if self.in_cooldown:
            self.cooldown_counter -= 1
            self.num_bad_epochs = 0
        if self.num_bad_epochs > self.patience:
            for group, min_lr in zip(self.optimizer.param_groups, self.min_lrs):
                old = float(group["lr"])
                new = max(old * self.factor, min_lr)
                if old - new > self.eps:
                    group["lr"] = new
            self.cooldown_counter = self.cooldown
            self.num_bad_epochs = 0
        self._last_lr = [g["lr"] for g in self.optimizer.param_groups]


class WarmupCosineLR(LRScheduler):
    """Linear warm-up then cosine decay, the chapter's schedule for Transformers:

        t < W:       lr = base_lr * t / W
        W <= t <= T: lr = eta_min + (base_lr - eta_min) (1 + cos(pi (t-W)/(T-W))) / 2
        t > T:       lr = eta_min

    (W = ``warmup_steps``, T = ``total_steps``). With eta_min = 0 this equals
    Hugging Face's ``get_cosine_schedule_with_warmup``, i.e. PyTorch's ``LambdaLR``
    with that factor; ``warmup_steps=0`` is plain cosine annealing to T.
    """

    def __init__(self, optimizer, warmup_steps, total_steps, eta_min=0.0):
        if not isinstance(warmup_steps, int) or warmup_steps < 0:
            raise ValueError(f"WarmupCosineLR: warmup_steps must be an int >= 0, "
                             f"got {warmup_steps!r}")
        if not isinstance(total_steps, int) or total_steps <= 0:
            raise ValueError(f"WarmupCosineLR: total_steps must be a positive int, "
                             f"got {total_steps!r}")
        if warmup_steps > total_steps:
            raise ValueError(f"WarmupCosineLR: warmup_steps ({warmup_steps}) exceeds "
                             f"total_steps ({total_steps})")
        self.warmup_steps, self.total_steps, self.eta_min = warmup_steps, total_steps, eta_min
        super().__init__(optimizer)

    def get_lr(self):
        t, W, T, eta = self.last_epoch, self.warmup_steps, self.total_steps, self.eta_min
        if t < W:
            return [base * t / W for base in self.base_lrs]
        if t >= T:
            return [eta for _ in self.base_lrs]
        pct = (t - W) / (T - W)
        return [eta + (base - eta) * (1 + math.cos(math.pi * pct)) / 2 for base in self.base_lrs]


def scale_lr(base_lr, batch_size, base_batch_size):
    """The linear scaling rule (Goyal et al. 2017; the chapter's "Learning Rate and
    Batch Size"): lr = base_lr * batch_size / base_batch_size. Pair it with warm-up."""
    for name, v in (("batch_size", batch_size), ("base_batch_size", base_batch_size)):
        if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
            raise ValueError(f"scale_lr: {name} must be a positive int, got {v!r}")
    lr = float(base_lr)
    if not lr >= 0:
        raise ValueError(f"scale_lr: base_lr must be >= 0, got {base_lr!r}")
    return lr * batch_size / base_batch_size
