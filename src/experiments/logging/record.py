"""The run's local record: metrics.csv (a row per epoch) and summary.json, both written atomically."""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import pytorch_lightning as pl
import torch

log = logging.getLogger(__name__)
# summary.json keys only a training run fills (null in a profile, or before a run's end)
TRAINING_KEYS = ("epochs", "train_error", "val_error", "test_error", "train_loss", "val_loss")


def write_atomic(path: Path, text: str) -> None:
    """Write via a temporary file and a rename, so a killed process never leaves half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json(path: Path, data: dict[str, Any]) -> None:
    write_atomic(path, json.dumps(data, indent=2, default=str) + "\n")


def read_rows(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def write_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    columns: dict[str, None] = {}
    for row in rows:
        columns.update(dict.fromkeys(row))
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_atomic(path, text.getvalue())


def _format(value: float) -> str:
    return "nan" if math.isnan(value) else f"{value:.4g}"


class EpochMetrics(Protocol):
    def end_epoch(self) -> dict[str, float]: ...


PRINTED = ("train/loss", "train/acc", "val/loss", "val/acc", "lr")
TIMINGS = ("step_time_ms",)  # measured, not computed: logged and printed but kept out of metrics.csv


class EpochRecord(pl.Callback):
    """Appends one row per epoch to metrics.csv: epoch, step, lr, train/val loss and accuracy, and what
    `extras` measured over the epoch (gradient norms). Timings go to the loggers only, so that a seeded
    run on a CPU writes the same metrics.csv every time. When `print_lines`, prints each epoch as one
    line (for logs that are not a terminal: CI, SLURM).

    On resume, rows of epochs that will run again are dropped, so every epoch appears exactly once.
    """

    def __init__(self, path: Path, print_lines: bool, extras: Sequence[EpochMetrics] = ()) -> None:
        self.path, self.print_lines, self.extras = path, print_lines, extras
        self.rows: list[dict[str, Any]] = read_rows(path)  # kept if fit has no epoch left to run

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.rows = [r for r in read_rows(self.path) if int(r["epoch"]) < trainer.current_epoch]

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.started = time.perf_counter()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        pl_module.log_epoch("train")  # the Classifier's training loss and accuracy, into callback_metrics
        measured = {k: v for extra in self.extras for k, v in extra.end_epoch().items()}
        if not trainer.is_global_zero:
            return
        metrics = {k: v.item() for k, v in trainer.callback_metrics.items() if isinstance(v, torch.Tensor)}
        metrics.update(measured)
        recorded = {k: v for k, v in metrics.items() if k not in TIMINGS}
        self.rows.append(
            {"epoch": trainer.current_epoch, "step": trainer.global_step, **dict(sorted(recorded.items()))}
        )
        write_rows(self.path, self.rows)
        timings = {k: v for k, v in metrics.items() if k in TIMINGS}
        timings["epoch_time_s"] = time.perf_counter() - self.started
        for logger in trainer.loggers:
            logger.log_metrics({**timings, "epoch": trainer.current_epoch}, step=trainer.global_step)
        if self.print_lines:
            shown = "  ".join(f"{k} {_format(metrics[k])}" for k in (*PRINTED, *TIMINGS) if k in metrics)
            epoch = f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs}"
            log.info(f"{epoch}  {shown}  ({timings['epoch_time_s']:.1f}s)")
