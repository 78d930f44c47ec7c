"""`experiments reuse RUN_DIR ...`: the feature-reuse map (Huang et al. 2017, Fig. 5) of each finished
DenseNet run, into the run's feature_reuse.csv (training runs write it themselves when they end)."""

from __future__ import annotations

import argparse
from pathlib import Path

from experiments.over_runs import OneLineParser, main_over_runs
from experiments.record import RunRecord


def _parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="experiments reuse",
        description="How much each DenseNet layer reads each earlier layer's maps (Huang et al. 2017, "
        "Fig. 5); writes feature_reuse.csv in each run directory.",
    )
    parser.add_argument(
        "runs", nargs="+", type=Path, metavar="RUN_DIR", help="finished DenseNet training runs"
    )
    return parser


def reuse(run_dir: Path, options: argparse.Namespace) -> str:
    from experiments.finished import FinishedRun
    from experiments.measure.reuse import write_feature_reuse

    run = FinishedRun.open(run_dir)
    return f"{run.record.name}: {write_feature_reuse(run.model, run_dir)}"


def densenets_only(run_dir: Path, record: RunRecord) -> str | None:
    """Why the run cannot be read for feature reuse (the record names its net); None for a DenseNet."""
    if record.arch.startswith("densenet"):
        return None
    return f"{run_dir} is a {record.arch}: feature reuse is a DenseNet's"


def main(args: list[str]) -> int:
    return main_over_runs(_parser(), args, reuse, refuse=densenets_only)
