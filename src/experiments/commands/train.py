"""`experiments train`: one run, top to bottom: build, fit, test, record."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from pytorch_lightning.utilities import rank_zero_only

from experiments import distributed
from experiments.build import build_training
from experiments.device import resolve_device
from experiments.measure.instruments import Instruments
from experiments.measure.param_grads import per_epoch
from experiments.measure.reuse import write_feature_reuse
from experiments.models import DenseNet
from experiments.outcome import fit_and_test
from experiments.plan import Plan
from experiments.record import RunRecord, read_metrics, write_record
from experiments.tracking.epochs import EpochRecord
from experiments.tracking.run_loggers import open_loggers

log = logging.getLogger(__name__)


def train(
    plan: Plan, run_dir: Path, sweep: str | None = None, packed_with: list[str] | None = None
) -> RunRecord:
    """Train, test and record one run in `run_dir`, resuming it if it was cut short; returns its record.
    `sweep` is the multirun directory it belongs to; `packed_with`, the runs it shares a process with."""
    started = time.perf_counter()
    run_dir.mkdir(parents=True, exist_ok=True)  # called directly (benchmarks), not through app
    if plan.recipe.deterministic:  # cuBLAS reads it when CUDA starts: before anything touches the GPU
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    device = resolve_device(plan.recipe)
    instruments = Instruments.build(plan.recipe.measure, run_dir, shared_process=bool(packed_with))
    epochs = EpochRecord(run_dir / "metrics.csv", print_lines=not sys.stdout.isatty())
    run = build_training(plan, device, instruments, run_dir, [epochs], sweep=sweep, packed_with=packed_with)
    if packed_with:  # runs packed in one process share its log: each epoch's line says whose it is
        epochs.prefix = f"{run.record.name}: "
    leader = rank_zero_only.rank == 0  # rank 0 logs and records the run
    if leader:
        log.info(
            f"{run.record.name}: {run.record.params:,} parameters, {run.record.stem} stem, run dir {run_dir}"
        )
        if run.resume.path:
            log.info(f"resuming from {run.resume.path}, saved at the end of epoch {run.resume.epoch + 1}")
    resumed_at = (run.resume.epoch, run.resume.step)
    tracker, run.trainer.loggers = open_loggers(
        plan.logger, run_dir, run.record, plan.config, resumed_at, tracked=leader
    )
    outcome = fit_and_test(run.trainer, run.module, run.datamodule, run.resume.path, plan, run_dir)
    summary = run_dir / "summary.json" if leader else None
    if summary is not None:
        if outcome.status == "completed" and isinstance(run.model, DenseNet):
            write_feature_reuse(run.model, run_dir)
        rows = read_metrics(run_dir / "metrics.csv")
        steps = run.module.step_graph.replays if run.module.step_graph else 0
        run.record.update(
            **outcome.fields,
            **_final_epoch(rows),
            **instruments.summary(),
            cuda_graph_steps=steps,
            param_grad_norms=per_epoch(rows),
        )
        run.record.wall_time_s = round(time.perf_counter() - started, 2)
    if tracker:  # the record first, whole: a Ctrl+C may cut Comet's end short
        run.record.comet = tracker.info
        write_record(summary, run.record)
        run.record.comet = tracker.finish(run.record)
    return outcome.conclude(run.record, summary)


def _final_epoch(rows: list[dict[str, Any]]) -> dict[str, float | None]:
    """The record's figures of the final epoch, from metrics.csv: the last row, and the last that validated
    (validation may skip epochs: trainer.check_val_every_n_epoch)."""
    final = rows[-1] if rows else {}
    validated = next((row for row in reversed(rows) if "val/acc" in row), {})
    return {
        "train_error": _error(final.get("train/acc")),
        "val_error": _error(validated.get("val/acc")),
        "train_loss": final.get("train/loss"),
        "val_loss": validated.get("val/loss"),
    }


def _error(accuracy: float | None) -> float | None:
    return None if accuracy is None else 1 - accuracy


def run_worker() -> int:
    """Entry point of a DDP rank started by Lightning (experiments.distributed): train the parent's run; rank
    0 records it."""
    from experiments.tracking.noise import silence_library_noise

    silence_library_noise()
    spec = json.loads(os.environ[distributed.WORKER_ENV])
    train(Plan.of(spec["config"]), Path(spec["run_dir"]))
    return 0
