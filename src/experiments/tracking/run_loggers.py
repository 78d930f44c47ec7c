"""The loggers a training run logs to: its Comet experiment (tracking.comet) or the CSV logger, each given
the run's whole config as its hyperparameters."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pytorch_lightning.loggers import Logger

from experiments.plan import LoggerSettings
from experiments.record import RunRecord
from experiments.tracking import comet
from experiments.tracking.loggers import AppendingCSVLogger


def open_loggers(
    settings: LoggerSettings,
    run_dir: Path,
    record: RunRecord,
    config: dict[str, Any],
    resumed_at: tuple[int | None, int] = (None, -1),
    tracked: bool = True,
) -> tuple[comet.CometRun | None, list[Logger]]:
    """The run's Comet experiment (where `tracked`: rank 0 of a distributed run) and its Lightning loggers.
    `resumed_at`: the epoch and global step of the checkpoint it resumes from, if any."""
    epoch, step = resumed_at
    tags = comet.run_tags(record)
    tracker = comet.start(settings, run_dir, record.name, tags, epoch, record=record) if tracked else None
    loggers: list[Logger] = [tracker.logger] if tracker is not None and tracker.experiment is not None else []
    if settings.name == "csv":
        loggers.append(AppendingCSVLogger(str(run_dir), resume_step=step))
    for logger in loggers:
        logger.log_hyperparams(config)
    return tracker, loggers
