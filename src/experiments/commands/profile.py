"""`experiments profile`: what one training step of a model costs, on random data of the dataset's shape."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from experiments.build import build_datamodule, build_model, build_module, build_trainer, new_record
from experiments.data import Synthetic
from experiments.device import resolve_device
from experiments.errors import RunFailed, describe
from experiments.measure.cost import TrainingCost
from experiments.plan import Plan
from experiments.record import RunRecord, write_record
from experiments.step_graph import WARMUP_STEPS
from experiments.tracking import comet

log = logging.getLogger(__name__)


def profile(
    plan: Plan, run_dir: Path, sweep: str | None = None, packed_with: list[str] | None = None
) -> RunRecord:
    """Build the model, time a few training steps, and write its record (the training-only keys null).

    It measures at `profile.batch_size` (64 unless set; null for the dataset's batch size). Where training
    would run its steps as CUDA-graph replays, the untimed steps include the capture, so the timed steps are
    replays too: `step_timing` says how they ran.
    """
    started = time.perf_counter()
    run_dir.mkdir(parents=True, exist_ok=True)  # called directly (benchmarks), not through app
    device = resolve_device(plan.recipe)
    dataset = build_datamodule(plan.subject)  # for its shape only: nothing is loaded or downloaded
    dataset.batch_size = plan.profile.batch_size or dataset.batch_size
    model = build_model(plan.subject, dataset)
    record = new_record("profile", plan, model, dataset, device, sweep, packed_with)
    warmup = plan.profile.warmup_steps
    if device.cuda_graph:
        warmup = max(warmup, WARMUP_STEPS + 1)
    steps = warmup + plan.profile.steps
    data = Synthetic.like(dataset, steps * dataset.batch_size, plan.subject.seed)
    cost = TrainingCost(warmup_steps=warmup, measure_memory=not packed_with)
    trainer = build_trainer(
        plan.recipe,
        devices=1,
        strategy="auto",
        max_steps=steps,
        limit_val_batches=0,
        precision=device.precision,
        callbacks=[cost],
        default_root_dir=run_dir,
    )
    tracker = comet.start(
        plan.logger, run_dir, record.name, ["profile", *comet.run_tags(record)], record=record
    )
    try:
        trainer.fit(build_module(plan.recipe, model, device), datamodule=data)
        record.update(status="completed", **cost.summary())
    except Exception as error:  # out of memory, most likely: the record says so
        record.error = describe(error)
    record.wall_time_s = round(time.perf_counter() - started, 2)
    record.comet = tracker.finish(record) if tracker else {"mode": "disabled"}
    write_record(run_dir / "summary.json", record)
    if record.status != "completed":
        raise RunFailed(f"profile failed: {record.error} (record: {run_dir / 'summary.json'})")
    log.info(profile_line(record))
    return record


def _gb(n: float | None) -> str:
    return "-" if n is None else f"{n / 1e9:.2f} GB"


def profile_line(record: RunRecord) -> str:
    """The profile of one config as a single terminal line."""
    name = f"{record.arch}{record.depth}" + (" memory-efficient" if record.memory_efficient else "")
    return (
        f"{name:<32} batch {record.batch_size:<4} params {record.params / 1e6:6.2f}M  "
        f"MACs {record.macs_per_image / 1e9:6.3f}G/img  activations {_gb(record.activation_bytes)}  "
        f"peak {_gb(record.peak_memory_bytes)}  step {record.step_time_ms:.0f} ms "
        f"(p90 {record.step_time_p90_ms:.0f}, {record.step_timing})  {record.throughput:.0f} img/s"
    )
