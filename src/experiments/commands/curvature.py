"""`experiments curvature RUN_DIR ...`: the Hessian's largest eigenvalue and trace at each finished run's
weights, raw and free of batch norm's weight scale, into the run's curvature.csv and curvature.json. The run
is read, never changed, but for those files."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from experiments.commands.landscape import (
    add_common_options,
    device_of,
    duration,
    fixed_images,
    open_run,
    progress_bar,
    timed,
    write_measurement,
)
from experiments.over_runs import OneLineParser, main_over_runs, positive_int

log = logging.getLogger(__name__)


def _parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="experiments curvature",
        description="The loss Hessian's largest eigenvalue (Lanczos) and trace (Hutchinson) at trained runs' "
        "weights, raw and per unit of filter norm; writes curvature.csv and curvature.json in each run "
        "directory.",
    )
    add_common_options(parser, images=128)
    parser.add_argument(
        "--iterations",
        type=positive_int,
        default=30,
        help="Lanczos basis size and restarts, and Hutchinson samples (default 30)",
    )
    return parser


def _seconds(net: Any, batches: list) -> tuple[float, float]:
    """(seconds to build the gradient's graph, seconds per Hessian-vector product) on `net`, each timed
    after a warm-up (the first passes are slower)."""
    from experiments.measure.curvature import hessian

    for _ in range(2):
        h, build = timed(lambda: hessian(net, batches, False, lambda: None))
        _, product = timed(lambda: h(h.scale))  # noqa: B023  (called at once)
    return build, product


def curvature(run_dir: Path, options: argparse.Namespace) -> str:
    """Write `run_dir`/curvature.csv and its sidecar; returns the run's one-line result."""
    from experiments.measure import curvature as measure
    from experiments.measure.landscape import working_copy

    run = open_run(run_dir, options.init)
    label = run.record.name + (" (initial weights)" if options.init else "")
    device = device_of(options.device)
    batches = fixed_images(run, options.images, options.split, options.seed)
    images = sum(len(labels) for _, labels in batches)
    net = working_copy(run.model, device)
    build, product = _seconds(net, batches)
    size = sum(p.numel() for p in net.parameters() if p.requires_grad)
    products = measure.hessian_products(size, options.iterations)
    log.info(
        f"{label}: about {products} Hessian-vector products over {images} images, "
        f"about {duration(2 * build + products * product)}"
    )
    with progress_bar(products, label) as step:
        rows = measure.curvature_rows(net, batches, options.iterations, options.seed, step)
    facts = {
        "images": images,
        "bn": "eval mode, the trained running statistics",
        "precision": "fp32 (float64 Lanczos vectors)",
        "lanczos_tol": measure.LANCZOS_TOL,
    }
    where = write_measurement(run_dir, "curvature", rows, options, device=str(device), **facts)
    value = {row["quantity"]: row["value"] for row in rows}
    return (
        f"{label}: top eigenvalue {value['top_eigenvalue']:.4g}, trace {value['trace']:.4g}; per filter norm "
        f"{value['top_eigenvalue_normalised']:.4g} and {value['trace_normalised']:.4g} ({where})"
    )


def main(args: list[str]) -> int:
    return main_over_runs(_parser(), args, curvature)
