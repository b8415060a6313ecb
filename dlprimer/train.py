"""The training loop with the diagnostics the chapter teaches.

:func:`fit` runs epochs (or a number of steps) of zero_grad, forward, loss,
backward, clip, optimizer step and schedule, and records per step: the loss,
the learning rate, the global and per-layer gradient norms, the update/weight
ratio ||dW|| / ||W|| per layer, the fraction of dead ReLU units, the step time
split into forward, backward and optimizer, and peak memory; per epoch: the
mean training loss, validation loss and accuracy. Everything goes to
``log_dir/metrics.jsonl`` (plus TensorBoard/MLflow, see :mod:`dlprimer.logs`).

It watches for the chapter's failure modes:

* vanishing gradients - the global norm, or one layer's norm relative to the
  largest layer's, stays near zero for many steps (a warning);
* exploding gradients - a norm far above its running median (a warning), and
  NaN/inf in the loss or gradients, which stops training: the step is replayed
  under :func:`dlprimer.detect_anomaly` with every layer's output checked, and
  :class:`TrainingDiverged` names the layer and the op that produced the first
  non-finite value (and the source line that created it);
* dying ReLUs - units whose output is zero for every sample of the batch, as a
  fraction per ReLU (a warning above ``dead_relu_threshold``).

Checkpoints (:mod:`dlprimer.ckpt`) hold the model, optimizer, scheduler, step,
every RNG state, the loader's position and the loop's own running state, so
``resume=True`` continues exactly where the last checkpoint left off: on the CPU
the resumed run's weights equal the uninterrupted run's bit for bit.
"""
from __future__ import annotations

import math
import os
import sys
import time
import warnings
from dataclasses import dataclass, field

import numpy as np

from .autograd import AnomalyError, detect_anomaly, no_grad, observe
from .tensor import Tensor

#: Metric names every step record carries (per-layer ones add ``/<layer>``).
STEP_METRICS = ("loss", "lr", "grad_norm", "update_ratio", "dead_relu", "time_forward",
                "time_backward", "time_optimizer", "time_step", "samples_per_s")
#: Metric names every epoch record carries (val_* only with a validation loader).
EPOCH_METRICS = ("train_loss", "train_acc", "val_loss", "val_acc", "time_epoch", "mem_peak",
                 "mem_state")
RELU_OPS = ("ReLU",)


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

    @property
    def final(self) -> dict:
        return self.epochs[-1] if self.epochs else {}


# -- helpers ----------------------------------------------------------------------------
def _layer_of(param_name: str) -> str:
    return param_name.rsplit(".", 1)[0] if "." in param_name else param_name


def _named_params(model):
    if callable(getattr(model, "named_parameters", None)):
        return [(n, p) for n, p in model.named_parameters()]
    return [(str(i), p) for i, p in enumerate(model.parameters())]


def _named_modules(model):
    """(dotted name, module) for every module below ``model`` (depth first)."""
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


def _lr_of(optimizer):
    groups = getattr(optimizer, "param_groups", None)
    if groups:
        return float(groups[0]["lr"])
    return float(getattr(optimizer, "lr", float("nan")))


def default_loss(out, target):
    """Cross-entropy for integer targets, mean squared error for float targets."""
    from .nn import functional as F
    if target.dtype.kind in "iu":
        return F.cross_entropy(out, target)
    return F.mse_loss(out, target)


def _finite(x) -> bool:
    return x is not None and math.isfinite(x)


class _SqNorms:
    """Squared gradient norms per layer, reduced on the device and fetched once."""

    def __init__(self, named):
        self.layers = []
        self.index = {}
        for n, p in named:
            lay = _layer_of(n)
            if lay not in self.index:
                self.index[lay] = len(self.layers)
                self.layers.append(lay)
        self.owner = [self.index[_layer_of(n)] for n, _ in named]

    def per_layer(self, arrays, backend) -> np.ndarray:
        xp = backend.xp
        sq = np.zeros(len(self.layers))
        parts = [xp.vdot(a.ravel(), a.ravel()) if a is not None else None for a in arrays]
        vals = backend.to_numpy(xp.stack([xp.asarray(v, dtype=xp.float64) for v in parts
                                          if v is not None])) if any(
            v is not None for v in parts) else np.zeros(0)
        k = 0
        for i, v in enumerate(parts):
            if v is not None:
                sq[self.owner[i]] += float(vals[k])
                k += 1
        return sq


