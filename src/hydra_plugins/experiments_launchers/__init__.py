"""The project's submitit launchers, where Hydra looks for plugins (it instantiates a launcher only from
the hydra_plugins namespace); what they do is experiments.launchers. conf/hydra/launcher/ points at them."""

from hydra_plugins.hydra_submitit_launcher import submitit_launcher

from experiments.launchers import SeeEveryRunThrough


class SlurmLauncher(SeeEveryRunThrough, submitit_launcher.SlurmLauncher):
    """hydra/launcher=submitit_slurm: one SLURM job per run; every job waited for."""


class LocalLauncher(SeeEveryRunThrough, submitit_launcher.LocalLauncher):
    """hydra/launcher=submitit_local: the same jobs as local processes; every job waited for."""
