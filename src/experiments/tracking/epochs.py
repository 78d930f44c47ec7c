"""metrics.csv: one row per epoch, written atomically at the end of each, and the epoch's line in the log."""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Protocol, runtime_checkable

import pytorch_lightning as pl

from experiments.measure.param_grads import PREFIX as PARAM_GRAD_PREFIX
from experiments.record import read_rows, write_rows

log = logging.getLogger(__name__)

PRINTED = ("train/loss", "train/acc", "val/loss", "val/acc", "lr")
TIMINGS = ("step_time_ms",)  # measured, not computed: logged and printed but kept out of metrics.csv


def _format(value: float) -> str:
    return "nan" if math.isnan(value) else f"{value:.4g}"


@runtime_checkable
class EpochSource(Protocol):
    """An instrument that adds its figures to each epoch's row (and says them once, then starts afresh)."""

    def end_epoch(self) -> dict[str, float]: ...


class EpochRecord(pl.Callback):
    """Appends one row per epoch to metrics.csv: epoch, step, the module's `epoch_metrics` (loss, accuracy
    and learning rate) and what each instrument among the Trainer's callbacks that is an EpochSource
    returns for the epoch (step time, parameter-gradient norms): the one way a figure reaches metrics.csv.
    The loggers get the same figures, but for the parameter-gradient norms, which their instrument logs step
    by step. Timings go to the loggers only, so that a seeded run on a CPU writes the same metrics.csv every
    time. With `print_lines`, each epoch is also one line of the log (for logs that are not a terminal: CI,
    SLURM), after `prefix`.

    On resume, rows of epochs that will run again are dropped, so every epoch appears exactly once.
    """

    def __init__(self, path: Path, print_lines: bool, prefix: str = "") -> None:
        self.path, self.print_lines, self.prefix = path, print_lines, prefix
        self.sources: list[EpochSource] = []
        self.rows = read_rows(path)  # kept if fit has no epoch left to run

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.sources = [callback for callback in trainer.callbacks if isinstance(callback, EpochSource)]
        self.rows = [r for r in read_rows(self.path) if int(r["epoch"]) < trainer.current_epoch]

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.started = time.perf_counter()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # every rank: the module's figures and the instruments' are reduced over all of them
        measured = {
            **pl_module.epoch_metrics(),
            **{k: v for source in self.sources for k, v in source.end_epoch().items()},
        }
        if not trainer.is_global_zero:
            return
        recorded = {k: v for k, v in measured.items() if k not in TIMINGS}
        self.rows.append(
            {"epoch": trainer.current_epoch, "step": trainer.global_step, **dict(sorted(recorded.items()))}
        )
        write_rows(self.path, self.rows)
        logged = {k: v for k, v in measured.items() if not k.startswith(PARAM_GRAD_PREFIX)}
        logged["epoch_time_s"] = time.perf_counter() - self.started
        for logger in trainer.loggers:
            logger.log_metrics({**logged, "epoch": trainer.current_epoch}, step=trainer.global_step)
        if self.print_lines:
            shown = "  ".join(f"{k} {_format(measured[k])}" for k in (*PRINTED, *TIMINGS) if k in measured)
            epoch = f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs}"
            log.info(f"{self.prefix}{epoch}  {shown}  ({logged['epoch_time_s']:.1f}s)")
