"""The Hydra commands (train, profile, probe): compose the config, guard each run's directory, run the
command, and turn every failure into one line.

A job (one run of a sweep, or the only run) goes: check every setting (torch-free, in a second) -> refuse a
directory holding another config -> say "nothing to do" for a completed run -> lock the directory ->
write .hydra/ and open the run's log -> run the command. Hydra itself writes nothing into the run's
directory (conf/hydra/default.yaml turns its own .hydra/ and log file off), so a refused job leaves none.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import threading
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from experiments import rundir, settings
from experiments.config import CONF_DIR
from experiments.errors import RunFailed, UserError, message, one_line, traceback_wanted
from experiments.finished import check_checkpoint_fits
from experiments.plan import Plan
from experiments.record import RunRecord, read_record
from experiments.sweep import SweepRefused, SweepWatch
from experiments.tracking.noise import silence_library_noise

log = logging.getLogger(__name__)


def _command(name: str) -> Callable[..., Any]:
    """The function behind a Hydra command, imported only when a job runs it (torch comes with it)."""
    if name == "train":
        from experiments.commands.train import train

        return train
    if name == "profile":
        from experiments.commands.profile import profile

        return profile
    from experiments.commands.probe import probe

    return probe


@dataclass
class Failures:
    """The runs of this process's command that failed (their one-line errors were printed)."""

    launcher_pid: int = field(default_factory=os.getpid)
    lines: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Job:
    """One job of a Hydra command, as its launcher describes it when the job starts."""

    run_dir: Path
    hydra_cfg: DictConfig  # Hydra's own settings of the job (saved as .hydra/hydra.yaml)
    sweep_dir: str | None = None  # the multirun sweep's directory; None for a single run
    number: int | None = None  # the job's place in the sweep, from 0
    packed_with: tuple[str, ...] = ()  # the runs sharing this process and its GPU (hydra/launcher=packed)

    @classmethod
    def current(cls) -> Job:
        """The job starting now: the one a packing launcher set for this thread, else Hydra's."""
        return PACKED_JOB.get() or cls.from_hydra(HydraConfig.get())

    @classmethod
    def from_hydra(cls, hydra_cfg: DictConfig, packed_with: tuple[str, ...] = ()) -> Job:
        multirun = hydra_cfg.mode == RunMode.MULTIRUN
        return cls(
            run_dir=Path(hydra_cfg.runtime.output_dir),
            hydra_cfg=hydra_cfg,
            sweep_dir=str(hydra_cfg.sweep.dir) if multirun else None,
            number=hydra_cfg.job.num if multirun else None,
            packed_with=packed_with,
        )


# Set by hydra/launcher=packed in each thread it runs a job in: Hydra's own record of the job is one for
# the whole process.
PACKED_JOB: ContextVar[Job | None] = ContextVar("packed_job", default=None)


def make_task(command: str, failures: Failures) -> Callable[[DictConfig], Any]:
    """Hydra's task function for `command`: one job, from guard to record, failures as one line."""

    def task(cfg: DictConfig) -> Any:
        silence_library_noise()  # here: launcher plugins run jobs in processes of their own
        job = Job.current()
        if job.number is not None:
            log.info(f"run {job.number + 1} of {SweepWatch.size or '?'}")
        try:
            return run_job(cfg, job, command)
        except Exception as error:
            if traceback_wanted() and not isinstance(error, RunFailed):
                raise
            line = message(error)
            print(f"error: {line}", file=sys.stderr)
            if os.getpid() != failures.launcher_pid:  # a launcher's worker process: its launcher collects it
                raise RunFailed(line) from None
            failures.lines.append(f"{job.run_dir}: {line}")
            return None

    task.failures = failures  # launchers that collect runs from other processes add theirs
    return task


def run_job(cfg: DictConfig, job: Job, command: str) -> Any:
    """Guard the job's directory, own it, and run the command in it."""
    with refused_leaves_nothing(job.run_dir):
        settings.check_hydra_secrets(job.hydra_cfg)
        plan = guard(cfg, job.run_dir)
        if command == "train" and (done := completed(job.run_dir)):
            return done
        fresh = not any(job.run_dir.iterdir())
        with rundir.owned(job.run_dir, rank=_rank()), run_files(cfg, job, command, fresh):
            return _command(command)(plan, job.run_dir, job.sweep_dir, list(job.packed_with) or None)


def guard(cfg: DictConfig, run_dir: Path) -> Plan:
    """The job's plan, once every setting is checked and its directory holds no other config; a one-line
    UserError otherwise."""
    plan = settings.check(cfg)
    if plan.recipe.ckpt_path:
        check_checkpoint_fits(plan.subject, plan.recipe.ckpt_path)
    if _rank() == 0:  # the other tasks of a SLURM job follow rank 0: rundir.owned waits for its lock
        rundir.check_config(run_dir, cfg)
    return plan


def completed(run_dir: Path) -> RunRecord | None:
    """The record of the run `run_dir` already completed, if it did: nothing is left to do."""
    try:
        previous = read_record(run_dir / "summary.json")
    except ValueError:
        return None
    if previous is not None and previous.status == "completed":  # every rank: none is left to train alone
        if _rank() == 0:
            log.info(f"{run_dir} already holds this run, completed: nothing to do ({run_dir}/summary.json)")
        return previous
    return None


def _rank() -> int:
    """This process's global rank where a launcher made several (SLURM tasks); 0 otherwise."""
    return int(os.environ.get("SLURM_PROCID", "0")) if int(os.environ.get("SLURM_NTASKS", "1")) > 1 else 0


