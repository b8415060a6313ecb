"""The training loop as a :class:`Trainer` that calls :class:`Extension` objects.

The Trainer owns only the loop of the chapter's training step (Algorithm 1: zero the
gradients, forward, loss, backward, optimizer step), evaluation at the end of each
epoch, and stopping: on a step or epoch budget, when an extension asks, or when the
loss or the gradient norm stops being finite (:class:`TrainingDiverged`). Everything
else (progress, metric logs, training checkpoints, early stopping, gradient
diagnostics, learning-rate schedules, clipping, timing, memory) is an extension
called at named points, in the manner of Chainer's ``training.extensions`` and
Keras/Lightning callbacks:

========================  ============================================================
``on_run_start(t)``       before the first step (after a resume has been restored)
``on_epoch_start(t)``     before each epoch's first batch
``on_step_start(t)``      before ``zero_grad``; ``t.observe(obj)`` adds an autograd
                          observer for this step's forward
``on_backward_end(t, r)`` gradients are ready, the step not taken (clip here)
``on_step_end(t, r)``     after the optimizer step; ``r`` is the step record
``on_evaluate_end(t, r)`` the epoch record holds the validation metrics
``on_epoch_end(t, r)``    the epoch record is final and the counters have advanced
``on_record(t, r)``       any other record (warnings, divergence) to write out
``on_message(t, text)``   a line for the user
``on_interrupt(t)``       Ctrl-C (KeyboardInterrupt) during the run
``on_run_end(t)``         always, last; ``t.completed`` says whether the run finished
========================  ============================================================

Extensions run in ``priority`` order (higher first; insertion order among equals):
those that act on the step or fill in records (:data:`PRIORITY_ACT`), then those that
write records out (:data:`PRIORITY_RECORD`), then those that save what the others
produced (:data:`PRIORITY_SAVE`). ``state_dict()``/``load_state_dict()`` carry what
an extension must keep across a resume; the training checkpoint holds them.
"""
from __future__ import annotations

import contextlib
import math
import signal
import threading
import time
import warnings

from ..autograd import observe
from ..backend.checks import check_deferred
from .diagnostics import SqNorms, diagnose_nonfinite, likely_cause
from .records import (FitResult, TrainingDiverged, TrainingInterrupted, default_loss, evaluate,
                      lr_of, named_params)

PRIORITY_ACT = 300
PRIORITY_RECORD = 200
PRIORITY_SAVE = 100


class Extension:
    """One concern of the training loop; override the hooks it needs (all no-ops)."""

    priority = PRIORITY_RECORD

    def on_run_start(self, trainer): pass
    def on_epoch_start(self, trainer): pass
    def on_step_start(self, trainer): pass
    def on_backward_end(self, trainer, record): pass
    def on_step_end(self, trainer, record): pass
    def on_evaluate_end(self, trainer, record): pass
    def on_epoch_end(self, trainer, record): pass
    def on_record(self, trainer, record): pass
    def on_message(self, trainer, text): pass
    def on_interrupt(self, trainer): pass
    def on_run_end(self, trainer): pass

    def state_dict(self) -> dict:
        """Flat keys saved in the training checkpoint's run state."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Called on resume with the whole run state of the checkpoint."""


def _positive_int(value, what, allow_none=False):
    if value is None and allow_none:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{what} must be a positive integer, got {value!r}")


def _fresh_acc() -> dict:
    return {"loss_sum": 0.0, "n": 0, "correct": 0, "time": 0.0, "mem_peak": 0, "classify": False}


@contextlib.contextmanager
def _timed(backend, times, key):
    """Add the seconds of the block (``backend.timer()``) to ``times[key]``."""
    t = backend.timer()
    with t:
        yield
    times[key] += t.elapsed


