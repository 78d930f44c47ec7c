"""`experiments paths RUN_DIR ...`: how much of each finished residual net's gradient comes from paths of each
length (Veit et al. 2016, Fig. 6), into the run's paths.csv and paths.json. The run is read, never changed,
but for those files."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch

from experiments.commands.landscape import (
    add_common_options,
    duration,
    fixed_images,
    open_run,
    progress_bar,
    timed,
    write_measurement,
)
from experiments.errors import UserError
from experiments.over_runs import OneLineParser, main_over_runs, positive_int

log = logging.getLogger(__name__)


def _parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="experiments paths",
        description="The gradient at the stem of trained residual nets by path length: through k residual "
        "branches and the other blocks' skips (Veit et al. 2016, Fig. 6); writes paths.csv and paths.json "
        "in each run directory.",
    )
    add_common_options(parser, images=64)
    parser.add_argument(
        "--samples", type=positive_int, default=8, help="random sets of k blocks per k (default 8)"
    )
    return parser


def paths(run_dir: Path, options: argparse.Namespace) -> str:
    """Write `run_dir`/paths.csv and its sidecar; returns the run's one-line result."""
    from experiments.commands.landscape import device_of
    from experiments.measure import paths as measure

    run = open_run(run_dir, options.init)
    label = run.record.name + (" (initial weights)" if options.init else "")
    blocks = len(measure.residual_blocks(run.model))
    if not blocks:
        raise UserError(f"{run_dir}: {label} has no residual blocks: path lengths are a residual net's")
    device = device_of(options.device)
    batches = fixed_images(run, options.images, options.split, options.seed)
    images, labels = (
        torch.cat([x for x, _ in batches]).to(device),
        torch.cat([y for _, y in batches]).to(device),
    )
    model = run.model.to(device)
    passes = measure.passes(blocks, options.samples)
    net = measure.path_net(model)
    measure.path_gradient(net, images, labels, set())  # the warm-up: the first pass is slower
    _, seconds = timed(lambda: measure.path_gradient(net, images, labels, set()))
    cost = duration(passes * seconds)
    log.info(f"{label}: {blocks} blocks, {passes} backward passes over {len(labels)} images, about {cost}")
    with progress_bar(passes, label) as step:
        rows = measure.path_rows(model, images, labels, options.samples, options.seed, step)
    facts = {"images": len(labels), "bn": "eval mode, the trained running statistics", "precision": "fp64"}
    where = write_measurement(run_dir, "paths", rows, options, device=str(device), **facts)
    first, last, peak = measure.effective_range(rows)
    return (
        f"{label}: {blocks} blocks; 90% of the gradient from paths of {first}-{last} blocks "
        f"(peak at k={peak}) ({where})"
    )


def main(args: list[str]) -> int:
    return main_over_runs(_parser(), args, paths)
