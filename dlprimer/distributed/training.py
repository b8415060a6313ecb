"""Data-parallel ``fit``: the single-process training loop, run on every rank.

:func:`fit` wraps :func:`dlprimer.train.fit` without changing it:

* the optimizer is wrapped in :class:`DistributedOptimizer`, whose ``step()``
  averages the gradient arenas (one all-reduce per param group), then clips the
  averaged gradient when ``clip`` is given, then runs the real update; so the
  update equals the single-process one on the global batch;
* the training loader is sharded (:func:`shard_loader`), every rank starts from
  rank 0's parameters, buffers and optimizer state;
* only rank 0 gets ``log_dir``, ``checkpoint_dir`` and a progress bar, so
  metrics, logs and checkpoints are written once; a resume reads the checkpoint
  rank 0 picks on every rank;
* ``scale_lr=True`` applies the linear scaling rule (lr x world size, since the
  global batch is world size x the per-rank batch) and ``warmup_steps`` ramps
  the learning rate up linearly over the first steps, as Goyal et al. prescribe
  and the chapter's "Learning Rate and Batch Size" recommends for large batches.

Step records in the log are rank 0's view: its loss and its local gradient norm.
"""
from __future__ import annotations

import os

from ..optim import scale_lr as _scale_lr
from .parallel import (all_reduce_gradients, broadcast_optimizer_state, broadcast_parameters,
                       shard_loader)


class DistributedOptimizer:
    """An optimizer whose ``step()`` first averages gradients over all ranks.

    Everything else (``param_groups``, ``zero_grad``, ``state_dict``, ``arenas``)
    is the wrapped optimizer's. ``clip`` (max global norm) is applied to the
    averaged gradient, the one the update uses. ``comm_seconds``/``comm_bytes``
    hold the last step's all-reduce cost (also in ``comm.stats``).
    """

    def __init__(self, optimizer, comm=None, clip: float | None = None):
        from . import get_communicator
        self.optimizer = optimizer
        self.comm = comm if comm is not None else get_communicator()
        self.clip = clip
        self.comm_seconds = 0.0
        self.comm_bytes = 0

    def __getattr__(self, name):
        return getattr(self.__dict__["optimizer"], name)

    def __repr__(self):
        return f"DistributedOptimizer({self.optimizer!r}, {self.comm!r})"

    def zero_grad(self, *args, **kwargs):
        return self.optimizer.zero_grad(*args, **kwargs)

    def step(self):
        snap = self.comm.stats.snapshot()
        all_reduce_gradients(self.optimizer, comm=self.comm)
        d = self.comm.stats.since(snap)
        self.comm_seconds, self.comm_bytes = d["seconds"], d["bytes"]
        if self.clip is not None:
            from ..nn.utils import clip_grad_norm_
            clip_grad_norm_([p for g in self.optimizer.param_groups for p in g["params"]],
                            self.clip)
        return self.optimizer.step()

    def state_dict(self):
        return self.optimizer.state_dict()

    def load_state_dict(self, sd):
        return self.optimizer.load_state_dict(sd)


class LinearWarmup:
    """Multiply every group's lr by ``min(1, (t + 1) / warmup_steps)`` at step ``t``.

    Stacks on top of another scheduler (which sets ``group["lr"]`` first): the
    warm-up factor is applied to whatever lr the step would otherwise use.
    """

    def __init__(self, optimizer, warmup_steps: int, inner=None):
        if not isinstance(warmup_steps, int) or isinstance(warmup_steps, bool) or warmup_steps < 1:
            raise ValueError(f"warmup_steps must be a positive integer, got {warmup_steps!r}")
        self.optimizer, self.warmup_steps, self.inner = optimizer, warmup_steps, inner
        self.last_epoch = 0
        self._target = [g["lr"] for g in optimizer.param_groups]
        self._apply()

    def _apply(self):
        f = min(1.0, (self.last_epoch + 1) / self.warmup_steps)
        for g, lr in zip(self.optimizer.param_groups, self._target):
            g["lr"] = lr * f

    def step(self, *args):
        if self.inner is not None:
            for g, lr in zip(self.optimizer.param_groups, self._target):
                g["lr"] = lr
            self.inner.step(*args)
            self._target = [g["lr"] for g in self.optimizer.param_groups]
        self.last_epoch += 1
        self._apply()

    def get_last_lr(self) -> list:
        return [g["lr"] for g in self.optimizer.param_groups]

    def state_dict(self) -> dict:
        return {"last_epoch": self.last_epoch, "target": list(self._target),
                "inner": self.inner.state_dict() if self.inner is not None else None}

    def load_state_dict(self, sd: dict):
        self.last_epoch = int(sd["last_epoch"])
        self._target = list(sd["target"])
        if self.inner is not None and sd.get("inner") is not None:
            self.inner.load_state_dict(sd["inner"])
        self._apply()


def scale_learning_rate(optimizer, world_size: int, per_rank_batch: int):
    """Linear scaling rule: each group's lr x (global batch / per-rank batch)."""
    for g in optimizer.param_groups:
        g["lr"] = _scale_lr(g["lr"], per_rank_batch * world_size, per_rank_batch)
        if "initial_lr" in g:
            g["initial_lr"] = _scale_lr(g["initial_lr"], per_rank_batch * world_size,
                                        per_rank_batch)


def fit(model, optimizer, train_loader, val_loader=None, *, comm=None, scale_lr: bool = False,
        warmup_steps: int = 0, clip: float | None = None, scheduler=None, log_dir=None,
        checkpoint_dir=None, resume=False, progress="auto", **kwargs):
    """:func:`dlprimer.train.fit` over all ranks of ``comm`` (default: :func:`init`'s).

    Same arguments as the single-process fit, plus ``scale_lr`` and
    ``warmup_steps`` (see the module docstring). ``train_loader`` is per rank: its
    ``batch_size`` is the per-rank batch. Returns rank 0's FitResult on rank 0
    and each rank's own on the others.
    """
    from . import get_communicator, init, is_initialized
    from ..train import fit as _fit
    if comm is None:
        comm = get_communicator() if is_initialized() else init("auto")
    main = comm.rank == 0
    shard_loader(train_loader, comm=comm)
    broadcast_parameters(optimizer, comm=comm)
    buffers = [b for b in model.buffers()] if callable(getattr(model, "buffers", None)) else []
    if buffers:
        broadcast_parameters(buffers, comm=comm)
    broadcast_optimizer_state(optimizer, comm=comm)
    if scale_lr:
        scale_learning_rate(optimizer, comm.world_size, train_loader.batch_size)
    if warmup_steps:
        scheduler = LinearWarmup(optimizer, warmup_steps, inner=scheduler)
    if resume:
        path = None
        if main:
            if isinstance(resume, (str, os.PathLike)):
                path = os.fspath(resume)
            elif checkpoint_dir is not None:  # refuses to resume from nothing unless force
                from ..train.extensions import Checkpoints
                path = Checkpoints(checkpoint_dir).resolve_resume(True, kwargs.get("force", False))
        path = comm.broadcast_object(path)
        resume = path if path is not None else False
    dopt = DistributedOptimizer(optimizer, comm=comm, clip=clip)
    return _fit(model, dopt, train_loader, val_loader, scheduler=scheduler,
                log_dir=log_dir if main else None,
                checkpoint_dir=checkpoint_dir if main else None,
                resume=resume, progress=progress if main else False, **kwargs)