class _ReLUMonitor:
    """Autograd observer: per ReLU call, which units fired for at least one sample.

    A unit (feature column) that is zero for the whole batch is 'dead' on that
    batch; the chapter's advice is to watch this fraction and switch to Leaky
    ReLU or ELU when it grows.
    """

    def __init__(self):
        self.alive = []

    def on_forward(self, node):
        if node.name in RELU_OPS and node.saved:
            y = node.saved[0]
            if getattr(y, "ndim", 0) >= 2:
                self.alive.append((y.reshape(-1, y.shape[-1]) > 0).any(axis=0))

    def fractions(self, backend) -> list[float]:
        if not self.alive:
            return []
        xp = backend.xp
        vals = backend.to_numpy(xp.stack([1.0 - a.mean() for a in self.alive]))
        return [float(v) for v in vals]


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


# -- NaN diagnosis -----------------------------------------------------------------------
def _nonfinite(t) -> bool:
    if not isinstance(t, Tensor) or t.dtype.kind != "f":
        return False
    return not bool(t.backend.xp.isfinite(t.data).all())


def diagnose_nonfinite(model, loss_fn, x, y, named=None) -> dict:
    """Replay one step under anomaly mode and find where NaN/inf first appears.

    Returns a dict: ``phase`` ("parameters", "forward", "loss" or "backward"),
    ``layer`` (dotted module name), ``op`` (the Function) and ``message``.
    Forward: every leaf module's output is checked in call order; the first
    non-finite one (whose inputs were finite) names the layer, and its
    ``grad_fn`` names the op and where it was created. Backward:
    :func:`dlprimer.detect_anomaly` raises at the first backward op producing
    NaN/inf.
    """
    named = named if named is not None else _named_params(model)
    bad_params = [n for n, p in named if _nonfinite(p)]
    found: dict = {}
    patched = []
    for name, mod, leaf in _named_modules(model):
        if not leaf or "forward" in vars(mod):
            continue
        inner = mod.forward

        def wrapper(*a, _inner=inner, _name=name, _mod=mod, **k):
            out = _inner(*a, **k)
            if not found and _nonfinite(out) and not any(_nonfinite(v) for v in a):
                node = out.grad_fn
                found.update(phase="forward", layer=_name, module=type(_mod).__name__,
                             op=node.name if node is not None else None,
                             where=node.describe() if node is not None else None)
            return out
        object.__setattr__(mod, "forward", wrapper)
        patched.append(mod)
    try:
        with detect_anomaly():
            if callable(getattr(model, "zero_grad", None)):
                model.zero_grad()
            out = model(x)
            if not found and _nonfinite(out):
                node = out.grad_fn
                found.update(phase="forward", layer="(model)", module=type(model).__name__,
                             op=node.name if node is not None else None,
                             where=node.describe() if node is not None else None)
            loss = loss_fn(out, y)
            if not found and _nonfinite(loss):
                node = loss.grad_fn
                found.update(phase="loss", layer="(loss)", module=None,
                             op=node.name if node is not None else None,
                             where=node.describe() if node is not None else None)
            if not found:
                try:
                    loss.backward()
                except AnomalyError as e:
                    found.update(phase="backward", layer=None, module=None, op=e.op,
                                 where=str(e), location=e.location)
    finally:
        for mod in patched:
            object.__delattr__(mod, "forward")
    if bad_params:
        found.setdefault("phase", "parameters")
        found["bad_parameters"] = bad_params
    if not found:
        found = {"phase": "unknown", "op": None,
                 "message": "the replayed step was finite (a non-deterministic op?)"}
    if "message" not in found:
        bits = []
        if found["phase"] == "forward":
            bits.append(f"forward of layer '{found['layer']}' ({found['module']}) produced "
                        f"NaN/inf from finite inputs in op {found['where'] or found['op']}")
        elif found["phase"] == "loss":
            bits.append(f"the loss became NaN/inf in op {found['where'] or found['op']} "
                        "(the model's output was finite)")
        elif found["phase"] == "backward":
            bits.append(found["where"])
        if bad_params:
            bits.append("non-finite parameters: " + ", ".join(bad_params[:8])
                        + (" ..." if len(bad_params) > 8 else ""))
        found["message"] = "; ".join(bits)
    return found


