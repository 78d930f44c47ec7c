"""hydra/launcher=packed: a sweep's runs trained side by side in one process, `runs_at_once` at a time.

A small CIFAR net leaves most of a GPU idle: its kernels are too small to fill it, and one run's steps wait
for each other. Runs in threads of one process, each on a CUDA stream of its own (and each step one CUDA
graph replay), let the GPU run several runs' kernels at once: no MPS daemon, MIG or compute-mode change.
Each run is the same run it would be alone, with its own directory, record, Comet experiment and seed;
its record names the runs it was packed with. Hydra plugins must live in the `hydra_plugins` package.
"""

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

log = logging.getLogger(__name__)


@dataclass
class PackedLauncherConf:
    _target_: str = "hydra_plugins.experiments_packed.packed_launcher.PackedLauncher"
    runs_at_once: int = 4  # runs training at the same time; the next starts as soon as one ends


ConfigStore.instance().store(
    group="hydra/launcher", name="packed", node=PackedLauncherConf, provider="experiments"
)


class PackedLauncher(Launcher):
    def __init__(self, runs_at_once: int = 4) -> None:
        if not isinstance(runs_at_once, int) or runs_at_once < 1:
            raise ValueError(f"hydra.launcher.runs_at_once must be a positive integer, got {runs_at_once!r}")
        self.runs_at_once = runs_at_once

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function

    def launch(self, job_overrides: Any, initial_job_idx: int) -> list[JobReturn]:
        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        log.info(f"Packing {len(job_overrides)} runs into this process, {self.runs_at_once} at a time")
        configs = [
            self._job_config(initial_job_idx + i, overrides) for i, overrides in enumerate(job_overrides)
        ]
        names = tuple(Path(c.hydra.runtime.output_dir).name for c in configs)
        _refuse_deterministic_on_gpu(configs)
        configure_log(self.config.hydra.job_logging, self.config.hydra.verbose)  # the runs' console lines
        with ThreadPoolExecutor(self.runs_at_once, thread_name_prefix="packed-run") as pool:
            returns = list(pool.map(lambda c: self._run(c, names), configs))
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        return returns

    def _job_config(self, idx: int, overrides: Any) -> DictConfig:
        """The job's config with its directory resolved, one job after another (Hydra's record of the job
        being running is one for the process, so the jobs' threads must not read it)."""
        log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")
        config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
        with read_write(config.hydra), open_dict(config.hydra):
            config.hydra.job.id, config.hydra.job.num = f"packed_{idx}", idx
            HydraConfig.instance().set_config(config)
            out = os.path.join(str(config.hydra.sweep.dir), str(config.hydra.sweep.subdir))
            with read_write(config.hydra.runtime), open_dict(config.hydra.runtime):
                config.hydra.runtime.output_dir = os.path.abspath(out)
        Path(out).mkdir(parents=True, exist_ok=True)
        return config

    def _run(self, config: DictConfig, names: tuple[str, ...]) -> JobReturn:
        from experiments.app import PACKED_JOB, Job

        own = Path(config.hydra.runtime.output_dir).name
        job = Job.from_hydra(config.hydra, packed_with=tuple(n for n in names if n != own))
        task_cfg = OmegaConf.masked_copy(config, [k for k in config if k != "hydra"])
        result = JobReturn(cfg=task_cfg, hydra_cfg=config, overrides=list(config.hydra.overrides.task))
        PACKED_JOB.set(job)
        try:
            with _own_stream():
                result.return_value = self.task_function(task_cfg)
            result.status = JobStatus.COMPLETED
        except Exception as error:
            result.return_value, result.status = error, JobStatus.FAILED
        return result


def _refuse_deterministic_on_gpu(configs: list[DictConfig]) -> None:
    """`deterministic` is one setting for the whole process (torch's deterministic algorithms): packed runs
    must agree on it. On a GPU, packed runs overlap their kernels on several streams, and bit-for-bit repeats
    are promised for one run a process only (deterministic=true with the basic launcher)."""
    import torch

    from experiments.sweep import SweepRefused

    wanted = {bool(c.get("deterministic")) for c in configs}
    if len(wanted) > 1:
        raise SweepRefused(
            "hydra/launcher=packed runs share one process, whose deterministic setting is one: give "
            "deterministic one value, or use the basic launcher"
        )
    on_gpu = (
        any(c.trainer.get("accelerator") in ("gpu", "cuda") for c in configs) or torch.cuda.is_available()
    )
    if wanted == {True} and on_gpu and not all(c.trainer.get("accelerator") == "cpu" for c in configs):
        raise SweepRefused(
            "deterministic=true trains one run a process on a GPU: hydra/launcher=packed overlaps runs on "
            "one GPU's streams; use the basic launcher"
        )


def _own_stream() -> Any:
    """A CUDA stream of this thread's own, where there is a GPU: its kernels can run beside other runs'."""
    import torch

    return torch.cuda.stream(torch.cuda.Stream()) if torch.cuda.is_available() else nullcontext()
