"""The Hydra apps behind `train` and `profile`: compose the config, run each job, one line per failure."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from experiments.errors import RunFailed, UserError, is_users, one_line
from experiments.logging.noise import silence_library_noise
from experiments.sweep import SweepProgress

log = logging.getLogger(__name__)

# conf/ beside src/ in a checkout (an editable install), else where `pip install .` put it
CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
if not CONF_DIR.is_dir():
    CONF_DIR = Path(sys.prefix) / "share" / "experiments" / "conf"


def run_name(*, _root_: DictConfig) -> str:
    """`resnet56-cifar10-s0-1a2b3c`: what runs, plus a hash of the whole config.

    A run directory named this way is a function of the config, so re-running a command (or a requeued
    SLURM job) finds its checkpoint, and two different configs never share a directory.
    """
    config = OmegaConf.to_container(_root_, resolve=False)
    config.pop("hydra", None)
    digest = hashlib.sha1(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:6]
    arch, depth, dataset, seed = (
        OmegaConf.select(_root_, key, default="")
        for key in ("arch.name", "arch.depth", "dataset.name", "seed")
    )
    return f"{arch}{depth}-{dataset}-s{seed}-{digest}"


def unique_dir(pattern: str) -> str:
    """A new directory named by `pattern` (strftime), suffixed -2, -3, ... when a sweep already took it."""
    base = time.strftime(pattern)
    for n in range(1, 1000):
        path = base if n == 1 else f"{base}-{n}"
        try:
            os.makedirs(path)
            return path
        except FileExistsError:
            continue
    raise UserError(f"could not create a new sweep directory under {base}")


# Cached: Hydra copies resolver caches into every job's config (and pickles them for SLURM jobs), so a
# sweep's directory is resolved once and stays the same for all its jobs, requeued ones included.
OmegaConf.register_new_resolver("run_name", run_name, replace=True)
OmegaConf.register_new_resolver("unique_dir", unique_dir, use_cache=True, replace=True)

failures: list[str] = []  # runs of this process that failed; their one-line errors were printed
MAIN_PID = os.getpid()


def _job(command: str) -> Callable[[DictConfig], Any]:
    def task(cfg: DictConfig) -> Any:
        silence_library_noise()  # here: launcher plugins run jobs in processes of their own
        hydra_cfg = HydraConfig.get()
        run_dir = Path(hydra_cfg.runtime.output_dir)
        if hydra_cfg.mode == RunMode.MULTIRUN:
            log.info(f"run {hydra_cfg.job.num + 1} of {SweepProgress.size or '?'}")
        try:
            if command == "train":
                from experiments.train import train

                return train(cfg, run_dir)
            from experiments.measure.profile import profile

            return profile(cfg, run_dir)
        except Exception as error:
            if os.environ.get("EXPERIMENTS_FULL_ERROR") and not isinstance(error, RunFailed):
                raise
            message = one_line(error)
            if not is_users(error):
                message += " (HYDRA_FULL_ERROR=1 shows the traceback)"
            print(f"error: {message}", file=sys.stderr)
            if os.getpid() != MAIN_PID:  # a launcher's worker process: its launcher collects the failure
                raise RunFailed(message) from None
            failures.append(f"{run_dir}: {message}")
            return None

    return task


def run(command: str, args: list[str]) -> int:
    """Run `command` as a Hydra app with `args` as its command line; returns the exit status."""
    if not CONF_DIR.is_dir():
        print(f"error: config directory {CONF_DIR} not found: reinstall the project", file=sys.stderr)
        return 2
    # Hydra prints multi-line reports with stack traces unless HYDRA_FULL_ERROR is set, in which case it
    # raises: we let it raise and print one line ourselves, or the full traceback if the user asked for it.
    full_error = bool(os.environ.get("HYDRA_FULL_ERROR"))
    if full_error:
        os.environ["EXPERIMENTS_FULL_ERROR"] = "1"
    os.environ["HYDRA_FULL_ERROR"] = "1"
    app = hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name=command)(_job(command))
    # conf/hydra/launcher/submitit_slurm.yaml sets our defaults over the plugin's schema of that name,
    # which Hydra 1.3 merges but calls deprecated.
    warnings.filterwarnings("ignore", message=r"\n'hydra/launcher/submitit_slurm' is validated against")
    argv, sys.argv = sys.argv, [sys.argv[0], *args]
    failures.clear()
    try:
        app()
    except RunFailed as error:  # raised by a run in a launcher's worker process
        print(f"error: a run failed: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(
            "error: interrupted; the run's record says where it stopped, and the same command resumes it",
            file=sys.stderr,
        )
        return 130
    except Exception as error:
        if full_error:
            raise
        if isinstance(error, OSError) and error.filename:  # Hydra could not create the run directory
            message = (
                f"cannot write {error.filename}: {error.strerror} "
                "(runs go elsewhere with hydra.run.dir=DIR, or hydra.sweep.dir=DIR with -m)"
            )
        else:
            message = one_line(error)
        print(f"error: {message}", file=sys.stderr)
        return 2
    finally:
        sys.argv = argv
        if not full_error:
            del os.environ["HYDRA_FULL_ERROR"]
    if len(failures) > 1:
        print(f"error: {len(failures)} runs failed:", *failures, sep="\n  ", file=sys.stderr)
    return 1 if failures else 0
