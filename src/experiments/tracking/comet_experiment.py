"""Opening comet_ml's experiment, online or offline, each within a deadline whatever the server does.

The run opens its experiment itself (Lightning's CometLogger cannot log offline in 2.5-2.6); comet_ml is
configured through the environment (SETTINGS) so that no request waits or retries for long.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from experiments.plan import LoggerSettings
from experiments.tracking.comet_logs import note
from experiments.tracking.comet_server import HTTP_TIMEOUT_S, VersionProbe, Watch, exception_chain, why
from experiments.tracking.deadline import within

# An online start makes a handful of requests in sequence (version, experiment, status, ...), each bounded by
# HTTP_TIMEOUT_S: a server slow to answer each still gets its experiment within this.
START_DEADLINE_S = 8.0
# The end waits up to COMET_TIMEOUT_CLEANING + COMET_TIMEOUT_UPLOAD for the server, then writes the archive
# (1-4 s when the server is gone; about 11 s when it answers every request just within HTTP_TIMEOUT_S): this
# deadline is only reached when comet_ml itself gets stuck, and an end cut short may leave no archive.
END_DEADLINE_S = 20.0
# Set before every start, not once at import: comet_ml reads its configuration from the environment each
# time an experiment is created (the first two also when it is imported).
SETTINGS = {
    # no monkey-patching of torch, and no error reports to Comet's Sentry (offline they retry at exit)
    "COMET_DISABLE_AUTO_LOGGING": "1",
    "COMET_ERROR_TRACKING_ENABLE": "false",
    "COMET_DISABLE_ANNOUNCEMENT": "true",
    # each request gives up after HTTP_TIMEOUT_S, and is not retried (Comet's retries add minutes)
    "COMET_TIMEOUT_HTTP": str(HTTP_TIMEOUT_S),
    "COMET_TIMEOUT_API": str(HTTP_TIMEOUT_S),
    "COMET_HTTP_SESSION_RETRY_TOTAL": "0",
    "COMET_GET_OR_ADD_EXPERIMENT_RETRY_TOTAL": "0",
    "COMET_GET_OR_ADD_EXPERIMENT_RETRY_CONNECT": "0",
    "COMET_GET_OR_ADD_EXPERIMENT_RETRY_READ": "0",
    "COMET_GET_OR_ADD_EXPERIMENT_RETRY_STATUS": "0",
    # at the end, wait at most this long for the server (Comet's defaults: 1 and 3 hours) before the data
    # goes to the offline archive instead
    "COMET_TIMEOUT_CLEANING": "3",
    "COMET_TIMEOUT_UPLOAD": "3",
}


def experiment_options(
    logger: LoggerSettings, name: str, tags: list[str], folder: Path, key: str | None
) -> dict:
    """comet_ml.start's arguments, but `online`: a new experiment, or the one of `key` continued."""
    return {
        "project_name": logger.project,
        "workspace": logger.workspace,
        "experiment_key": key,
        "mode": "create" if key is None else "get_or_create",
        "experiment_config": _experiment_config(name, tags, folder),
    }


def _experiment_config(name: str, tags: list[str], folder: Path) -> Any:
    import comet_ml

    gpu = torch.cuda.is_available()
    return comet_ml.ExperimentConfig(
        name=name,
        tags=tags,
        offline_directory=str(folder),
        auto_output_logging=None,
        display_summary_level=0,
        # nothing of the command line, host, user or git remote (any could hold a secret): the run's
        # config is logged as parameters instead
        parse_args=False,
        log_env_host=False,
        log_code=False,
        log_git_metadata=False,
        log_git_patch=False,
        auto_log_co2=False,
        # CPU/GPU utilisation curves matter on GPUs (is the data pipeline keeping up?); elsewhere their
        # thread only delays the end of each run by a second
        log_env_details=gpu,
        log_env_cpu=gpu,
        log_env_gpu=gpu,
        log_env_disk=False,
        log_env_network=False,
    )


_OPENING = threading.Lock()


@contextmanager
def beside_others() -> Iterator[None]:
    """comet_ml keeps one experiment per process and ends it when another one starts. Runs packed in one
    process (hydra/launcher=packed) each keep theirs: they open theirs in turn, and an opening does not see
    the last run's experiment. (comet_ml's own log records then go to the comet.log of the run that opened
    last.)"""
    from comet_ml.config import set_global_experiment

    with _OPENING:
        set_global_experiment(None)
        yield


def open_online(comet_ml: Any, options: dict[str, Any], secrets: set[str]) -> tuple[Any, str | None]:
    """(the online experiment, None), or (None, why it could not be used) within START_DEADLINE_S. comet_ml
    talks to the server only once it has answered our own bounded version check: comet_ml reads an answer
    whole, however long it streams."""
    probe = VersionProbe()
    if reason := probe.reason():
        note(f"version check {probe.url}: {reason}; comet_ml was not started online")
        return None, reason
    with Watch().attached() as watch:
        finished, experiment, error = within(
            START_DEADLINE_S, lambda: comet_ml.start(online=True, **options), late=end_quietly
        )
    if not finished:
        return None, f"no experiment within {START_DEADLINE_S:g} s"
    if error is not None:
        return None, why([*watch.texts, exception_chain(error)], secrets)
    if experiment.alive and not getattr(experiment.streamer, "offline_streamer_disabled_or_failed", False):
        return experiment, None
    if experiment.alive:  # Comet would keep no archive to fall back on if the server went away
        reason = "it does not say its version, so Comet could not keep a backup archive"
    else:
        reason = why(watch.texts, secrets)
    end_quietly(experiment)
    return None, reason


def open_offline(comet_ml: Any, options: dict[str, Any], secrets: set[str]) -> tuple[Any, str | None]:
    """(the offline experiment, None), or (None, why not)."""
    with Watch().attached() as watch:
        finished, experiment, error = within(
            START_DEADLINE_S, lambda: comet_ml.start(online=False, **options), late=end_quietly
        )
    if not finished:
        return None, f"no offline experiment within {START_DEADLINE_S:g} s"
    if error is not None or not experiment.alive:
        reason = why([*watch.texts, exception_chain(error)], secrets)
        return None, "the offline experiment did not start: " + reason
    return experiment, None


def end_quietly(experiment: Any) -> None:
    within(END_DEADLINE_S, experiment.end)


def offline_archive(experiment: Any, folder: Path) -> Path:
    """Where an offline experiment will write its archive (comet_ml names it at the end)."""
    name = getattr(experiment, "_get_offline_archive_file_name", None)
    return folder / name() if callable(name) else folder
