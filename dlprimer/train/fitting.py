"""``fit``: the training loop of the chapter as one call, built from a :class:`Trainer`
and the extensions its arguments ask for.

It records per step the loss, learning rate, global and per-layer gradient norms, the
update/weight ratio per layer, the dead-ReLU fraction, the step time split into
forward, backward and optimizer, and peak memory; per epoch the training and
validation loss and accuracy. It warns of vanishing and exploding gradients and dying
ReLUs, stops on NaN/inf naming the layer and op where it started, and with
``checkpoint_dir`` writes training checkpoints that resume bit for bit on the CPU.
"""
from __future__ import annotations

import os

from .extensions import (Checkpoints, EarlyStopping, GradientClipping, GradientDiagnostics,
                         LRSchedule, MetricLog, ProgressBar, StepMemory, StepTiming)
from .extensions.early_stopping import early_stopping_config
from .checkpoints import load_checkpoint
from .records import FitResult, default_loss
from .trainer import Trainer


def _check_fit_args(val_loader, scheduler, scheduler_interval, checkpoint_dir,
                    checkpoint_every, resume, early):
    if scheduler_interval not in ("step", "epoch"):
        raise ValueError(f"scheduler_interval must be 'step' or 'epoch', got {scheduler_interval!r}")
    if checkpoint_every is not None and checkpoint_dir is None:
        raise ValueError("checkpoint_every needs checkpoint_dir (where the checkpoints go)")
    if resume and checkpoint_dir is None and not isinstance(resume, (str, os.PathLike)):
        raise ValueError("resume=True needs checkpoint_dir (or pass resume=<checkpoint path>)")
    if early is not None and val_loader is None:
        raise ValueError("early_stopping watches the validation loss: pass val_loader")
    if type(scheduler).__name__ == "ReduceLROnPlateau" and val_loader is None:
        raise ValueError("ReduceLROnPlateau steps on the validation loss: pass val_loader")


