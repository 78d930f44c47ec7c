"""Hydra's submitit launchers (hydra/launcher=submitit_slurm, submitit_local), made to see a sweep through.

The plugin's launcher submits a sweep as one job array, then collects it with `[j.results()[0] for j in
jobs]`: the first job that did not return (a run that failed, a job that SLURM cancelled, timed out or lost
with its node) raises out of that line, with submitit's multi-line report, and the command stops waiting for
the others. These launchers wait for every job, log one line as each ends, hand Hydra the runs that
completed, and name each one that did not, with what ended it (its own one-line error, or the state SLURM
gives a job killed before it could say anything), in one line: `error: <run dir>: <why>`. The command then
exits 1, as a sweep run in-process does when a run fails (experiments.app).

They also turn sbatch's refusal of a sweep (a request the cluster cannot meet) into one line, and ask SLURM
for GPUs only when the runs use them (`gpus_per_node: null`, see conf/hydra/launcher/submitit_slurm.yaml).

Hydra instantiates a launcher only from the hydra_plugins namespace, so the launcher classes themselves are
in hydra_plugins/experiments_launchers; their behaviour is here.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from hydra.types import HydraContext, TaskFunction
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
from omegaconf import DictConfig, OmegaConf

from experiments.errors import UserError, one_line

log = logging.getLogger(__name__)

POLL_S = 1.0  # how often the launcher looks for the result files of ended jobs
# ...and how often it asks SLURM (sacct) about the jobs that have none yet: submitit alone asks ever less
# often, up to every 10 minutes, so a cancelled job would keep a long sweep waiting that long
STATE_CHECK_S = 30.0


class SeeEveryRunThrough:
    """Mixed into the plugin's launchers: submit as they do, then wait for every job."""

    _EXECUTOR: str
    sweep_size = 0  # runs in the sweep, handed to the jobs
    params: dict[str, Any]
    config: DictConfig | None
    hydra_context: HydraContext | None
    task_function: TaskFunction | None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        super().setup(hydra_context=hydra_context, task_function=task_function, config=config)
        if self._EXECUTOR == "slurm" and self.params.get("gpus_per_node") is None:
            self.params["gpus_per_node"] = gpus_per_node(config)

    def __call__(self, *args: Any, **kwargs: Any) -> JobReturn:
        """In the job: the run, as the plugin runs it, knowing the size of its sweep ("run 3 of 10"), and
        without Hydra's warning about our launcher config, which app.run silences in the launching process.
        A run stopped by a signal (SLURM's SIGTERM when it requeues or cancels the job, the time-limit
        warning that submitit requeues on) ends the job with one line, not a traceback."""
        from experiments.sweep import SweepWatch

        warnings.filterwarnings("ignore", message=r"\n'hydra/launcher/submitit_\w+' is validated against")
        SweepWatch.size = self.sweep_size
        try:
            return super().__call__(*args, **kwargs)
        except KeyboardInterrupt:  # how a run stops a sweep once it has recorded where it stopped
            print("error: interrupted; the run's record says where it stopped", file=sys.stderr, flush=True)
            raise SystemExit(130) from None

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from experiments.sweep import SweepWatch

        self.sweep_size = SweepWatch.size
        jobs = self._submit(job_overrides, initial_job_idx)
        returns: dict[int, JobReturn] = {}
        failures: list[str] = []
        pending = dict(enumerate(jobs))
        try:
            self._wait(pending, job_overrides, returns, failures)
        except KeyboardInterrupt:
            if self._EXECUTOR != "slurm":  # local jobs are this command's children: Ctrl+C ended them too
                raise
            array = str(jobs[0].job_id).split("_")[0]
            print(
                f"error: stopped waiting; the sweep's {len(pending)} unfinished jobs go on as SLURM array "
                f"{array} (`scancel {array}` ends them): `experiments report {self.config.hydra.sweep.dir}` "
                "once they are done",
                file=sys.stderr,
            )
            raise SystemExit(130) from None
        self._fail(failures)
        return [returns[index] for index in sorted(returns)]

    def _wait(
        self,
        pending: dict[int, Any],
        job_overrides: Sequence[Sequence[str]],
        returns: dict[int, JobReturn],
        failures: list[str],
    ) -> None:
        """Until every job has ended: each completed run's JobReturn into `returns`, each other's line
        into `failures` (and onto stderr), as they end."""
        checked = time.monotonic()
        while pending:
            if self._EXECUTOR == "slurm" and time.monotonic() - checked > STATE_CHECK_S:
                # one sacct call for all of them (local jobs are this process's children: polled directly)
                next(iter(pending.values())).watcher.update()
                checked = time.monotonic()
            for index, job in list(pending.items()):
                if not job.done():
                    continue
                del pending[index]
                outcome = self._outcome(job, job_overrides[index])
                if isinstance(outcome, JobReturn):
                    returns[index] = outcome
                    log.info(f"{outcome.hydra_cfg.hydra.runtime.output_dir}: completed ({self._name(job)})")
                else:
                    print(f"error: {outcome}", file=sys.stderr, flush=True)
                    failures.append(outcome)
            if pending:
                time.sleep(POLL_S)

    def _submit(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> list[Any]:
        """The plugin's submission, unchanged but for sbatch's refusal, which becomes the user's one line."""
        import submitit

        assert self.config is not None
        init_keys = {"submitit_folder", "max_num_timeout"}
        init = {f"{self._EXECUTOR}_{k}": v for k, v in self.params.items() if k == "max_num_timeout"}
        executor = submitit.AutoExecutor(
            cluster=self._EXECUTOR, folder=self.params["submitit_folder"], **init
        )
        shared = set(OmegaConf.structured(BaseQueueConf).keys())
        executor.update_parameters(
            **{
                k if k in shared else f"{self._EXECUTOR}_{k}": v
                for k, v in self.params.items()
                if k not in init_keys
            }
        )
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        log.info(f"Submitit '{self._EXECUTOR}' sweep output dir : {sweep_dir}")
        sweep_dir.mkdir(parents=True, exist_ok=True)
        if "mode" in self.config.hydra.sweep:
            sweep_dir.chmod(int(str(self.config.hydra.sweep.mode), 8))
        calls = []
        for index, overrides in enumerate(job_overrides, start=initial_job_idx):
            log.info(f"\t#{index} : {' '.join(filter_overrides(overrides))}")
            calls.append(
                (list(overrides), "hydra.sweep.dir", index, f"job_id_for_{index}", Singleton.get_state())
            )
        said = io.StringIO()  # submitit prints sbatch's complaint before raising it: one line instead
        try:
            with contextlib.redirect_stderr(said):
                return executor.map_array(self, *zip(*calls, strict=True))
        except submitit.core.utils.FailedJobError as error:
            _remove_submission(Path(self.params["submitit_folder"].split("%")[0]), sweep_dir)
            reason = " ".join(str(error).replace("sbatch: error:", "").split()) or "no reason given"
            gpus = self.params.get("gpus_per_node")
            hint = (
                f"it asked for gpus_per_node={gpus}; trainer.accelerator=cpu asks for none. " if gpus else ""
            )
            raise UserError(
                f"{self._EXECUTOR} refused the sweep: {reason} ({hint}hydra.launcher.* sets what is asked "
                "for: docs/cluster.md)"
            ) from None

    def _outcome(self, job: Any, overrides: Sequence[str]) -> JobReturn | str:
        """A completed run's JobReturn, or the line that says why the run did not complete."""
        from submitit.core.utils import FailedJobError

        error = job.exception()
        if error is None:
            returns = job.results()  # one per task; a run of several tasks (DDP) completed if all did
            failed = [r for r in returns if r.status != JobStatus.COMPLETED]
            if not failed:
                return returns[0]
            return f"{self._run_dir(overrides)}: {one_line(failed[0]._return_value)}"
        if isinstance(error, FailedJobError):  # raised outside the run (in submitit or Hydra's job setup)
            trace = str(error).split("----------------------")
            last = [
                line for line in (trace[1] if len(trace) > 1 else str(error)).splitlines() if line.strip()
            ]
            why = f"{self._name(job)} failed: {last[-1].strip() if last else 'no reason given'}"
        else:  # no result: the job was ended from outside (scancel, time limit, memory, node failure)
            why = f"{self._name(job)} ended {job.state} before the run finished"
        return f"{self._run_dir(overrides)}: {why} (its log: {job.paths.stderr})"

    def _run_dir(self, overrides: Sequence[str]) -> str:
        """The directory a job's run has (or would have had): its config composed as the job composes it."""
        assert self.hydra_context is not None and self.config is not None
        try:
            config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
            return os.path.abspath(Path(str(config.hydra.sweep.dir)) / str(config.hydra.sweep.subdir))
        except Exception:  # it composed when the sweep was checked; if not now, the overrides say which run
            return f"the run {' '.join(filter_overrides(overrides))}"

    def _name(self, job: Any) -> str:
        return f"{'SLURM' if self._EXECUTOR == 'slurm' else 'local'} job {job.job_id}"

    def _fail(self, failures: list[str]) -> None:
        """Exit 1 when a run did not complete, with the same closing list as a sweep run in-process."""
        if not failures:
            return
        counted = getattr(self.task_function, "failures", None)  # experiments.app.Failures, when it is handed
        if counted is not None:
            counted.lines.extend(failures)  # ...app.run lists them and exits 1
            return
        if len(failures) > 1:
            print(f"error: {len(failures)} runs failed:", *failures, sep="\n  ", file=sys.stderr)
        raise SystemExit(1)


def gpus_per_node(config: DictConfig) -> int | None:
    """GPUs per node for runs of `config`: one per device Lightning uses, none when it runs on CPUs."""
    trainer = config.get("trainer") or {}
    if trainer.get("accelerator", "auto") == "cpu":
        return None
    devices = trainer.get("devices", 1)
    if OmegaConf.is_list(devices) or isinstance(devices, (list, tuple)):
        return len(devices)
    if isinstance(devices, int) and devices > 0:
        return devices
    raise UserError(
        f"trainer.devices={devices}: SLURM needs a number of GPUs, so give trainer.devices=N or "
        "hydra.launcher.gpus_per_node=N"
    )


def _remove_submission(folder: Path, sweep_dir: Path) -> None:
    """Take back what a refused submission left in the sweep's own folder (its script and pickles), so that
    the refused sweep leaves no directory; a submitit folder elsewhere is shared, and left alone."""
    folder, sweep_dir = folder.resolve(), sweep_dir.resolve()
    if folder != sweep_dir and folder.is_relative_to(sweep_dir):
        shutil.rmtree(folder, ignore_errors=True)