# -- the loop ---------------------------------------------------------------------------
def _early_cfg(early_stopping):
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


class _Progress:
    """tqdm on a terminal; otherwise a plain line per epoch (and every ~10% of steps)."""

    def __init__(self, mode, total, initial, stream):
        self.stream = stream if stream is not None else sys.stderr
        tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.enabled = mode is not False
        self.bar = None
        self.every = max(1, total // 10) if total else 50
        if self.enabled and (mode is True or mode == "auto") and tty:
            try:
                from tqdm.auto import tqdm
                self.bar = tqdm(total=total, initial=initial, file=self.stream,
                                unit="step", dynamic_ncols=True, leave=True)
            except ImportError:
                self.bar = None

    def step(self, step, rec):
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{rec['loss']:.4f}", gnorm=f"{rec['grad_norm']:.3g}",
                                 refresh=False)
        elif step % self.every == 0:
            print(f"step {step}: loss {rec['loss']:.4f}  grad_norm {rec['grad_norm']:.3g}  "
                  f"lr {rec['lr']:.3g}", file=self.stream, flush=True)

    def epoch(self, rec, epochs):
        if not self.enabled:
            return
        parts = [f"epoch {rec['epoch'] + 1}" + (f"/{epochs}" if epochs else ""),
                 f"step {rec['step']}", f"train_loss {rec['train_loss']:.4f}"]
        for k in ("val_loss", "val_acc"):
            if k in rec:
                parts.append(f"{k} {rec[k]:.4f}")
        parts.append(f"({rec['time_epoch']:.2f} s)")
        line = "  ".join(parts)
        if self.bar is not None:
            self.bar.write(line, file=self.stream)
        else:
            print(line, file=self.stream, flush=True)

    def message(self, text):
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(text, file=self.stream)
        else:
            print(text, file=self.stream, flush=True)

    def close(self):
        if self.bar is not None:
            self.bar.close()


