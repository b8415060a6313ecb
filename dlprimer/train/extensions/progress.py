"""Progress: a tqdm bar on a terminal, plain lines otherwise."""
from __future__ import annotations

import sys

from ..trainer import PRIORITY_RECORD, Extension


class ProgressBar(Extension):
    """tqdm on a terminal; otherwise a plain line per epoch (and every ~10% of steps).

    mode: "auto" (tqdm when ``stream`` is a terminal), True or False (silent).
    """

    priority = PRIORITY_RECORD

    def __init__(self, mode="auto", stream=None):
        self.mode = mode
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = mode is not False
        self.bar = None
        self.every = 50
        self.epochs = None

    def on_run_start(self, trainer):
        total = trainer.total_steps
        self.epochs = None if trainer.steps is not None else trainer.epochs
        self.every = max(1, total // 10) if total else 50
        tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        if self.enabled and (self.mode is True or self.mode == "auto") and tty:
            try:
                from tqdm.auto import tqdm
                self.bar = tqdm(total=total, initial=min(trainer.step, total), file=self.stream,
                                unit="step", dynamic_ncols=True, leave=True)
            except ImportError:
                self.bar = None
        if trainer.resumed_from:
            self.on_message(trainer, f"resumed from {trainer.resumed_from} at step {trainer.step}")

    def on_step_end(self, trainer, rec):
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{rec['loss']:.4f}", gnorm=f"{rec['grad_norm']:.3g}",
                                 refresh=False)
        elif trainer.step % self.every == 0:
            self._print(f"step {trainer.step}: loss {rec['loss']:.4f}  "
                        f"grad_norm {rec['grad_norm']:.3g}  lr {rec['lr']:.3g}")

    def on_epoch_end(self, trainer, rec):
        if not self.enabled:
            return
        parts = [f"epoch {rec['epoch'] + 1}" + (f"/{self.epochs}" if self.epochs else ""),
                 f"step {rec['step']}", f"train_loss {rec['train_loss']:.4f}"]
        for k in ("val_loss", "val_acc"):
            if k in rec:
                parts.append(f"{k} {rec[k]:.4f}")
        parts.append(f"({rec['time_epoch']:.2f} s)")
        self._print("  ".join(parts))

    def on_message(self, trainer, text):
        if self.enabled:
            self._print(text)

    def _print(self, line):
        if self.bar is not None:
            self.bar.write(line, file=self.stream)
        else:
            print(line, file=self.stream, flush=True)

    def on_run_end(self, trainer):
        if self.bar is not None:
            self.bar.close()
            self.bar = None
