"""`experiments lesion RUN_DIR ...`: each finished run's test error with blocks deleted (Veit et al. 2016),
into the run's lesion.csv. The run is read, never changed, but for that file."""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from experiments.over_runs import OneLineParser, main_over_runs, positive_int


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
    return f"{run.record.name}: test error {100 * intact:.1f}% intact; one block deleted: {rise} ({where})"


def over_seeds(run_dirs: list[Path]) -> list[str]:
    """For each net lesioned at several seeds, the rise one deleted block causes, as mean +- s.d. over the
    seeds whose net trained (a lesion of a net that did not train says nothing), and which did not."""
    from experiments.report.collect import find_runs
    from experiments.report.over_seeds import intact_error, lesion_summaries

    lines = []
    for summary in lesion_summaries(find_runs(run_dirs)):
        if len(summary.config.runs) < 2:
            continue
        net = f"{summary.config.runs[0].net} on {summary.config.runs[0].dataset}"
        untrained = ", ".join(
            f"seed {r.get('seed')} ({100 * intact_error(r):.0f}%)" for r in summary.untrained
        )
        if not summary.mean_rise:
            lines.append(
                f"{net}: did not train at any seed ({untrained} test error): its lesions say nothing"
            )
            continue
        rises = [100 * rise for rise in summary.mean_rise]
        rise = f"{statistics.mean(rises):+.1f}" + (
            f" +- {statistics.stdev(rises):.1f}" if len(rises) > 1 else ""
        )
        seeds = f"mean over {len(rises)} trained seeds" + (
            f"; did not train: {untrained}" if untrained else ""
        )
        lines.append(f"{net}: one block deleted raises the test error by {rise} points ({seeds})")
    return lines


def main(args: list[str]) -> int:
    status = main_over_runs(_parser(), args, lesion)
    for line in over_seeds(
        _parser().parse_args(args).runs
    ):  # main_over_runs parsed them already, without error
        print(line)
    return status