def fit(model, optimizer, train_loader, val_loader=None, epochs: int = 1, steps: int | None = None,
        loss_fn=None, scheduler=None, scheduler_interval: str = "step", clip: float | None = None,
        log_dir=None, checkpoint_dir=None, checkpoint_every: int | None = None,
        keep_checkpoints: int = 3, resume=False, early_stopping=None, restore_best: bool = False,
        log_every: int = 1, memory_every: int | None = None, progress="auto", stream=None,
        vanishing_threshold: float = 1e-7, vanishing_ratio: float = 1e-4,
        vanishing_patience: int = 20, exploding_factor: float = 100.0,
        dead_relu_threshold: float = 0.5, tensorboard="auto", mlflow="auto",
        config: dict | None = None, cuda_graph: bool = False) -> FitResult:
    """Train ``model`` with ``optimizer`` on ``train_loader``; returns a :class:`FitResult`.

    epochs / steps: train for ``epochs`` passes, or (when ``steps`` is given) for that
    many optimizer steps whatever the epoch count. loss_fn(output, target) -> scalar
    (default: cross-entropy for integer targets, MSE otherwise). scheduler: stepped
    after every optimizer step (``scheduler_interval="step"``) or every epoch
    ("epoch"); ReduceLROnPlateau is stepped per epoch with the validation loss.
    clip: max global gradient norm (``dp.utils.clip_grad_norm_``).
    log_dir: where metrics.jsonl (and TensorBoard events) go. checkpoint_dir:
    checkpoints every ``checkpoint_every`` steps (default: each epoch) and at the
    end; ``resume=True`` continues from the newest valid one there (or
    ``resume=<path>`` from a file). early_stopping: patience in epochs without a
    validation-loss improvement (or ``{"patience", "min_delta"}``);
    restore_best reloads the best epoch's weights at the end. log_every: write
    every n-th step record (epoch records always). memory_every: meter peak memory
    every n-th step (default: every step where metering is free - CUDA - and every
    50th on the CPU, whose meter slows the step; those steps' times are flagged).
    progress: "auto" (tqdm on a terminal, plain lines otherwise), True or False.
    cuda_graph: capture the step (forward, backward, clip, update) once as a CUDA graph
    and replay it (``dp.cuda.make_graphed_step``; CUDA backend, SGD/LARS, no dropout,
    no scheduler); the forward/backward/optimizer times are then the whole step's.
    """
    from .backend import get_backend
    from .backend.checks import check_deferred
    from .ckpt import CheckpointManager, load_checkpoint
    from .logs import MetricLogger

    if steps is None and (not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 1):
        raise ValueError(f"epochs must be a positive integer, got {epochs!r}")
    if steps is not None and (not isinstance(steps, int) or isinstance(steps, bool) or steps < 1):
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    if scheduler_interval not in ("step", "epoch"):
        raise ValueError(f"scheduler_interval must be 'step' or 'epoch', got {scheduler_interval!r}")
    if clip is not None and not (clip > 0):
        raise ValueError(f"clip must be a positive max norm, got {clip!r}")
    if not isinstance(log_every, int) or log_every < 1:
        raise ValueError(f"log_every must be a positive integer, got {log_every!r}")
    if checkpoint_every is not None and (not isinstance(checkpoint_every, int) or checkpoint_every < 1):
        raise ValueError(f"checkpoint_every must be a positive integer, got {checkpoint_every!r}")
    if checkpoint_every is not None and checkpoint_dir is None:
        raise ValueError("checkpoint_every needs checkpoint_dir (where the checkpoints go)")
    if resume and checkpoint_dir is None and not isinstance(resume, (str, os.PathLike)):
        raise ValueError("resume=True needs checkpoint_dir (or pass resume=<checkpoint path>)")
    if not callable(model) or not callable(getattr(model, "parameters", None)):
        raise TypeError(f"fit: model must be a Module (callable with parameters()), got "
                        f"{type(model).__name__}")
    if not (callable(getattr(optimizer, "step", None)) and callable(getattr(optimizer, "zero_grad", None))):
        raise TypeError(f"fit: optimizer needs step() and zero_grad(), got {type(optimizer).__name__}")
    early = _early_cfg(early_stopping)
    if early is not None and val_loader is None:
        raise ValueError("early_stopping watches the validation loss: pass val_loader")
    loss_fn = loss_fn or default_loss
    plateau = type(scheduler).__name__ == "ReduceLROnPlateau"
    if plateau and val_loader is None:
        raise ValueError("ReduceLROnPlateau steps on the validation loss: pass val_loader")
    # -- cuda graph hook (issue 17; port into the Trainer): the captured step --
    graphed = None
    if cuda_graph:
        from .cuda import make_graphed_step
        if scheduler is not None:
            raise ValueError("cuda_graph=True replays the learning rate it captured: "
                             "it cannot be combined with a scheduler")
        be = next(iter(model.parameters())).backend
        if be.name != "cuda":
            raise RuntimeError(f"cuda_graph=True needs the 'cuda' backend; the model is on "
                               f"{be.name!r} (CUDA graphs capture GPU kernels)")
        graphed = make_graphed_step(model, loss_fn, optimizer, clip=clip)
    # -- end cuda graph hook --

    named = _named_params(model)
    params = [p for _, p in named]
    backend = params[0].backend if params else get_backend()
    norms = _SqNorms(named)
    meter = backend.memory
    if memory_every is None:
        memory_every = 1 if meter.active else 50

    # -- resume ---------------------------------------------------------------------------
    step, epoch0, run = 0, 0, {}
    manager = CheckpointManager(checkpoint_dir, keep=keep_checkpoints) if checkpoint_dir else None
    resumed_from = None
    if manager is not None:
        manager.clean_temporaries()
    if resume:
        path = os.fspath(resume) if isinstance(resume, (str, os.PathLike)) else manager.latest()
        if path is not None:
            state = load_checkpoint(path, model=model, optimizer=optimizer, scheduler=scheduler,
                                    loader=train_loader)
            step = int(state["step"] or 0)
            run = dict(state.get("extra") or {})
            epoch0 = int(run.get("epoch", 0))
            resumed_from = path
    result = FitResult(step=step, resumed_from=resumed_from)
    total_steps = steps if steps is not None else epochs * len(train_loader)

    cfg = {"epochs": epochs, "steps": steps, "batch_size": getattr(train_loader, "batch_size", None),
           "optimizer": type(optimizer).__name__, "scheduler": type(scheduler).__name__ if scheduler else None,
           "clip": clip, "backend": backend.name,
           "num_parameters": int(sum(p.size for p in params)), **(config or {})}
    logger = (MetricLogger(log_dir, tensorboard=tensorboard, mlflow=mlflow,
                           resume_step=step if resumed_from else None, config=cfg)
              if log_dir is not None else None)
    result.log_path = logger.path if logger else None
    bar = _Progress(progress, total_steps, min(step, total_steps), stream)
    if resumed_from:
        bar.message(f"resumed from {resumed_from} at step {step}")

    warned = set(run.get("warned", []))
    vanish_count = int(run.get("vanish_count", 0))
    layer_low = dict(run.get("layer_low", {}))
    gnorm_hist = list(run.get("gnorm_hist", []))
    best = run.get("best")
    bad_epochs = int(run.get("bad_epochs", 0))
    best_state = run.get("best_state") if restore_best else None

    def emit(rec):
        if logger is not None:
            logger.log(rec)

    def warn(kind, cls, message):
        if kind in warned:
            return
        warned.add(kind)
        warnings.warn(message, cls, stacklevel=3)
        rec = {"event": "warning", "step": step, "kind": cls.__name__, "message": message}
        result.warnings.append(rec)
        emit(rec)
        bar.message(f"warning: {message}")

    def run_state(epoch, acc):
        return {"epoch": epoch, "acc": acc, "warned": sorted(warned), "vanish_count": vanish_count,
                "layer_low": layer_low, "gnorm_hist": gnorm_hist[-50:], "best": best,
                "bad_epochs": bad_epochs, "stopped_early": result.stopped_early,
                # the best epoch's weights, so restore_best still works after a resume
                **({"best_state": best_state} if restore_best and best_state is not None else {})}

    def save(epoch, acc):
        if manager is None:
            return None
        return manager.save(step, model=model, optimizer=optimizer, scheduler=scheduler,
                            loader=train_loader, extra=run_state(epoch, acc))

    if callable(getattr(model, "train", None)):
        model.train()
    # a run that already stopped early stays stopped when resumed
    stop = result.stopped_early = bool(run.get("stopped_early", False))
    epoch = epoch0
    acc = dict(run.get("acc") or {"loss_sum": 0.0, "n": 0, "correct": 0, "time": 0.0,
                                  "mem_peak": 0, "classify": False})
    try:
        while not stop:
            if (steps is None and epoch >= epochs) or (steps is not None and step >= steps):
                break
            t_epoch = time.perf_counter()
            first = True
            for x, y in train_loader:
                rng_before = backend.get_rng_state()
                metered = first or step % memory_every == 0
                first = False
                if metered:
                    meter.start()
                    base = meter.current()
                    meter.reset_peak()
                relu = _ReLUMonitor()
                t_fwd, t_bwd, t_opt = backend.timer(), backend.timer(), backend.timer()
                with t_opt:
                    if graphed is None:  # cuda graph hook: the graphed step zeroes itself
                        optimizer.zero_grad()
                with observe(relu), t_fwd:
                    if graphed is not None:  # cuda graph hook: the whole step, replayed
                        out, loss = graphed(x, y)
                    else:
                        out = model(x)
                        loss = loss_fn(out, y)
                with t_bwd:
                    if graphed is None:
                        loss.backward()
                loss_val = float(loss.item())
                check_deferred()  # device-side flags (bad target, skipped step), read at logging
                grads = [p.grad.data if p.grad is not None else None for p in params]
                sq = norms.per_layer(grads, backend)
                gnorm = float(math.sqrt(sq.sum()))
                if not (_finite(loss_val) and _finite(gnorm)):
                    if metered:
                        meter.stop()
                    backend.set_rng_state(rng_before)
                    rep = diagnose_nonfinite(model, loss_fn, x, y, named)
                    what = "loss" if not _finite(loss_val) else "gradient norm"
                    msg = (f"training stopped at step {step + 1}: the {what} is "
                           f"{loss_val if what == 'loss' else gnorm}. {rep['message']}")
                    rec = {"event": "diverged", "step": step + 1, "message": msg,
                           **{k: v for k, v in rep.items() if isinstance(v, (str, int, float))}}
                    result.warnings.append(rec)
                    emit(rec)
                    bar.message(msg)
                    raise TrainingDiverged(msg, step=step + 1, report=rep)
                if clip is not None and graphed is None:  # cuda graph hook: clipped inside
                    _clip(params, clip, gnorm)
                log_this = ((step + 1) % log_every == 0)
                before = [p.data.copy() for p in params] if log_this else None
                t_opt2 = backend.timer()
                with t_opt2:
                    if graphed is None:  # cuda graph hook: stepped inside the graph
                        optimizer.step()
                lr = _lr_of(optimizer)
                if scheduler is not None and scheduler_interval == "step" and not plateau:
                    scheduler.step()
                mem_peak = None
                if metered:
                    mem_peak = int(meter.peak() - base)
                    meter.stop()
                step += 1
                b = len(y)
                acc["loss_sum"] += loss_val * b
                acc["n"] += b
                if y.dtype.kind in "iu" and out.ndim == 2:
                    acc["classify"] = True
                    acc["correct"] += int((out.data.argmax(axis=-1) == y.data).sum())
                t_step = t_fwd.elapsed + t_bwd.elapsed + t_opt.elapsed + t_opt2.elapsed
                rec = {"event": "step", "step": step, "epoch": epoch, "loss": loss_val, "lr": lr,
                       "grad_norm": gnorm}
                for lay, s in zip(norms.layers, sq):
                    rec[f"grad_norm/{lay}"] = float(math.sqrt(s))
                if log_this:
                    diff = [p.data - w for p, w in zip(params, before)]
                    dsq = norms.per_layer(diff, backend)
                    wsq = norms.per_layer(before, backend)
                    rec["update_ratio"] = float(math.sqrt(dsq.sum() / max(wsq.sum(), 1e-30)))
                    for lay, d, w in zip(norms.layers, dsq, wsq):
                        rec[f"update_ratio/{lay}"] = float(math.sqrt(d / w)) if w > 0 else 0.0
                dead = relu.fractions(backend)
                rec["dead_relu"] = float(np.mean(dead)) if dead else 0.0
                for i, f in enumerate(dead):
                    rec[f"dead_relu/{i}"] = f
                rec.update(time_forward=t_fwd.elapsed, time_backward=t_bwd.elapsed,
                           time_optimizer=t_opt.elapsed + t_opt2.elapsed, time_step=t_step,
                           samples_per_s=b / t_step if t_step > 0 else float("nan"))
                if mem_peak is not None:
                    rec["mem_peak"] = mem_peak
                    rec["metered"] = not meter.active or meter.slows_steps
                    acc["mem_peak"] = max(acc["mem_peak"], mem_peak)
                if not (metered and meter.slows_steps):
                    acc["time"] += t_step
                # -- the chapter's warnings --
                if gnorm < vanishing_threshold:
                    vanish_count += 1
                else:
                    vanish_count = 0
                if vanish_count >= vanishing_patience:
                    warn("vanishing", VanishingGradientWarning,
                         f"vanishing gradients: the global gradient norm has stayed below "
                         f"{vanishing_threshold:g} for {vanish_count} steps (now {gnorm:.3g})")
                top = float(np.sqrt(sq.max())) if len(sq) else 0.0
                for lay, s in zip(norms.layers, sq):
                    if top > 0 and math.sqrt(s) < vanishing_ratio * top:
                        layer_low[lay] = layer_low.get(lay, 0) + 1
                    else:
                        layer_low[lay] = 0
                    if layer_low[lay] >= vanishing_patience:
                        warn(f"vanishing/{lay}", VanishingGradientWarning,
                             f"vanishing gradients in layer '{lay}': its gradient norm has stayed "
                             f"below {vanishing_ratio:g} x the largest layer's for "
                             f"{layer_low[lay]} steps")
                if len(gnorm_hist) >= 10:
                    med = float(np.median(gnorm_hist[-50:]))
                    if med > 0 and gnorm > exploding_factor * med:
                        warn("exploding", ExplodingGradientWarning,
                             f"exploding gradients: the gradient norm {gnorm:.3g} at step {step} is "
                             f"{gnorm / med:.0f}x its running median {med:.3g}; consider clip=")
                gnorm_hist.append(gnorm)
                del gnorm_hist[:-50]
                for i, f in enumerate(dead):
                    if f > dead_relu_threshold:
                        warn(f"dead_relu/{i}", DyingReLUWarning,
                             f"dying ReLUs: {f:.0%} of the units of ReLU #{i} output zero for the "
                             f"whole batch at step {step}; a lower learning rate, Leaky ReLU or ELU "
                             "helps")
                if log_this:
                    result.steps.append(rec)
                    emit(rec)
                bar.step(step, rec)
                if manager is not None and checkpoint_every and step % checkpoint_every == 0:
                    result.checkpoint = save(epoch, acc)
                if steps is not None and step >= steps:
                    stop = True
                    break
            # -- end of epoch (or of the step budget) --
            pos = getattr(train_loader, "position", 0)
            if stop and pos >= len(train_loader) and hasattr(train_loader, "set_epoch"):
                train_loader.set_epoch(train_loader.epoch + 1)
                pos = 0
            partial = bool(stop and pos)
            erec = {"event": "epoch", "step": step, "epoch": epoch, "partial": partial,
                    "train_loss": acc["loss_sum"] / max(acc["n"], 1), "lr": _lr_of(optimizer),
                    "time_epoch": time.perf_counter() - t_epoch, "time_train": acc["time"]}
            if acc["classify"]:
                erec["train_acc"] = acc["correct"] / max(acc["n"], 1)
            if acc["mem_peak"]:
                erec["mem_peak"] = acc["mem_peak"]
            erec["mem_state"] = _state_bytes(params, optimizer)
            if val_loader is not None:
                erec.update(evaluate(model, val_loader, loss_fn))
            if not partial:
                if scheduler is not None:
                    if plateau:
                        scheduler.step(erec["val_loss"])
                    elif scheduler_interval == "epoch":
                        scheduler.step()
                if early is not None:
                    v = erec["val_loss"]
                    if best is None or v < best - early["min_delta"]:
                        best, bad_epochs = v, 0
                        if restore_best:
                            best_state = _copy_state(model)
                    else:
                        bad_epochs += 1
                        if bad_epochs >= early["patience"]:
                            stop = True
                            result.stopped_early = True
                            erec["stopped_early"] = True
            result.epochs.append(erec)
            emit(erec)
            bar.epoch(erec, None if steps is not None else epochs)
            if not partial:
                # a partial epoch (step budget hit mid-epoch) keeps its running sums, so
                # a resumed run completes the epoch's figures exactly
                epoch += 1
                acc = {"loss_sum": 0.0, "n": 0, "correct": 0, "time": 0.0, "mem_peak": 0,
                       "classify": False}
            if manager is not None:
                result.checkpoint = save(epoch, acc)
            if steps is not None and step >= steps:
                stop = True
    except KeyboardInterrupt:
        bar.message(f"interrupted at step {step}")
        raise
    finally:
        bar.close()
        if logger is not None:
            logger.close()
    if restore_best and best_state is not None:
        model.load_state_dict(best_state)
    result.step = step
    result.best_val_loss = best
    return result


