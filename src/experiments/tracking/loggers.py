"""The Lightning loggers a run can have beside metrics.csv: Comet (over an experiment started by
tracking.comet) and Lightning's CSV logger, made to append on resume instead of deleting."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from pytorch_lightning.loggers import CSVLogger
from pytorch_lightning.loggers.csv_logs import ExperimentWriter
from pytorch_lightning.loggers.logger import Logger, rank_zero_experiment
from pytorch_lightning.utilities import rank_zero_only

from experiments.record import flatten, read_rows, write_rows


class CometLogger(Logger):
    """Sends Lightning's logged hyperparameters and metrics to a Comet experiment (rank 0 only).

    Lightning's own CometLogger cannot log offline in 2.5-2.6 (`online=False` becomes `disabled=True`), so
    this one logs to an experiment the run started itself (tracking.comet). Over no experiment (Comet
    disabled: its folder cannot be written) it logs nothing. Comet failing mid-run never fails the run: what
    it refused is noted in comet/comet.log.
    """

    def __init__(self, experiment: Any | None) -> None:
        super().__init__()
        self._experiment = experiment

    @property
    def name(self) -> str:
        return "comet"

    @property
    def version(self) -> str:
        return self._experiment.id if self._experiment is not None else "disabled"

    @property
    @rank_zero_experiment
    def experiment(self) -> Any:
        return self._experiment

    @rank_zero_only
    def log_hyperparams(self, params: Mapping[str, Any], *args: Any, **kwargs: Any) -> None:
        if self._experiment is not None:
            _guarded(self._experiment.log_parameters, flatten(params))

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float | torch.Tensor], step: int | None = None) -> None:
        if self._experiment is None:
            return
        values = {k: v.item() if isinstance(v, torch.Tensor) else v for k, v in metrics.items()}
        epoch = values.pop("epoch", None)
        _guarded(self._experiment.log_metrics, values, step=step, epoch=None if epoch is None else int(epoch))


def _guarded(call: Any, *args: Any, **kwargs: Any) -> None:
    """comet_ml only queues data here; should it raise anyway, the run goes on and comet.log says why."""
    try:
        call(*args, **kwargs)
    except Exception as error:
        logging.getLogger("comet_ml").error(f"could not log {call.__name__}: {error!r}")


class _AppendingWriter(ExperimentWriter):
    """Lightning's CSV writer deletes an existing metrics.csv; this one keeps its rows up to `keep_step` (the
    resumed checkpoint's step: later rows are of steps that run again) and appends."""

    def __init__(self, log_dir: str, keep_step: int) -> None:
        self.keep_step = keep_step
        super().__init__(log_dir)

    def _check_log_dir_exists(self) -> None:
        path = Path(self.metrics_file_path)
        rows = read_rows(path)
        kept = [
            row for row in rows if row.get("step", "") != "" and int(float(row["step"])) <= self.keep_step
        ]
        if kept:
            write_rows(path, kept)
            self.metrics_keys = sorted({key for row in kept for key in row})
        elif rows:
            path.unlink()


class AppendingCSVLogger(CSVLogger):
    """Lightning's CSVLogger in `save_dir/csv/`, continued across a resume (from the checkpoint's step)."""

    def __init__(self, save_dir: str, resume_step: int = -1) -> None:
        super().__init__(save_dir, name="csv", version="")
        self.resume_step = resume_step

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._experiment = _AppendingWriter(self.log_dir, self.resume_step)
        return self._experiment
