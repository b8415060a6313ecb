"""Metric logging: every record to ``log_dir/metrics.jsonl`` (TensorBoard, MLflow too)."""
from __future__ import annotations

from ..trainer import PRIORITY_RECORD, Extension


class MetricLog(Extension):
    """Write the run's config, every kept step record (each ``log_every``-th), every
    epoch record and every warning through :class:`dlprimer.logs.MetricLogger`.

    A resumed run keeps what the log holds up to its checkpoint's step and appends.
    """

    priority = PRIORITY_RECORD

    def __init__(self, log_dir, tensorboard="auto", mlflow="auto", config: dict | None = None):
        self.log_dir, self.tensorboard, self.mlflow = log_dir, tensorboard, mlflow
        self.config = config
        self.logger = None

    def on_run_start(self, trainer):
        from ...logs import MetricLogger
        self.logger = MetricLogger(self.log_dir, tensorboard=self.tensorboard, mlflow=self.mlflow,
                                   resume_step=trainer.step if trainer.resumed_from else None,
                                   config=self.config)
        trainer.result.log_path = self.logger.path

    def on_step_end(self, trainer, rec):
        if trainer.is_log_step:
            self.on_record(trainer, rec)

    def on_epoch_end(self, trainer, rec):
        self.on_record(trainer, rec)

    def on_record(self, trainer, rec):
        if self.logger is not None:
            self.logger.log(rec)

    def on_run_end(self, trainer):
        if self.logger is not None:
            self.logger.close()
