"""The commands over finished runs (lesion, reuse, landscape, paths, curvature): their command line, one line
per run that cannot be read (said before torch is imported), and a non-zero exit when any could not."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from pathlib import Path

from experiments.errors import UserError, is_user_error, message, traceback_wanted
from experiments.finished import finished_record
from experiments.record import RunRecord
from experiments.report.collect import is_run_dir

log = logging.getLogger(__name__)


class OneLineParser(argparse.ArgumentParser):
    """argparse, with a mistake on the command line as one line (argparse prints its usage first)."""

    def error(self, message: str) -> None:
        self.exit(2, f"error: {self.prog}: {message} (see {self.prog} --help)\n")


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def run_dirs(paths: list[Path]) -> list[Path]:
    """The run directories among `paths` as a shell glob gives them (`multirun/<date>/<time>/*` also
    matches multirun.yaml and report/)."""
    return [path for path in paths if is_run_dir(path)]


def main_over_runs(
    parser: argparse.ArgumentParser,
    args: list[str],
    analyse: Callable[[Path, argparse.Namespace], str],
    *,
    refuse: Callable[[Path, RunRecord], str | None] = lambda run, record: None,
) -> int:
    """Parse `args`, call `analyse(run_dir, options)` for each run (it returns its one-line result), and
    report each run that cannot be analysed as one line; the status is non-zero if any could not. Each run
    is first looked at without torch (a finished training run, with its checkpoint, that `refuse` does not
    refuse: it returns why not), so a wrong directory is said in a second, not after torch's import."""
    options = parser.parse_args(args)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout, force=True)
    from experiments.tracking.noise import silence_library_noise

    silence_library_noise()
    runs = run_dirs(options.runs)
    if not runs:
        print(f"error: no run directories among {', '.join(map(str, options.runs))}", file=sys.stderr)
        return 1
    readable = [run for run in runs if _finished(run, refuse)]
    failed = len(runs) - len(readable)
    for run in readable:
        try:
            log.info(analyse(run, options))
        except Exception as error:
            if traceback_wanted() and not is_user_error(error):
                raise
            print(f"error: {message(error, hydra_command=False)}", file=sys.stderr)
            failed += 1
    return 1 if failed else 0


def _finished(run: Path, refuse: Callable[[Path, RunRecord], str | None]) -> bool:
    """Whether `run` is a finished training run this command takes; if not, says why in one line."""
    try:
        record = finished_record(run)
        if reason := refuse(run, record):
            raise UserError(reason)
    except UserError as error:
        print(f"error: {message(error, hydra_command=False)}", file=sys.stderr)
        return False
    return True