@contextmanager
def refused_leaves_nothing(run_dir: Path) -> Iterator[None]:
    """Hydra makes a job's directory before the job runs: a refused job removes it again if it is empty."""
    try:
        yield
    except UserError:
        rundir.remove_if_empty(run_dir, parents=1)  # outputs/ too, when Hydra made it for this run
        raise


@contextmanager
def run_files(cfg: DictConfig, job: Job, command: str, fresh: bool) -> Iterator[None]:
    """.hydra/ (the composed config, as Hydra writes it; kept from the run's first start) and the run's log
    file, `<command>.log`, for as long as the job runs (the job's own lines only, when runs share the
    process). A job refused before its run began (a UserError out of the command: its data or its net
    cannot be built) takes back what it wrote into a `fresh` directory."""
    run_dir = job.run_dir
    hydra_dir = run_dir / ".hydra"
    if _rank() == 0 and not (hydra_dir / "config.yaml").exists():
        hydra_dir.mkdir(exist_ok=True)
        OmegaConf.save(cfg, hydra_dir / "config.yaml")
        OmegaConf.save(OmegaConf.create({"hydra": job.hydra_cfg}), hydra_dir / "hydra.yaml")
        OmegaConf.save(job.hydra_cfg.overrides.task, hydra_dir / "overrides.yaml")
    handler = logging.FileHandler(run_dir / f"{command}.log", delay=True)
    handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] %(message)s"))
    if job.packed_with:
        thread = threading.get_ident()
        handler.addFilter(lambda record: record.thread == thread)
    logging.getLogger().addHandler(handler)
    try:
        yield
    except UserError:
        if fresh and _rank() == 0:
            for path in run_dir.iterdir():
                if path.name != rundir.LOCK_NAME:
                    shutil.rmtree(path) if path.is_dir() else path.unlink()
        raise
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()


def run(command: str, args: list[str]) -> int:
    """Run `command` as a Hydra app with `args` as its command line; returns the exit status."""
    if not CONF_DIR.is_dir():
        print(f"error: config directory {CONF_DIR} not found: reinstall the project", file=sys.stderr)
        return 2
    if problem := _flag_problem(args):
        print(f"error: {problem} (experiments {command} --help lists the options)", file=sys.stderr)
        return 2
    failures = Failures()
    app = hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name=command)(
        make_task(command, failures)
    )
    # conf/hydra/launcher/submitit_*.yaml set our defaults over the plugin's schemas of those names,
    # which Hydra 1.3 merges but calls deprecated.
    warnings.filterwarnings(
        "ignore", message=r"\n'hydra/launcher/submitit_(slurm|local)' is validated against"
    )
    argv, sys.argv = sys.argv, [sys.argv[0], *map(_quoted_home, args)]
    # Hydra prints multi-line reports with stack traces unless HYDRA_FULL_ERROR is set, in which case it
    # raises: it always raises here, and we print one line (or the traceback, if the user asked for it).
    users_setting = os.environ.get("HYDRA_FULL_ERROR")
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        app()
    except RunFailed as error:  # raised by a run in a launcher's worker process
        print(f"error: a run failed: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"error: interrupted; {_how_to_resume()}", file=sys.stderr)
        return 130
    except SystemExit as done:  # Hydra's --help, --cfg and the like end so
        return done.code if isinstance(done.code, int) else 0
    except SweepRefused as refused:
        print(f"error: {refused}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `train --help | head`: the reader went away, and there is nothing to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except Exception as error:
        if traceback_wanted():
            raise
        print(f"error: {_launch_error(error)}", file=sys.stderr)
        return 2
    finally:
        sys.argv = argv
        SweepWatch.clean_up()
        if users_setting is None:
            del os.environ["HYDRA_FULL_ERROR"]
        else:
            os.environ["HYDRA_FULL_ERROR"] = users_setting
    if len(failures.lines) > 1:
        print(f"error: {len(failures.lines)} runs failed:", *failures.lines, sep="\n  ", file=sys.stderr)
    return 1 if failures.lines else 0


def _flag_problem(args: list[str]) -> str | None:
    """What is wrong with the `-x` / `--xyz` arguments, in one line, or None: Hydra's own parser would print
    its usage, naming __main__.py, over eight lines."""
    from hydra._internal.utils import get_args_parser

    parser = get_args_parser()
    parser.exit_on_error = False
    try:
        _, rest = parser.parse_known_args(args)
    except argparse.ArgumentError as error:
        return str(error)
    unknown = [arg for arg in rest if arg.startswith("-")]
    return f"unknown option {unknown[0]!r}" if unknown else None


def _quoted_home(arg: str) -> str:
    """`dataset.path=~/pets` as users type it (no shell expands a ~ after `key=`): Hydra's grammar refuses an
    unquoted ~, so the value is quoted; the dataset expands it."""
    key, sep, value = arg.partition("=")
    if sep and (value == "~" or value.startswith("~/")) and "'" not in value and not key.startswith("-"):
        return f"{key}='{value}'"
    return arg


def _how_to_resume() -> str:
    if SweepWatch.directory:
        return (
            "the run's record says where it stopped; to finish the sweep, run the same command with "
            f"hydra.sweep.dir={SweepWatch.directory}"
        )
    return "the run's record says where it stopped, and the same command resumes it"


def _launch_error(error: Exception) -> str:
    if isinstance(error, OSError) and error.filename:  # Hydra could not create the run directory
        return (
            f"cannot write {error.filename}: {error.strerror} "
            "(runs go elsewhere with hydra.run.dir=DIR, or hydra.sweep.dir=DIR with -m)"
        )
    return one_line(error)
