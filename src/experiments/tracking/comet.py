"""Comet, online when a key is configured and the server answers, otherwise an offline archive.

The run starts its experiment itself (Lightning's CometLogger cannot log offline in 2.5-2.6) and logs to it
through tracking.loggers.CometLogger.
"""

from __future__ import annotations

import logging
import os
import time
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from experiments.errors import UserError
from experiments.record import RunRecord
from experiments.tracking.loggers import CometLogger

log = logging.getLogger(__name__)
# Read by comet_ml at import: no monkey-patching of torch, only warnings on the console (we print the lines
# that matter ourselves), and no error reports to Comet's Sentry (offline runs would retry them at exit).
os.environ.setdefault("COMET_DISABLE_AUTO_LOGGING", "1")
os.environ.setdefault("COMET_LOGGING_CONSOLE", "WARNING")
os.environ.setdefault("COMET_ERROR_TRACKING_ENABLE", "false")
# When the server is slow or gone at the end of a run, wait at most this long (Comet's defaults are 1 and
# 3 hours) before its data goes to an offline archive instead.
os.environ.setdefault("COMET_TIMEOUT_CLEANING", "30")
os.environ.setdefault("COMET_TIMEOUT_UPLOAD", "30")
REACHABLE_TIMEOUT_S = 5


def server_unreachable() -> str | None:
    """Why Comet's server cannot be reached within a few seconds, or None when it answers."""
    from comet_ml.config import get_comet_root_url
    from comet_ml.connection.connection_url_helpers import get_backend_version_url

    url = get_backend_version_url(get_comet_root_url())
    try:
        with urllib.request.urlopen(url, timeout=REACHABLE_TIMEOUT_S):
            return None
    except Exception as error:
        return f"{url}: {getattr(error, 'reason', error)}"


def run_tags(record: RunRecord) -> list[str]:
    """Tags arch, depth, dataset, and the sweep a run belongs to (its directory)."""
    tags = [f"arch:{record.arch}", f"depth:{record.depth}", f"dataset:{record.dataset}"]
    return [*tags, f"sweep:{record.sweep}"] if record.sweep else tags


def start(
    logger_cfg: Mapping[str, Any], run_dir: Path, name: str, tags: list[str], resume_epoch: int | None = None
) -> CometRun | None:
    """The run's Comet experiment, or None unless logger=comet.

    A resumed run (`resume_epoch`) continues the experiment whose key its run directory kept. Comet
    failing to start never fails the run: it goes on without Comet and says so.
    """
    if logger_cfg["name"] != "comet":
        return None
    key_file = run_dir / "comet" / "experiment_key"
    key = key_file.read_text().strip() if resume_epoch is not None and key_file.exists() else None
    try:
        run = CometRun.start(run_dir, name, tags, logger_cfg, key)
    except UserError:
        raise
    except Exception as error:
        log.warning(f"Comet could not start ({error}); continuing without it")
        return None
    key_file.write_text(run.experiment.get_key())
    if key is not None:
        run.experiment.add_tag("resumed")
        run.experiment.log_other("resumed_after_epoch", resume_epoch + 1)
    return run


class CometRun:
    """One run's Comet experiment, from the start of the run to its end."""

    def __init__(self, experiment: Any, mode: str, folder: Path, started: float) -> None:
        self.experiment, self.mode, self.folder, self.started = experiment, mode, folder, started

    @classmethod
    def start(
        cls, run_dir: Path, name: str, tags: list[str], logger_cfg: Mapping[str, Any], key: str | None
    ) -> CometRun:
        import comet_ml
        from comet_ml.config import get_api_key, get_config

        online = logger_cfg["online"]
        has_key = get_api_key(None, get_config()) is not None
        if online is True and not has_key:
            raise UserError("logger.online=true but no Comet API key: set COMET_API_KEY or run `comet login`")
        go_online = has_key and online is not False
        if go_online and (reason := server_unreachable()):
            log.warning(f"Comet server unreachable ({reason}): logging offline")
            go_online = False
        folder = run_dir / "comet"
        folder.mkdir(parents=True, exist_ok=True)
        started = time.time()
        config = comet_ml.ExperimentConfig(
            name=name,
            tags=tags,
            offline_directory=str(folder),
            auto_output_logging=None,
            log_code=False,
            parse_args=False,
            # CPU/GPU utilisation curves matter on GPUs (is the data pipeline keeping up?); elsewhere
            # their thread only delays the end of each run by a second.
            log_env_cpu=torch.cuda.is_available(),
            log_env_gpu=torch.cuda.is_available(),
            log_env_disk=False,
            log_env_network=False,
            display_summary_level=0,
        )
        experiment = comet_ml.start(
            project_name=logger_cfg["project"],
            workspace=logger_cfg["workspace"],
            online=go_online,
            experiment_key=key,
            mode="create" if key is None else "get_or_create",
            experiment_config=config,
        )
        return cls(experiment, "online" if go_online else "offline", folder, started)

    @property
    def logger(self) -> CometLogger:
        return CometLogger(self.experiment)

    @property
    def info(self) -> dict[str, str]:
        return {"mode": self.mode}

    def finish(self, record: RunRecord | None = None) -> dict[str, str]:
        """Log the record's figures, end the experiment (one per run, also inside a multirun), and
        return where its data went: the online URL, and an archive when Comet wrote one (offline, or
        online after losing the server)."""
        info = self.info
        try:
            values = record.to_json() if record else {}
            figures = {
                k: v for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
            }
            self.experiment.log_metrics(figures)
            self.experiment.end()
        except Exception as error:
            log.warning(f"Comet failed at the end of the run ({error}); the local record is complete")
            return info
        if self.mode == "online":
            info["url"] = self.experiment.url
            log.info(f"Comet: {self.experiment.url}")
        # this run's archive: a resumed run's folder also holds the archive of its first part
        archives = [
            p for p in self.folder.glob(f"{self.experiment.id}*.zip") if p.stat().st_mtime >= self.started
        ]
        archives.sort(key=os.path.getmtime)
        if archives:
            info["archive"] = str(archives[-1])
            shown = os.path.relpath(archives[-1])
            log.info(f"Comet offline archive: {shown}  (upload: comet upload {shown})")
        elif self.mode == "offline":
            log.warning("Comet wrote no offline archive")
        return info