def _copy_state(model) -> dict:
    return {k: (v.data.copy() if isinstance(v, Tensor) else np.copy(v))
            for k, v in model.state_dict().items()}


def _clip(params, max_norm, total):
    """Scale all gradients by max_norm / (total + 1e-6) when total > max_norm (PyTorch's rule)."""
    try:
        from .utils import clip_grad_norm_
    except ImportError:
        clip_grad_norm_ = None
    if clip_grad_norm_ is not None:
        clip_grad_norm_(params, max_norm)
        return
    coef = max_norm / (total + 1e-6)
    if coef < 1.0:
        for p in params:
            if p.grad is not None:
                p.grad.data *= p.grad.data.dtype.type(coef)


def _state_bytes(params, optimizer) -> int:
    """Bytes held between steps: parameters, gradients and the optimizer's state."""
    n = sum(p.data.nbytes for p in params)
    n += sum(p.grad.data.nbytes for p in params if p.grad is not None)
    state = getattr(optimizer, "state", None)
    seen = set()

    def walk(o, depth=0):
        nonlocal n
        if depth > 4:
            return
        if isinstance(o, Tensor):
            o = o.data
        if hasattr(o, "nbytes") and hasattr(o, "shape") and id(o) not in seen:
            seen.add(id(o))
            n += int(o.nbytes)
        elif isinstance(o, dict):
            for v in o.values():
                walk(v, depth + 1)
        elif isinstance(o, (list, tuple)):
            for v in o:
                walk(v, depth + 1)
    if state is not None:
        walk(state)
    return int(n)
