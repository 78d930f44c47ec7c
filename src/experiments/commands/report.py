"""`experiments report DIR [DIR ...] [--out OUT]`: the table and figures of finished runs and sweeps."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from experiments.errors import UserError, is_user_error, message, traceback_wanted
from experiments.over_runs import OneLineParser

log = logging.getLogger(__name__)


def _parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="experiments report",
        description="Tables and figures from the runs under DIRs (run or sweep directories): report.md, "
        "runs.csv and PNG figures, also logged to Comet as one report experiment.",
    )
    parser.add_argument("dirs", nargs="+", type=Path, metavar="DIR", help="run or sweep directories")
    parser.add_argument(
        "--out", type=Path, help="where the report goes (default: DIR/report for the first DIR)"
    )
    parser.add_argument(
        "--logger",
        choices=("comet", "none"),
        default="comet",
        help="log the report to Comet as one experiment (default) or not",
    )
    parser.add_argument(
        "--online",
        choices=("auto", "true", "false"),
        default="auto",
        help="Comet online (needs a key) or offline; auto: online when a key is set",
    )
    return parser


def report(directories: list[Path], out: Path, logger: str = "comet", online: str = "auto") -> Path:
    """Write the report of the runs under `directories` into `out`; returns report.md's path."""
    from experiments.report.collect import find_runs

    for directory in directories:
        if not directory.is_dir():
            raise UserError(f"{directory} is not a directory")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out: {out} is a file; --out must be a folder (the report's files go into it)")
    runs = [run for run in find_runs(directories) if out not in run.path.parents]
    if not runs:
        raise UserError(f"no runs under {', '.join(map(str, directories))} (a run directory holds .hydra/)")
    for run in runs:
        if run.problem:  # report.md lists it; the terminal says so too
            log.warning(f"{run.problem}: the run is listed as unreadable, its results left out")
    from experiments.report import aggregate, plots, tables

    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"--out: cannot make the folder {out} ({error.strerror})") from None
    figures, missing = {}, []
    for name, draw in plots.FIGURES.items():
        drawn = [figure for figure in draw(runs, out) if figure]
        figures.update(drawn)
        if not drawn:
            missing.append(name)
    tables.write_csv(runs, out / "runs.csv")
    groups = aggregate.groups(runs)
    aggregate.write_csv(groups, out / "aggregate.csv")
    tables.write_markdown(runs, directories, figures, missing, out / "report.md")
    if split := aggregate.across_environments(groups):
        log.warning(
            f"{len(split)} config(s) ran in several environments, which can round differently: "
            f"{out / 'report.md'} sets their seeds side by side"
        )
    if mixed := [c for c in aggregate.verdicts(groups) if c.mixed_environments]:
        log.warning(
            f"{len(mixed)} of the report's verdicts compare runs of different environments, which can round "
            f"differently: {out / 'report.md'} lists them"
        )
    if logger == "comet":
        _log_to_comet(runs, out, list(figures.values()), {"true": True, "false": False}.get(online, online))
    return out / "report.md"


def _log_to_comet(runs: list, out: Path, figures: list[Path], online: str | bool) -> None:
    """One experiment tagged `report` (and with the sweeps it covers): the figures, the data behind them as
    curves (tracking.dashboard), report.md and the runs table."""
    from dataclasses import replace

    from experiments.plan import configured_logger
    from experiments.preflight import check_comet_key
    from experiments.tracking import comet, dashboard

    check_comet_key(online)  # a run's guard checks it before the run; the report has no guard
    sweeps = sorted({f"sweep:{run.get('sweep')}" for run in runs if run.get("sweep")})
    logger = replace(configured_logger("comet"), online=online)
    comet_run = comet.start(logger, out, f"report {out}", ["report", *sweeps])
    if comet_run is None or comet_run.experiment is None:
        return
    experiment = comet_run.experiment
    try:
        for figure in figures:
            experiment.log_image(str(figure), name=figure.stem)
        dashboard.log_report_curves(experiment, runs)
        experiment.log_asset(str(out / "report.md"))
        experiment.log_table(str(out / "runs.csv"))  # shown by Comet as a data table
    except Exception as error:  # the local report is written; Comet must not fail the command
        comet.note(f"could not take the whole report: {error!r}")
        log.warning(f"Comet could not take the whole report ({type(error).__name__}: {error})")
    comet_run.finish()


def main(args: list[str]) -> int:
    options = _parser().parse_args(args)
    logging.basicConfig(level=logging.INFO, format="%(message)s", force=True)
    from experiments.tracking.noise import silence_library_noise

    silence_library_noise()
    out = options.out or options.dirs[0] / "report"
    try:
        path = report(options.dirs, out, options.logger, options.online)
    except Exception as error:
        if traceback_wanted() and not is_user_error(error):
            raise
        print(f"error: {message(error, hydra_command=False)}", file=sys.stderr)
        return 1
    print(f"report: {path} (figures and runs.csv beside it)")
    return 0
