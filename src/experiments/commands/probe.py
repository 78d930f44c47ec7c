"""`experiments probe`: how the signal travels through a net at initialisation (or from a checkpoint), on one
batch: each block's response and backward gradient, each block's weights and what one optimiser step does to
them. Seconds per net on a CPU; writes signals.csv and a record in a run directory of its own."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from experiments.build import build_datamodule, build_model, new_record
from experiments.data import Synthetic
from experiments.device import build_optimizer, resolve_device
from experiments.errors import RunFailed, UserError, describe
from experiments.finished import load_weights
from experiments.measure.signals import StepSignals, WeightSignals
from experiments.plan import Plan
from experiments.record import RunRecord, write_record, write_rows

log = logging.getLogger(__name__)


def probe(
    plan: Plan, run_dir: Path, sweep: str | None = None, packed_with: list[str] | None = None
) -> RunRecord:
    """Measure one training step of the configured net and write signals.csv and summary.json."""
    started = time.perf_counter()
    run_dir.mkdir(parents=True, exist_ok=True)  # called directly (benchmarks), not through app
    checkpoint = plan.recipe.ckpt_path
    torch.manual_seed(plan.subject.seed)
    device = resolve_device(plan.recipe)
    datamodule = build_datamodule(plan.subject)
    images, labels, source = first_batch(datamodule, plan.subject.seed)
    model = build_model(plan.subject, datamodule)
    if checkpoint:
        load_weights(model, checkpoint)
    record = new_record("probe", plan, model, datamodule, device, sweep, packed_with)
    model = model.to("cuda" if device.cuda else "cpu").train()
    images, labels = images.to(next(model.parameters()).device), labels.to(next(model.parameters()).device)
    optimizer = build_optimizer(plan.recipe.optim, device)(p for p in model.parameters() if p.requires_grad)
    try:
        rows = measure_step(model, images, labels, optimizer)
    except Exception as error:  # out of memory, most likely: the record says so
        record.update(error=describe(error), wall_time_s=round(time.perf_counter() - started, 2))
        write_record(run_dir / "summary.json", record)
        raise RunFailed(f"probe failed: {record.error} (record: {run_dir / 'summary.json'})") from None
    write_rows(run_dir / "signals.csv", rows)
    record.update(status="completed", data=source, wall_time_s=round(time.perf_counter() - started, 2))
    write_record(run_dir / "summary.json", record)
    origin = f"from {checkpoint}" if checkpoint else "at initialisation"
    log.info(table(f"{record.name} {origin}, one {source} batch of {record.batch_size}", rows))
    return record


def first_batch(datamodule: Any, seed: int) -> tuple[torch.Tensor, torch.Tensor, str]:
    """A training batch of real images where the dataset is here (nothing is downloaded), else random
    images of its shape; and which it is."""
    if hasattr(datamodule, "batches"):  # an in-memory dataset
        try:
            if datamodule.name != "synthetic":
                datamodule.setup("fit")
                return (*next(iter(datamodule.batches("train", torch.device("cpu")))), "real")
        except UserError:  # not here: torchvision's files are missing
            pass
        data = Synthetic.like(datamodule, datamodule.batch_size, seed)
        data.setup("fit")
        return (*next(iter(data.batches("train", torch.device("cpu")))), "random")
    return (*next(iter(datamodule.train_dataloader())), "real")


def measure_step(
    model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, optimizer: torch.optim.Optimizer
) -> list[dict[str, Any]]:
    """signals.csv's rows (step 0) for one training step of `model` on a batch."""
    signals, weights = StepSignals(model), WeightSignals(model)
    signals.attach()
    try:
        F.cross_entropy(model(images), labels).backward()
    finally:
        signals.detach()
    rows = signals.rows(0) + weights.before_step(0)
    optimizer.step()
    return rows + weights.after_step()


def table(title: str, rows: list[dict[str, Any]]) -> str:
    """The probe's lines: each quantity at the first (the stem), middle and last block, and first/last."""
    lines = [title, f"{'':<17}{'first':>12}{'middle':>12}{'last':>12}{'first/last':>12}"]
    for quantity in ("grad_norm", "response_std", "update_ratio"):
        values = [
            r["value"] for r in rows if r["quantity"] == quantity and r["block"] not in ("fc", "classifier")
        ]
        if values:
            first, middle, last = values[0], values[len(values) // 2], values[-1]
            ratio = first / last if last else float("inf")
            lines.append(f"{quantity:<17}{first:>12.3g}{middle:>12.3g}{last:>12.3g}{ratio:>12.3g}")
    return "\n".join(lines)
