"""`experiments landscape RUN_DIR ...`: the loss landscape around each finished run's trained weights (Li et
al. 2018) and along the line from its initial weights (Goodfellow et al. 2015), into the run's
landscape.csv and landscape.json. The run is read, never changed, but for those files.

Also what the three landscape-family commands (landscape, paths, curvature) share: the run's weights (final,
or initial with --init), a fixed seeded image set, the device, the cost estimate and progress bar, and the
sidecar with the options and the environment.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from experiments.environment import environment
from experiments.errors import UserError
from experiments.over_runs import OneLineParser, main_over_runs, positive_int

log = logging.getLogger(__name__)
Batches = list[tuple[torch.Tensor, torch.Tensor]]
CHUNK = 256  # images per forward pass: large enough to keep a GPU busy, small enough for any CPU's memory


def add_common_options(parser: argparse.ArgumentParser, images: int) -> None:
    """RUN_DIR... and the options every landscape-family command takes."""
    parser.add_argument("runs", nargs="+", type=Path, metavar="RUN_DIR", help="finished training runs")
    parser.add_argument(
        "--images", type=positive_int, default=images, help=f"images of the fixed set (default {images})"
    )
    parser.add_argument(
        "--split",
        choices=("train", "test"),
        default="train",
        help="where the images come from (default train)",
    )
    parser.add_argument(
        "--seed", type=seed_value, default=0, help="seed of the images and random draws (default 0)"
    )
    parser.add_argument(
        "--init",
        action="store_true",
        help="measure the initial weights (checkpoints/init.ckpt) instead; written to <name>_init.csv",
    )
    parser.add_argument(
        "--device", choices=("auto", "cpu", "cuda"), default="auto", help="auto: the GPU where there is one"
    )


def device_of(choice: str) -> torch.device:
    if choice == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA GPU is available here")
    return torch.device(
        "cuda" if choice == "auto" and torch.cuda.is_available() else choice.replace("auto", "cpu")
    )


def open_run(run_dir: Path, init: bool) -> Any:
    """The finished run at `run_dir` (experiments.finished.FinishedRun), its net holding the trained weights,
    or with `init` the initial ones; a one-line UserError for a run trained before those were saved."""
    from experiments.finished import FinishedRun, load_weights

    run = FinishedRun.open(run_dir)
    if init:
        load_weights(run.model, initial_checkpoint(run_dir))
        run.model.eval()
    return run


def initial_checkpoint(run_dir: Path) -> Path:
    checkpoint = run_dir / "checkpoints" / "init.ckpt"
    if not checkpoint.is_file():
        raise UserError(
            f"{run_dir} has no checkpoints/init.ckpt: it was trained before initial weights were saved"
        )
    return checkpoint


def fixed_images(run: Any, images: int, split: str, seed: int) -> Batches:
    """`images` images of `split` drawn without replacement by `seed` (the same set at every call), as the
    net sees them in evaluation (normalised, not augmented), in batches of CHUNK on the CPU. A dataset not
    held in memory (an image folder) gives its first test images only."""
    datamodule = run.datamodule
    datamodule.prepare_data()
    datamodule.setup("fit")
    if not hasattr(datamodule, "splits"):
        if split != "test":
            raise UserError(f"{run.path}: --split train needs an in-memory dataset; use --split test")
        return run.test_batches(images)
    loader = datamodule.batches(split, torch.device("cpu"))  # holds the training set's normalisation
    pool = datamodule.splits[split]
    order = torch.randperm(len(pool), generator=torch.Generator().manual_seed(seed))[:images]
    chosen = pool.take(order)
    x = chosen.images.float() * loader.scale + loader.shift
    return list(zip(x.split(CHUNK), chosen.labels.split(CHUNK), strict=True))


def write_measurement(
    run_dir: Path, name: str, rows: list[dict[str, Any]], options: argparse.Namespace, **facts: Any
) -> Path:
    """`name`.csv (or `name`_init.csv with --init) and its JSON sidecar, each replaced whole."""
    from experiments.record import write_json, write_rows

    stem = f"{name}_init" if options.init else name
    sidecar = {
        "command": name,
        "weights": "initial (checkpoints/init.ckpt)" if options.init else "final (checkpoints/last.ckpt)",
        "options": {k: v for k, v in vars(options).items() if k != "runs"},
        **facts,
        "environment": environment(str(facts.get("device", "cpu")).startswith("cuda")),
    }
    write_rows(run_dir / f"{stem}.csv", rows)
    write_json(run_dir / f"{stem}.json", sidecar)
    return run_dir / f"{stem}.csv"


def timed(function: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    result = function()
    return result, time.perf_counter() - start


def duration(seconds: float) -> str:
    """`12 s`, `3 min`: a cost estimate, read after `about`."""
    if seconds < 1:
        return "1 s"
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


@contextmanager
def progress_bar(total: int, label: str) -> Iterator[Callable[[], None]]:
    """A callable to call after each of `total` passes: a tqdm bar on stderr when it is a terminal."""
    from tqdm import tqdm

    with tqdm(total=total, desc=label, disable=not sys.stderr.isatty(), leave=False, file=sys.stderr) as bar:
        yield lambda: bar.update(1)


def seed_value(text: str) -> int:
    value = int(text)
    if not 0 <= value < 2**63:
        raise argparse.ArgumentTypeError(f"must be an integer from 0 to 2**63 - 1, got {value}")
    return value


def positive_span(text: str) -> float:
    value = float(text)
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0 (filter norms), got {text}")
    return value


def at_least_two(text: str) -> int:
    value = positive_int(text)
    if value < 2:
        raise argparse.ArgumentTypeError(f"must be at least 2 (a slice's two ends), got {value}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="experiments landscape",
        description="The loss around trained runs' weights along filter-normalised random directions, on a "
        "2-D surface (Li et al. 2018) and from the initial weights to the final ones (Goodfellow et al. "
        "2015); "
        "writes landscape.csv and landscape.json in each run directory.",
    )
    add_common_options(parser, images=256)
    parser.add_argument("--directions", type=positive_int, default=3, help="1-D slices (default 3)")
    parser.add_argument(
        "--points", type=at_least_two, default=41, help="points of a 1-D slice, ends included (default 41)"
    )
    parser.add_argument(
        "--span",
        type=positive_span,
        default=1.0,
        help="steps over [-span, span], in filter norms (default 1)",
    )
    parser.add_argument(
        "--grid", type=positive_int, default=21, help="points a side of the surface (default 21)"
    )
    parser.add_argument(
        "--interpolation-points", type=at_least_two, default=21, help="points from init to final (default 21)"
    )
    parser.add_argument(
        "--interpolation-bn",
        choices=("recompute", "interpolate"),
        default="recompute",
        help="batch norm statistics along the interpolation: measured again at each point (default) or "
        "interpolated like the weights",
    )
    parser.add_argument("--no-surface", action="store_true", help="skip the 2-D surface")
    parser.add_argument("--no-interpolation", action="store_true", help="skip the interpolation")
    return parser


def _initial_state(run: Any, options: argparse.Namespace) -> dict[str, torch.Tensor] | None:
    """The initial weights' state dict for the interpolation, or None (with one line) where there is none."""
    import copy

    from experiments.finished import load_weights

    if options.no_interpolation or options.init:
        return None
    checkpoint = run.path / "checkpoints" / "init.ckpt"
    if not checkpoint.is_file():
        log.info(
            f"{run.record.name}: no checkpoints/init.ckpt (trained before it was saved): no interpolation"
        )
        return None
    initial = copy.deepcopy(run.model)
    load_weights(initial, checkpoint)
    return initial.state_dict()


