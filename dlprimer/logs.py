"""Metric logs: JSON Lines always, TensorBoard and MLflow when available.

Every record is a flat dict with ``event`` ("step", "epoch", "warning", ...) and
``step``; :class:`MetricLogger` writes it as one line of ``metrics.jsonl`` and
sends its numeric fields to TensorBoard (``tensorboardX``, the ``log`` extra)
as ``<event>/<key>`` scalars, and to MLflow when it is importable and a
tracking URI is configured.
"""
from __future__ import annotations

import json
import math
import numbers
import os
import sys
import warnings


def _jsonable(v):
    if isinstance(v, bool) or v is None or isinstance(v, str):
        return v
    if isinstance(v, numbers.Integral):
        return int(v)
    if isinstance(v, numbers.Real):
        f = float(v)
        return f if math.isfinite(f) else str(f)   # "nan"/"inf": valid JSON, still readable
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    return str(v)


def read_jsonl(path) -> list[dict]:
    """All records of a metrics.jsonl file (a torn last line is skipped)."""
    out = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return out


def _summary_writer_class():
    """tensorboardX's ``SummaryWriter``, imported without PyTorch when PyTorch is not loaded
    yet: tensorboardX imports torch whenever it can (about 1.2 s, a tenth of a ``primer``
    run) only so that its writers accept torch tensors, and dlprimer logs Python numbers.
    torch is marked absent for that one import and unmarked after; tensorboardX still
    converts a torch tensor it is given later (it imports torch then)."""
    if "torch" in sys.modules or "tensorboardX" in sys.modules:
        from tensorboardX import SummaryWriter
        return SummaryWriter
    sys.modules["torch"] = None     # "import torch" raises ImportError meanwhile
    try:
        from tensorboardX import SummaryWriter
    finally:
        if "torch" in sys.modules and sys.modules["torch"] is None:
            del sys.modules["torch"]
    return SummaryWriter


class MetricLogger:
    """Write metric records to ``log_dir``.

    tensorboard: True (required), False, or "auto" (when tensorboardX imports).
    mlflow: True, False or "auto" (when mlflow imports and MLFLOW_TRACKING_URI is set).
    resume_step: keep only the records of steps <= this (a resumed run rewrites what
    the killed run logged after its last checkpoint), then append.
    """

    def __init__(self, log_dir, tensorboard="auto", mlflow="auto", resume_step=None,
                 run_name: str | None = None, config: dict | None = None):
        self.log_dir = os.fspath(log_dir)
        os.makedirs(self.log_dir, exist_ok=True)
        self.path = os.path.join(self.log_dir, "metrics.jsonl")
        has_config = False
        if resume_step is not None and os.path.exists(self.path):
            from .train.checkpoints import atomic_write
            kept = [r for r in read_jsonl(self.path)
                    if not isinstance(r.get("step"), int) or r["step"] <= resume_step]
            atomic_write(self.path, "".join(json.dumps(r) + "\n" for r in kept).encode())
            has_config = any(r.get("event") == "config" for r in kept)  # one config per run
        elif resume_step is None and os.path.exists(self.path):
            os.unlink(self.path)
        self._f = open(self.path, "a")
        self._tb = None
        self._mlflow = None
        if tensorboard:
            try:
                SummaryWriter = _summary_writer_class()
                # purge what this log_dir's earlier events hold past the resume point (all
                # of it for a fresh run), as metrics.jsonl is rewritten above
                self._tb = SummaryWriter(os.path.join(self.log_dir, "tensorboard"),
                                         purge_step=0 if resume_step is None else resume_step + 1)
            except ImportError:
                if tensorboard is True:
                    raise ImportError("TensorBoard logging needs tensorboardX: "
                                      "pip install 'dlprimer[log]'") from None
        if mlflow:
            try:
                import mlflow as _mlflow
                if mlflow is True or os.environ.get("MLFLOW_TRACKING_URI"):
                    self._mlflow = _mlflow
                    if _mlflow.active_run() is None:
                        _mlflow.start_run(run_name=run_name)
                    if config:
                        _mlflow.log_params({k: str(v)[:250] for k, v in config.items()})
            except ImportError:
                if mlflow is True:
                    raise ImportError("MLflow logging needs mlflow: pip install mlflow") from None
            except Exception as e:  # a misconfigured tracking server must not stop training
                warnings.warn(f"MLflow logging disabled: {type(e).__name__}: {e}", RuntimeWarning)
                self._mlflow = None
        if config is not None and not has_config:
            self.log({"event": "config", "step": 0, **config})

    @property
    def tensorboard_dir(self):
        return os.path.join(self.log_dir, "tensorboard") if self._tb is not None else None

    def log(self, record: dict):
        rec = {k: _jsonable(v) for k, v in record.items()}
        self._f.write(json.dumps(rec) + "\n")
        self._f.flush()
        step = int(record.get("step") or 0)
        event = record.get("event", "step")
        scalars = {k: float(v) for k, v in record.items()
                   if k not in ("step", "event") and isinstance(v, numbers.Real)
                   and not isinstance(v, bool)}
        if event == "config":
            return
        if self._tb is not None:
            for k, v in scalars.items():
                self._tb.add_scalar(f"{event}/{k}", v, step)
            if event == "warning" and "message" in record:
                self._tb.add_text("warnings", str(record["message"]), step)
        if self._mlflow is not None:
            try:
                self._mlflow.log_metrics({f"{event}.{k}".replace("/", ".").replace(":", "_"): v
                                          for k, v in scalars.items() if math.isfinite(v)},
                                         step=step)
            except Exception as e:
                warnings.warn(f"MLflow logging disabled: {type(e).__name__}: {e}", RuntimeWarning)
                self._mlflow = None

    def flush(self):
        self._f.flush()
        if self._tb is not None:
            self._tb.flush()

    def close(self):
        if self._f.closed:
            return
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()
        if self._tb is not None:
            self._tb.close()
        if self._mlflow is not None:
            try:
                self._mlflow.end_run()
            except Exception:
                pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False
