"""`experiments profile`: what one training step of a model costs, on random data of the dataset's shape."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from experiments.build import (
    build_datamodule,
    build_model,
    build_module,
    build_trainer,
    new_summary,
    resolve_device,
)
from experiments.data import Synthetic
from experiments.errors import RunFailed, UserError
from experiments.logging import comet
from experiments.logging.record import write_json
from experiments.measure.cost import TrainingCost

log = logging.getLogger(__name__)


def _gb(n: float | None) -> str:
    return "-" if n is None else f"{n / 1e9:.2f} GB"


def profile_line(summary: dict[str, Any]) -> str:
    """The profile of one config as a single terminal line."""
    step = summary["step_time_ms"]
    name = f"{summary['arch']}{summary['depth']}" + (
        " memory-efficient" if summary["memory_efficient"] else ""
    )
    return (
        f"{name:<32} batch {summary['batch_size']:<4} "
        f"params {summary['params'] / 1e6:6.2f}M  FLOPs {summary['flops_per_image'] / 1e9:6.2f}G/img  "
        f"activations {_gb(summary['activation_bytes'])}  peak {_gb(summary['peak_memory_bytes'])}  "
        f"step {step:.0f} ms (p90 {summary['step_time_p90_ms']:.0f})  {summary['throughput']:.0f} img/s"
    )


def profile(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Build the model, time a few training steps, and write summary.json (training-only keys null).

    It measures at `profile.batch_size` (64 unless set; null for the dataset's batch size).
    """
    warmup, steps, batch_size = cfg.profile.warmup_steps, cfg.profile.steps, cfg.profile.batch_size
    if not isinstance(steps, int) or steps < 1 or not isinstance(warmup, int) or warmup < 0:
        raise UserError(f"profile.steps must be >= 1 and profile.warmup_steps >= 0, got {steps} and {warmup}")
    if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
        raise UserError(f"profile.batch_size must be a positive integer or null, got {batch_size!r}")
    started = time.perf_counter()
    run_dir.mkdir(parents=True, exist_ok=True)
    device = resolve_device(cfg)
    shape = build_datamodule(cfg)  # only its shape: nothing is loaded or downloaded
    shape.batch_size = batch_size or shape.batch_size
    model = build_model(cfg, shape)
    summary = new_summary("profile", cfg, model, shape, device, counts=True)
    data = Synthetic(
        "synthetic",
        image_size=shape.image_size,
        channels=shape.in_channels,
        num_classes=shape.num_classes,
        train_size=(warmup + steps) * shape.batch_size,
        val_size=1,
        test_size=1,
        batch_size=shape.batch_size,
        seed=cfg.seed,
    )
    cost = TrainingCost(warmup_steps=warmup)
    trainer = build_trainer(
        cfg,
        devices=1,
        strategy="auto",
        max_steps=warmup + steps,
        limit_val_batches=0,
        precision=device.precision,
        logger=False,
        callbacks=[cost],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=run_dir,
    )
    comet_run = comet.start(
        cfg.logger, run_dir, comet.run_label(summary), ["profile", *comet.run_tags(summary)]
    )
    try:
        trainer.fit(build_module(cfg, model, device), datamodule=data)
        summary.update(cost.summary(), status="completed")
    except Exception as error:  # out of memory, most likely: the record says so
        summary["error"] = f"{type(error).__name__}: {error}"
    summary["wall_time_s"] = round(time.perf_counter() - started, 2)
    summary["comet"] = comet_run.finish(summary) if comet_run else {"mode": "disabled"}
    write_json(run_dir / "summary.json", summary)
    if summary["status"] != "completed":
        raise RunFailed(f"profile failed: {summary['error']} (record: {run_dir / 'summary.json'})")
    log.info(profile_line(summary))
    return summary