def _plan(options: argparse.Namespace, interpolation: bool) -> tuple[list[str], int]:
    """What will be measured, in words, and the forward passes over the image set it takes."""
    parts = [f"{options.directions} directions x {options.points} points"]
    passes = options.directions * options.points
    if not options.no_surface:
        parts.append(f"{options.grid}x{options.grid} surface")
        passes += options.grid**2
    if interpolation:
        parts.append(f"{options.interpolation_points} interpolation points")
        passes += options.interpolation_points * (2 if options.interpolation_bn == "recompute" else 1)
    return parts, passes


def landscape(run_dir: Path, options: argparse.Namespace) -> str:
    """Write `run_dir`/landscape.csv and its sidecar; returns the run's one-line result."""
    from experiments.measure import landscape as measure

    run = open_run(run_dir, options.init)
    device = device_of(options.device)
    batches = fixed_images(run, options.images, options.split, options.seed)
    images = sum(len(labels) for _, labels in batches)
    net = measure.working_copy(run.model, device)
    loss, error = measure.loss_and_error(net, batches)  # also the warm-up: the first pass is slower
    _, seconds = timed(lambda: measure.loss_and_error(net, batches))
    initial = _initial_state(run, options)
    parts, passes = _plan(options, initial is not None)
    label = run.record.name + (" (initial weights)" if options.init else "")
    cost = duration(passes * seconds)
    log.info(f"{label}: {' + '.join(parts)} = {passes} passes over {images} images, about {cost}")
    generator = torch.Generator().manual_seed(options.seed)
    drawn = max(options.directions, 0 if options.no_surface else 2)
    directions = [  # drawn on the CPU (the same on any machine), then kept where the net is
        {name: d.to(device) for name, d in measure.filter_normalised_direction(net, generator).items()}
        for _ in range(drawn)
    ]
    rows = []
    with progress_bar(passes, label) as step:
        steps = measure.grid(options.points, options.span)
        rows += measure.slice_rows(net, batches, directions[: options.directions], steps, step)
        if not options.no_surface:
            steps = measure.grid(options.grid, options.span)
            rows += measure.surface_rows(net, batches, (directions[0], directions[1]), steps, step)
        if initial is not None:
            steps = [
                i / max(options.interpolation_points - 1, 1) for i in range(options.interpolation_points)
            ]
            rows += measure.interpolation_rows(net, initial, batches, steps, options.interpolation_bn, step)
    facts = {"images": images, "bn": "eval mode, the trained running statistics", "precision": "fp32"}
    where = write_measurement(run_dir, "landscape", rows, options, device=str(device), **facts)
    edges = [r["loss"] for r in rows if r["kind"] == "slice_1d" and abs(r["x"]) == options.span]
    return (
        f"{label}: loss {loss:.4g} (error {100 * error:.1f}%) at the weights, mean "
        f"{sum(edges) / len(edges):.4g} at {options.span:g} filter norms along the slices ({where})"
    )


def main(args: list[str]) -> int:
    return main_over_runs(_parser(), args, landscape)