def fit(model, optimizer, train_loader, val_loader=None, epochs: int = 1, steps: int | None = None,
        loss_fn=None, scheduler=None, scheduler_interval: str = "step", clip: float | None = None,
        log_dir=None, checkpoint_dir=None, checkpoint_every: int | None = None,
        keep_checkpoints: int = 3, resume=False, early_stopping=None, restore_best: bool = False,
        log_every: int = 1, memory_every: int | None = None, progress="auto", stream=None,
        vanishing_threshold: float = 1e-7, vanishing_ratio: float = 1e-4,
        vanishing_patience: int = 20, exploding_factor: float = 100.0,
        dead_relu_threshold: float = 0.5, tensorboard="auto", mlflow="auto",
        config: dict | None = None, force: bool = False, extensions=(), accumulate: int = 1,
        cuda_graph: bool = False) -> FitResult:
    """Train ``model`` with ``optimizer`` on ``train_loader``; returns a :class:`FitResult`.

    epochs / steps: train for ``epochs`` passes, or (when ``steps`` is given) for that
    many optimizer steps whatever the epoch count. loss_fn(output, target) -> scalar
    (default: cross-entropy for integer targets, MSE otherwise). scheduler: stepped
    after every optimizer step (``scheduler_interval="step"``) or every epoch
    ("epoch"); ReduceLROnPlateau is stepped per epoch with the validation loss.
    clip: max global gradient norm (``dp.nn.utils.clip_grad_norm_``).
    log_dir: where metrics.jsonl (and TensorBoard events) go. checkpoint_dir:
    checkpoints every ``checkpoint_every`` steps (default: each epoch), at the end and
    on Ctrl-C; ``resume=True`` continues from the newest valid one there (or
    ``resume=<path>`` from a file); resuming from nothing, or a fresh run into a
    directory holding another run's checkpoints, is an error unless ``force=True``.
    early_stopping: patience in epochs without a validation-loss improvement (or
    ``{"patience", "min_delta"}``); restore_best reloads the best epoch's weights at
    the end. log_every: write every n-th step record (epoch records always).
    memory_every: meter peak memory every n-th step (default: every step where
    metering is free - CUDA - and every 50th on the CPU, whose meter slows the step;
    those steps' times are flagged). progress: "auto" (tqdm on a terminal, plain lines
    otherwise), True or False. extensions: more :class:`Extension` objects to run.
    accumulate: gradient accumulation, ``k`` micro-batches from ``train_loader`` per
    optimizer step, each loss scaled by its share of the step's samples, so the update
    equals that of one batch k times the size (for a mean loss) at the activation
    memory of one micro-batch; ``steps`` counts optimizer steps.
    cuda_graph: capture the step (forward, backward, clip, update) once as a CUDA graph
    and replay it (``dp.cuda.make_graphed_step``; CUDA backend, SGD/LARS, no dropout,
    no scheduler); the step's time is then reported as its forward time.
    """
    early = early_stopping_config(early_stopping)
    _check_fit_args(val_loader, scheduler, scheduler_interval, checkpoint_dir, checkpoint_every,
                    resume, early)
    exts = [StepMemory(memory_every), StepTiming(),
            GradientDiagnostics(vanishing_threshold, vanishing_ratio, vanishing_patience,
                                exploding_factor, dead_relu_threshold),
            ProgressBar(progress, stream), *extensions]
    if scheduler is not None:
        exts.append(LRSchedule(scheduler, scheduler_interval))
    if clip is not None and not cuda_graph:      # a graphed step clips inside the graph
        exts.append(GradientClipping(clip))
    if early is not None:
        exts.append(EarlyStopping(early["patience"], early["min_delta"], restore_best))
    graphed = _graphed_step(model, optimizer, loss_fn, scheduler, clip, accumulate) if cuda_graph else None
    trainer = Trainer(model, optimizer, train_loader, val_loader, epochs=epochs, steps=steps,
                      loss_fn=loss_fn, extensions=exts, log_every=log_every, accumulate=accumulate,
                      graphed_step=graphed)
    path = resume if isinstance(resume, (str, os.PathLike)) else None
    if checkpoint_dir is not None:
        ckpt = Checkpoints(checkpoint_dir, checkpoint_every, keep_checkpoints)
        trainer.extend(ckpt)
        path = ckpt.resolve_resume(resume, force)
    if log_dir is not None:
        trainer.extend(MetricLog(log_dir, tensorboard, mlflow, _config(trainer, clip, config)))
    if path is not None:
        state = load_checkpoint(path, model=model, optimizer=optimizer, scheduler=scheduler,
                                loader=train_loader)
        trainer.load_run_state(dict(state.get("extra") or {}), state["step"] or 0, os.fspath(path))
    return trainer.run()


def _graphed_step(model, optimizer, loss_fn, scheduler, clip, accumulate):
    """The captured CUDA-graph step for ``fit(cuda_graph=True)`` (issue 17)."""
    from ..cuda import make_graphed_step
    if accumulate != 1:
        raise ValueError(f"cuda_graph=True captures one whole step (zero_grad, forward, "
                         f"backward, update): it cannot accumulate {accumulate!r} micro-batches")
    if scheduler is not None:
        raise ValueError("cuda_graph=True replays the learning rate it captured: "
                         "it cannot be combined with a scheduler")
    be = next(iter(model.parameters())).backend
    if be.name != "cuda":
        raise RuntimeError(f"cuda_graph=True needs the 'cuda' backend; the model is on "
                           f"{be.name!r} (CUDA graphs capture GPU kernels)")
    return make_graphed_step(model, loss_fn or default_loss, optimizer, clip=clip)


def _config(trainer, clip, extra) -> dict:
    """The run's config record: what the log's first line says about the run."""
    sched = trainer.scheduler
    return {"epochs": trainer.epochs, "steps": trainer.steps,
            "batch_size": getattr(trainer.train_loader, "batch_size", None),
            "accumulate": trainer.accumulate,
            "optimizer": type(trainer.optimizer).__name__,
            "scheduler": type(sched).__name__ if sched else None, "clip": clip,
            "backend": trainer.backend.name,
            "num_parameters": int(sum(p.size for p in trainer.params)), **(extra or {})}
