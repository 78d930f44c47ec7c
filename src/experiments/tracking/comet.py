"""Comet, online when a key is configured and the server answers, otherwise an offline archive.

`start` gives the run its CometRun, which `finish` ends. Both ends are bounded in time whatever the server
does: the online experiment opens within a deadline and falls back to an offline one on any failure
(tracking.comet_experiment), and the end of the run waits a few seconds for the server before the data goes
to the archive. comet_ml's own log records go to the run's comet/comet.log (tracking.comet_logs): the user
sees one line of ours about Comet per run. The run logs through tracking.loggers.CometLogger.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

from experiments import preflight
from experiments.plan import LoggerSettings
from experiments.record import RunRecord
from experiments.tracking import dashboard
from experiments.tracking.comet_experiment import (
    END_DEADLINE_S,
    SETTINGS,
    beside_others,
    experiment_options,
    offline_archive,
    open_offline,
    open_online,
)
from experiments.tracking.comet_logs import note, route_library_logs
from experiments.tracking.comet_server import VersionProbe, server_url
from experiments.tracking.deadline import within
from experiments.tracking.loggers import CometLogger

__all__ = ["CometRun", "note", "run_tags", "start"]

log = logging.getLogger(__name__)


def start(
    logger: LoggerSettings,
    run_dir: Path,
    name: str,
    tags: list[str],
    resume_epoch: int | None = None,
    record: RunRecord | None = None,
) -> CometRun | None:
    """The run's Comet experiment, or None unless the logger is comet.

    A resumed run (`resume_epoch`) continues the experiment whose key its run directory kept. Comet never
    fails the run: a comet/ folder that cannot be written disables it (mode "disabled", one line), a server
    that cannot be used makes it offline (one line). `record` gives the parameters a dashboard groups by.
    """
    if logger.name != "comet":
        return None
    folder = run_dir / "comet"
    if reason := unwritable(folder):
        route_library_logs(None)
        log.warning(f"Comet disabled: {reason}; the run goes on without it")
        return CometRun(None, "disabled", folder, time.time(), reason=reason)
    key_file = folder / "experiment_key"
    key = key_file.read_text().strip() if resume_epoch is not None and key_file.exists() else None
    run = CometRun.open(folder, name, tags, logger, key)
    if run.experiment is None:
        return run
    try:
        key_file.write_text(run.experiment.get_key())
        if key is not None:
            run.experiment.add_tag("resumed")
            run.experiment.log_other("resumed_after_epoch", resume_epoch + 1)
        if record is not None:
            run.experiment.log_parameters(dashboard.run_parameters(record))
    except Exception as error:  # the experiment is there; what it misses is in comet.log
        note(f"could not log the run's key or parameters: {error!r}")
    return run


def run_tags(record: RunRecord) -> list[str]:
    """Tags arch, depth, dataset, and the sweep a run belongs to (its directory)."""
    tags = [f"arch:{record.arch}", f"depth:{record.depth}", f"dataset:{record.dataset}"]
    return [*tags, f"sweep:{record.sweep}"] if record.sweep else tags


def unwritable(folder: Path) -> str | None:
    """Why Comet cannot write its archive and log into `folder`, or None when it can (tried, not guessed
    from permission bits, which root ignores)."""
    if folder.exists() and not folder.is_dir():
        return f"{folder} is not a folder"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        return f"cannot write to {folder} ({error.strerror or error})"
    return None


class CometRun:
    """One run's Comet experiment, from the start of the run to its end; `experiment` is None when Comet
    is disabled (`reason` says why)."""

    def __init__(
        self,
        experiment: Any,
        mode: str,
        folder: Path,
        started: float,
        reason: str | None = None,
        fallback: str | None = None,
    ) -> None:
        self.experiment, self.mode, self.folder, self.started = experiment, mode, folder, started
        self.reason, self.fallback = reason, fallback

    @classmethod
    def open(
        cls, folder: Path, name: str, tags: list[str], logger: LoggerSettings, key: str | None
    ) -> CometRun:
        """Online when a key is set (and logger.online allows), else or on any failure offline; disabled
        when not even the offline experiment opens. (app.guard has refused online=true without a key.)"""
        os.environ.update(SETTINGS)
        import comet_ml  # after SETTINGS: some are read at import

        route_library_logs(folder / "comet.log")  # reading the key may already log
        api_key = preflight.comet_api_key()
        route_library_logs(folder / "comet.log", secret=api_key)
        secrets = {api_key} if api_key else set()
        options = experiment_options(logger, name, tags, folder, key)
        started, fallback = time.time(), None
        with beside_others():
            if api_key and logger.online is not False:
                experiment, fallback = open_online(comet_ml, options, secrets)
                if experiment is not None:
                    return cls(experiment, "online", folder, started)
            experiment, problem = open_offline(comet_ml, options, secrets)
        if experiment is None:
            log.warning(f"Comet disabled: {problem}; the run goes on without it")
            return cls(None, "disabled", folder, started, reason=problem)
        if fallback:
            log.warning(
                f"Comet server {server_url()}: {fallback}; logging offline instead "
                f"(afterwards: comet upload {os.path.relpath(offline_archive(experiment, folder))})"
            )
        return cls(experiment, "offline", folder, started, fallback=fallback)

    @property
    def logger(self) -> CometLogger:
        return CometLogger(self.experiment)

    @property
    def info(self) -> dict[str, Any]:
        info: dict[str, Any] = {"mode": self.mode}
        if self.reason:
            info["reason"] = self.reason
        return info

    def finish(self, record: RunRecord | None = None) -> dict[str, Any]:
        """Log the record's figures, end the experiment (one per run, also inside a multirun) within a few
        seconds, and return where its data went (summary.json's `comet`): online with its URL; offline with
        the archive and, where the run meant to be online, the `fallback` reason; disabled with the reason."""
        if self.experiment is None:
            return self.info
        try:
            if record is not None:
                self.experiment.log_parameters(dashboard.run_parameters(record))
                self.experiment.log_metrics(dashboard.final_metrics(record))
        except Exception as error:
            note(f"could not log the run's record: {error!r}")
        took = time.perf_counter()
        # comet_ml says why it lost the server only in debug records: ask the server ourselves, meanwhile
        probe = VersionProbe() if self.mode == "online" else None
        finished, _, error = within(END_DEADLINE_S, self.experiment.end)
        note(f"end: {time.perf_counter() - took:.1f} s")
        if not finished or error is not None:
            problem = f"did not finish within {END_DEADLINE_S:g} s" if not finished else repr(error)
            log.warning(f"Comet failed at the end of the run ({problem}); the local record is complete")
            return {**self.info, "error": problem}
        return self._outcome(probe)

    def _outcome(self, probe: VersionProbe | None = None) -> dict[str, Any]:
        """Where the data went, said once on the terminal (unless `open` already said it)."""
        info = self.info
        archive = self._archive()
        if self.mode == "online" and archive is None:
            info["url"] = self.experiment.url
            log.info(f"Comet: {self.experiment.url or 'online, experiment ' + self.experiment.get_key()}")
            return info
        if archive is None:
            log.warning("Comet wrote no offline archive (see comet/comet.log)")
            return {**info, "error": "no offline archive written"}
        info["archive"] = str(archive)
        shown = os.path.relpath(archive)
        if self.mode == "online":  # the server was lost during the run: the archive holds all of it
            lost = "it stopped answering"
            if probe:
                lost = probe.reason() or "it answers again, but did not take the data in time"
            info.update(mode="offline", fallback=f"server lost during the run: {lost}")
            if self.experiment.url:
                info["url"] = self.experiment.url
            log.warning(
                f"Comet lost {server_url()} during the run ({lost}); all its data is in {shown} "
                f"(upload: comet upload --force-reupload {shown})"
            )
        elif self.fallback:
            info["fallback"] = self.fallback
            note(f"offline archive: {shown}")
        else:
            log.info(f"Comet offline archive: {shown}  (upload: comet upload {shown})")
        return info

    def _archive(self) -> Path | None:
        """This run's archive: online, the one Comet fell back to; offline, the newest of this experiment
        (a resumed run's folder also holds the archive of its first part)."""
        if self.mode == "online":
            path = getattr(getattr(self.experiment, "streamer", None), "offline_archive_file", None)
            return Path(path) if path and Path(path).exists() else None
        archives = [
            p for p in self.folder.glob(f"{self.experiment.id}*.zip") if p.stat().st_mtime >= self.started - 1
        ]
        return max(archives, key=os.path.getmtime) if archives else None
