"""`experiments lesion RUN_DIR ...`: each finished run's test error with blocks deleted (Veit et al. 2016),
into the run's lesion.csv. The run is read, never changed, but for that file."""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from experiments.commands.analysis import OneLineParser, main_over_runs, positive_int


def _parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="experiments lesion",
        description="Test error of trained runs with each block deleted, then k random blocks deleted "
        "(Veit et al. 2016); writes lesion.csv in each run directory.",
    )
    parser.add_argument("runs", nargs="+", type=Path, metavar="RUN_DIR", help="finished training runs")
    parser.add_argument(
        "--test-images", type=positive_int, default=1000, help="test images to use (default 1000)"
    )
    parser.add_argument(
        "--draws", type=positive_int, default=5, help="random draws of k blocks per k (default 5)"
    )
    parser.add_argument(
        "--max-k", type=positive_int, help="largest k, at most half the deletable blocks (default: that half)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the random draws")
    return parser


def lesion(run_dir: Path, options: argparse.Namespace) -> str:
    """Write `run_dir`/lesion.csv; returns the run's one-line result."""
    from experiments.finished import FinishedRun
    from experiments.measure.lesion import lesion_rows
    from experiments.record import write_rows

    run = FinishedRun.open(run_dir)
    rows = lesion_rows(
        run.model, run.test_batches(options.test_images), options.draws, options.seed, options.max_k
    )
    write_rows(run_dir / "lesion.csv", rows)
    intact = rows[0]["test_error"]
    singles = [r["test_error"] - intact for r in rows if r["kind"] == "single" and r["test_error"] != ""]
    rise = (
        f"mean rise {100 * statistics.mean(singles):+.1f} points, largest {100 * max(singles):+.1f}"
        if singles
        else "no block deletable"
    )
    where = run_dir / "lesion.csv"
    return f"{run.record.label}: test error {100 * intact:.1f}% intact; one block deleted: {rise} ({where})"


def main(args: list[str]) -> int:
    return main_over_runs(_parser(), args, lesion)
