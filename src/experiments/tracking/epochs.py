"""metrics.csv: one row per epoch, written atomically at the end of each, and the epoch's line in the log."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import pytorch_lightning as pl
import torch

from experiments.record import read_rows, write_rows

log = logging.getLogger(__name__)

PRINTED = ("train/loss", "train/acc", "val/loss", "val/acc", "lr")
TIMINGS = ("step_time_ms",)  # measured, not computed: logged and printed but kept out of metrics.csv


def _format(value: float) -> str:
    return "nan" if math.isnan(value) else f"{value:.4g}"


class EpochRecord(pl.Callback):
    """Appends one row per epoch to metrics.csv: epoch, step, lr, val loss and accuracy (logged by the module
    into Lightning's callback metrics) and what each of `sources` returns for the epoch (the module's train
    loss and accuracy, step time, parameter-gradient norms). Timings go to the loggers only, so that a seeded
    run on a CPU writes the same metrics.csv every time. With `print_lines`, each epoch is also one line of
    the log (for logs that are not a terminal: CI, SLURM).

    On resume, rows of epochs that will run again are dropped, so every epoch appears exactly once.
    """

    def __init__(
        self,
        path: Path,
        print_lines: bool,
        sources: Sequence[Callable[[], Mapping[str, float]]],
        prefix: str = "",
    ) -> None:
        self.path, self.print_lines, self.sources, self.prefix = path, print_lines, sources, prefix
        self.rows = read_rows(path)  # kept if fit has no epoch left to run

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.rows = [r for r in read_rows(self.path) if int(r["epoch"]) < trainer.current_epoch]

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.started = time.perf_counter()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        measured = {key: value for source in self.sources for key, value in source().items()}  # every rank
        if not trainer.is_global_zero:
            return
        metrics = {k: v.item() for k, v in trainer.callback_metrics.items() if isinstance(v, torch.Tensor)}
        metrics.update(measured)
        recorded = {k: v for k, v in metrics.items() if k not in TIMINGS}
        self.rows.append(
            {"epoch": trainer.current_epoch, "step": trainer.global_step, **dict(sorted(recorded.items()))}
        )
        write_rows(self.path, self.rows)
        # Lightning's loggers get val/ and lr from the module's self.log; these from here
        logged = {k: v for k, v in measured.items() if k.startswith("train/") or k in TIMINGS}
        logged["epoch_time_s"] = time.perf_counter() - self.started
        for logger in trainer.loggers:
            logger.log_metrics({**logged, "epoch": trainer.current_epoch}, step=trainer.global_step)
        if self.print_lines:
            shown = "  ".join(f"{k} {_format(metrics[k])}" for k in (*PRINTED, *TIMINGS) if k in metrics)
            epoch = f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs}"
            log.info(f"{self.prefix}{epoch}  {shown}  ({logged['epoch_time_s']:.1f}s)")