class Trainer:
    """Train ``model`` with ``optimizer`` on ``train_loader`` for ``epochs`` passes (or
    ``steps`` optimizer steps), calling ``extensions`` at the named points.

    ``run()`` returns a :class:`FitResult`. Attributes extensions read: ``model``,
    ``optimizer``, ``params``, ``named``, ``backend``, ``step`` (steps taken),
    ``epoch``, ``batch`` (x, y), ``output``, ``loss``, ``times`` (this step's phase
    seconds: ``zero_grad``, ``forward``, ``backward``, ``optimizer``), ``acc`` (the
    epoch's running sums), ``result``; ``is_log_step`` says whether this step's record
    is kept (every ``log_every``-th). ``accumulate=k``: each optimizer step takes k
    micro-batches from the loader (gradient accumulation; ``step_samples`` is the
    step's sample count, ``batch`` its last micro-batch).
    """

    def __init__(self, model, optimizer, train_loader, val_loader=None, *, epochs: int = 1,
                 steps: int | None = None, loss_fn=None, extensions=(), log_every: int = 1,
                 accumulate: int = 1, graphed_step=None):
        if steps is None:
            _positive_int(epochs, "epochs")
        _positive_int(steps, "steps", allow_none=True)
        _positive_int(log_every, "log_every")
        _positive_int(accumulate, "accumulate")
        if not callable(model) or not callable(getattr(model, "parameters", None)):
            raise TypeError(f"fit: model must be a Module (callable with parameters()), got "
                            f"{type(model).__name__}")
        if not (callable(getattr(optimizer, "step", None))
                and callable(getattr(optimizer, "zero_grad", None))):
            raise TypeError(f"fit: optimizer needs step() and zero_grad(), got "
                            f"{type(optimizer).__name__}")
        from ..backend import get_backend
        self.model, self.optimizer = model, optimizer
        self.train_loader, self.val_loader = train_loader, val_loader
        self.epochs, self.steps, self.log_every = epochs, steps, log_every
        self.accumulate = accumulate
        self.step_samples = 0
        self.loss_fn = loss_fn or default_loss
        self.named = named_params(model)
        self.params = [p for _, p in self.named]
        self.backend = self.params[0].backend if self.params else get_backend()
        self.norms = SqNorms(self.named)
        self.extensions: list[Extension] = []
        for ext in extensions:
            self.extend(ext)
        self.step, self.epoch, self.acc = 0, 0, _fresh_acc()
        self.warned: set[str] = set()
        self.result = FitResult()
        self.resumed_from = None
        self.completed = self.stopping = False
        self.batch = self.output = self.loss = None
        self.times: dict = {}
        self.grad_sq = None
        self.at_boundary = True        # between steps: the state is whole (checkpointable)
        self.timing_disturbed = False  # a meter slowed this step (left out of time_train)
        self._observers: list = []
        self._recent_gnorms: list = []
        self._sigint = False
        #: a captured CUDA graph of the whole step (``dp.cuda.make_graphed_step``): it
        #: zeroes, runs forward and backward, clips and steps; the loop only replays it.
        self.graphed_step = graphed_step

    # -- configuration ---------------------------------------------------------------
    def extend(self, extension: Extension) -> Trainer:
        """Add an extension (kept sorted by priority, stable among equals)."""
        if not isinstance(extension, Extension):
            raise TypeError(f"extensions must be Extension instances, got "
                            f"{type(extension).__name__}")
        self.extensions.append(extension)
        self.extensions.sort(key=lambda e: -e.priority)
        return self

    def find(self, cls):
        """The first extension of type ``cls``, or None."""
        return next((e for e in self.extensions if isinstance(e, cls)), None)

    @property
    def scheduler(self):
        return next((e.scheduler for e in self.extensions if getattr(e, "scheduler", None)), None)

    @property
    def total_steps(self) -> int:
        return self.steps if self.steps is not None else self.epochs * len(self.train_loader)

    @property
    def is_log_step(self) -> bool:
        return self.step % self.log_every == 0

    # -- what extensions call ----------------------------------------------------------
    def call(self, hook: str, *args):
        for ext in self.extensions:
            getattr(ext, hook)(self, *args)

    def observe(self, observer):
        """Attach an autograd observer to this step's forward (from ``on_step_start``)."""
        self._observers.append(observer)

    def request_stop(self):
        """Stop after this epoch's bookkeeping (an extension's decision)."""
        self.stopping = True

    def emit(self, record: dict):
        self.call("on_record", record)

    def message(self, text: str):
        self.call("on_message", text)

    def warn(self, kind: str, category, message: str):
        """Warn once per ``kind`` per run: a Python warning, a record and a line."""
        if kind in self.warned:
            return
        self.warned.add(kind)
        warnings.warn(message, category, stacklevel=4)
        rec = {"event": "warning", "step": self.step, "kind": category.__name__, "message": message}
        self.result.warnings.append(rec)
        self.emit(rec)
        self.message(f"warning: {message}")

    def run_state(self) -> dict:
        """What a training checkpoint keeps besides model/optimizer/scheduler/loader."""
        state = {"epoch": self.epoch, "acc": self.acc, "warned": sorted(self.warned),
                 "stopped_early": self.result.stopped_early}
        for ext in self.extensions:
            state.update(ext.state_dict())
        return state

    def load_run_state(self, run: dict, step: int, resumed_from: str):
        self.step, self.resumed_from = int(step), resumed_from
        self.epoch = int(run.get("epoch", 0))
        self.acc = dict(run.get("acc") or _fresh_acc())
        self.warned = set(run.get("warned", []))
        self.result.stopped_early = bool(run.get("stopped_early", False))
        self.result.resumed_from = resumed_from
        for ext in self.extensions:
            ext.load_state_dict(run)

    @property
    def finished(self) -> bool:
        """The budget is spent or the run stopped early (a resumed finished run)."""
        if self.result.stopped_early:
            return True
        if self.steps is not None:
            return self.step >= self.steps
        return self.epoch >= self.epochs

    # -- the loop ----------------------------------------------------------------------
    def run(self) -> FitResult:
        """Run to the end of the budget (or an early stop); returns :attr:`result`.

        Ctrl-C (SIGINT, in the main thread) is deferred to the end of the running step
        (or epoch end), so ``on_interrupt`` sees a whole step (the checkpoint extension
        saves it); a second Ctrl-C interrupts at once, and nothing is saved.
        """
        self.result.step = self.step
        if self.finished:
            return self._already_complete()
        if callable(getattr(self.model, "train", None)):
            self.model.train()
        try:
            with self._deferred_sigint():
                self.call("on_run_start")
                while not self.finished and not self.stopping:
                    self._run_epoch()
            self.completed = True
        except KeyboardInterrupt:
            self.call("on_interrupt")
            msg = self._interrupt_message()
            self.message(msg)
            raise TrainingInterrupted(msg, self.step, self.result.checkpoint,
                                      self.result.checkpoint_step) from None
        finally:
            self.result.step = self.step
            self.call("on_run_end")
        return self.result

    def _already_complete(self) -> FitResult:
        self.result.already_complete = self.completed = True
        self.message(f"run already complete: {self.resumed_from} holds step {self.step}, "
                     "the end of its budget; nothing to train")
        self.call("on_run_end")
        return self.result

    def _interrupt_message(self) -> str:
        saved, held = self.result.checkpoint, self.result.checkpoint_step
        if saved and held == self.step and self.at_boundary:
            return f"interrupted at step {self.step}: checkpoint {saved} holds step {held}"
        if saved:
            return (f"interrupted in step {self.step + 1}; the last checkpoint, {saved}, "
                    f"holds step {held}")
        return f"interrupted at step {self.step} (no checkpoint: pass checkpoint_dir to keep one)"

    @contextlib.contextmanager
    def _deferred_sigint(self):
        main = threading.current_thread() is threading.main_thread()
        if not main or signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
            yield
            return

        def handler(signum, frame):
            if self._sigint:  # the second Ctrl-C: at once, mid-step (no checkpoint)
                self.at_boundary = False
                raise KeyboardInterrupt
            self._sigint = True  # finish this step (or epoch end), then stop: _check_sigint

        signal.signal(signal.SIGINT, handler)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, signal.default_int_handler)

    def _check_sigint(self):
        if self._sigint:
            raise KeyboardInterrupt

    def _run_epoch(self):
        t_epoch = time.perf_counter()
        self.call("on_epoch_start")
        group = []
        for x, y in self.train_loader:
            group.append((x, y))
            if len(group) < self.accumulate:
                continue
            self._train_step(group)
            group = []
            self._check_sigint()
            if self.steps is not None and self.step >= self.steps:
                self.stopping = True
                break
        if group:  # the epoch's last micro-batches, fewer than ``accumulate``
            self._train_step(group)
            if self.steps is not None and self.step >= self.steps:
                self.stopping = True
        self._end_epoch(t_epoch)

    def _train_step(self, micro):
        """One step of the chapter's Algorithm 1, with named points around it, over the
        micro-batches ``micro`` [(x, y), ...]: each one's forward and backward runs in
        turn, its loss scaled by its share of the step's samples, n_i / sum n_j, so
        that the gradients summed in ``.grad`` are those of the mean loss over all of
        them (equal to one batch of all the samples, for a loss that is a mean over
        the batch); then one optimizer step."""
        backend, optimizer = self.backend, self.optimizer
        x, y = micro[-1]
        self.batch, self._observers = (x, y), []
        self.at_boundary, self.timing_disturbed = False, False
        rng_before = backend.get_rng_state()
        self.call("on_step_start")
        self.step_samples = total = sum(len(b) for _, b in micro)
        times = dict.fromkeys(("zero_grad", "forward", "backward", "optimizer"), 0.0)
        graphed = self.graphed_step
        with _timed(backend, times, "zero_grad"):
            if graphed is None:
                optimizer.zero_grad()
        loss_val = 0.0
        for x, y in micro:
            with contextlib.ExitStack() as stack:
                for obs in self._observers:
                    stack.enter_context(observe(obs))
                with _timed(backend, times, "forward"):
                    if graphed is not None:    # the whole step, replayed: its time is forward's
                        self.output, self.loss = graphed(x, y)
                    else:
                        self.output = self.model(x)
                        self.loss = self.loss_fn(self.output, y)
            share = len(y) / total
            if graphed is None:
                with _timed(backend, times, "backward"):
                    (self.loss if len(micro) == 1 else self.loss * share).backward()
            lv = float(self.loss.item())
            loss_val += lv * share
            self._accumulate(lv, y)
        self.batch = (x, y)
        rec = self._gradient_record(x, y, rng_before, loss_val)
        self.call("on_backward_end", rec)
        with _timed(backend, times, "optimizer"):
            if graphed is None:
                optimizer.step()
        rec["lr"] = lr_of(optimizer)
        self.step += 1
        rec["step"] = self.step
        if len(micro) > 1:
            rec["micro_batches"] = len(micro)
        self.times = times
        if self.is_log_step:
            self.result.steps.append(rec)
        self.call("on_step_end", rec)
        self.at_boundary = True

    def _gradient_record(self, x, y, rng_before, loss_val) -> dict:
        """The step record so far: loss (over all the step's micro-batches), global and
        per-layer gradient norms; raises :class:`TrainingDiverged` when either is NaN/inf."""
        check_deferred()   # device-side flags (a bad target, a skipped step), read at logging
        sq = self.norms.per_layer([p.grad.data if p.grad is not None else None
                                   for p in self.params], self.backend)
        gnorm = float(math.sqrt(sq.sum()))
        if not (math.isfinite(loss_val) and math.isfinite(gnorm)):
            self.backend.set_rng_state(rng_before)
            self._diverged(x, y, loss_val, gnorm)
        self.grad_sq = sq
        self._recent_gnorms = (self._recent_gnorms + [gnorm])[-50:]
        rec = {"event": "step", "step": self.step + 1, "epoch": self.epoch, "loss": loss_val,
               "lr": None, "grad_norm": gnorm}
        for lay, s in zip(self.norms.layers, sq):
            rec[f"grad_norm/{lay}"] = float(math.sqrt(s))
        return rec

    def _diverged(self, x, y, loss_val, gnorm):
        rep = diagnose_nonfinite(self.model, self.loss_fn, x, y, self.named)
        what = "loss" if not math.isfinite(loss_val) else "gradient norm"
        value = loss_val if what == "loss" else gnorm
        wsq = self.norms.per_layer([p.data for p in self.params], self.backend)
        cause = likely_cause(lr_of(self.optimizer), self._recent_gnorms, math.sqrt(wsq.sum()))
        msg = (f"training stopped at step {self.step + 1}: the {what} is {value}. "
               f"{rep['message']}. {cause}")
        rec = {"event": "diverged", "step": self.step + 1, "message": msg,
               **{k: v for k, v in rep.items() if isinstance(v, (str, int, float))}}
        self.result.warnings.append(rec)
        self.emit(rec)
        self.message(msg)
        raise TrainingDiverged(msg, step=self.step + 1, report=rep)

    def _accumulate(self, loss_val, y):
        acc, out = self.acc, self.output
        b = len(y)
        acc["loss_sum"] += loss_val * b
        acc["n"] += b
        if y.dtype.kind in "iu" and out.ndim == 2:
            acc["classify"] = True
            acc["correct"] += int((out.data.argmax(axis=-1) == y.data).sum())

    def _end_epoch(self, t_epoch):
        """The epoch record, validation, then (unless the epoch is partial: a step budget
        hit mid-epoch, whose running sums a resume completes) the counters advance."""
        self.at_boundary = False
        loader, acc = self.train_loader, self.acc
        pos = getattr(loader, "position", 0)
        if self.stopping and pos >= len(loader) and hasattr(loader, "set_epoch"):
            loader.set_epoch(loader.epoch + 1)
            pos = 0
        partial = bool(self.stopping and pos)
        rec = {"event": "epoch", "step": self.step, "epoch": self.epoch, "partial": partial,
               "train_loss": acc["loss_sum"] / max(acc["n"], 1), "lr": lr_of(self.optimizer),
               "time_epoch": time.perf_counter() - t_epoch}
        if acc["classify"]:
            rec["train_acc"] = acc["correct"] / max(acc["n"], 1)
        if self.val_loader is not None:
            rec.update(evaluate(self.model, self.val_loader, self.loss_fn))
        self.call("on_evaluate_end", rec)
        self.result.epochs.append(rec)
        if not partial:
            self.epoch += 1
            self.acc = _fresh_acc()
        self.call("on_epoch_end", rec)
        self.at_boundary = True
        self._check_sigint()
