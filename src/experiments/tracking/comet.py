"""Comet, online when a key is configured and the server answers, otherwise an offline archive.

The run starts its experiment itself (Lightning's CometLogger cannot log offline in 2.5-2.6) and logs to it
through tracking.loggers.CometLogger. Both ends are bounded in time whatever the server does: the online
start runs in a thread with a deadline and falls back to an offline experiment on any failure, and the end
of the run waits a few seconds for the server before the data goes to the archive. comet_ml's own log
records (tracebacks included) go to the run's comet/comet.log, never to the terminal: the user sees one line
of ours about Comet per run.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import torch

from experiments import settings
from experiments.record import RunRecord
from experiments.tracking import dashboard
from experiments.tracking.loggers import CometLogger

log = logging.getLogger(__name__)

HTTP_TIMEOUT_S = 2
MAX_ANSWER_BYTES = 64 * 1024  # a version answer is a few dozen bytes
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
LOGGERS = ("comet_ml", "urllib3")  # urllib3 warns of each failed request of comet_ml's


class _CometLog(logging.Handler):
    """Appends comet_ml's and urllib3's records to the current run's comet/comet.log, API key redacted
    (comet_ml redacts it only in its own handlers). Opening the file per record holds no file open between
    runs, and a file that cannot be written costs only the record."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.path: Path | None = None
        self.secrets: set[str] = set()
        self.setFormatter(logging.Formatter("%(asctime)s %(threadName)s %(name)s %(levelname)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        if self.path is None:
            return
        try:
            with self.path.open("a") as file:
                file.write(redact(self.format(record), self.secrets) + "\n")
        except Exception:  # never handleError: it prints a traceback to stderr
            pass


_COMET_LOG = _CometLog()


def redact(text: str, secrets: set[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, "***")
    return text


def route_library_logs(path: Path | None, secret: str | None = None) -> None:
    """From now on comet_ml's and urllib3's records go to `path` (None: nowhere), and none to the terminal:
    comet_ml's own console handler is removed, and neither logger propagates to the root's handlers."""
    for name in LOGGERS:
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            if type(handler) is logging.StreamHandler:
                logger.removeHandler(handler)
        if _COMET_LOG not in logger.handlers:
            logger.addHandler(_COMET_LOG)
        logger.propagate = False
    logging.getLogger("comet_ml").setLevel(logging.INFO)
    _COMET_LOG.path = path
    if secret:
        _COMET_LOG.secrets.add(secret)


def note(message: str) -> None:
    """A line for comet/comet.log only (the terminal has had its one line about Comet)."""
    _COMET_LOG.handle(logging.LogRecord(__name__, logging.INFO, __file__, 0, message, None, None))


class _Watch(logging.Handler):
    """Remembers comet_ml's warnings and errors (with their exceptions) while attached: why a start
    failed."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.texts: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if len(self.texts) < 20:
            error = record.exc_info[1] if record.exc_info else None
            self.texts.append(record.getMessage() + "\n" + _chain(error))

    @contextmanager
    def attached(self) -> Iterator[_Watch]:
        logger = logging.getLogger("comet_ml")
        logger.addHandler(self)
        try:
            yield self
        finally:
            logger.removeHandler(self)


def _chain(error: BaseException | None) -> str:
    """`error` and everything it was raised from or during, one repr a line."""
    lines, seen = [], set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        lines.append(repr(error))
        error = error.__cause__ or error.__context__
    return "\n".join(lines)


REASONS = (
    (("Connection refused", "ConnectionRefusedError"), "connection refused"),
    (("Connection reset", "ConnectionResetError"), "the connection was reset"),
    (("timed out", "Timeout"), f"no answer within {HTTP_TIMEOUT_S} s"),
    (("JSONDecodeError", "Expecting value"), "it answers, but not as Comet does (a captive portal?)"),
    (("Name or service not known", "name resolution", "nodename nor servname"), "its name does not resolve"),
    (("SSLError", "CERTIFICATE_VERIFY_FAILED"), "TLS failed"),
    (("InvalidAPIKey", "nvalid API key", "status code 401", "status code 403"), "the API key was refused"),
)


def why(texts: list[str], secrets: set[str]) -> str:
    """What went wrong, in a few words, from comet_ml's messages and exceptions."""
    every = "\n".join(texts)
    for needles, reason in REASONS:
        if any(needle in every for needle in needles):
            return reason
    first = next((line.strip() for text in texts for line in text.splitlines() if line.strip()), "")
    return redact(first[:200], secrets) or "no reason given (see comet/comet.log)"


def _within(
    deadline: float, work: Callable[[], Any], late: Callable[[Any], None] | None = None
) -> tuple[bool, Any, BaseException | None]:
    """(finished, result, error) of `work` run in a daemon thread for at most `deadline` seconds. A result
    that comes after the deadline goes to `late` (an experiment started too late is ended there)."""
    box: dict[str, Any] = {}
    lock = threading.Lock()

    def run() -> None:
        try:
            box["result"] = work()
        except BaseException as error:
            box["error"] = error
        with lock:
            abandoned = box.get("abandoned", False)
        if abandoned and late is not None and box.get("result") is not None:
            with suppress(BaseException):
                late(box["result"])

    thread = threading.Thread(target=run, name="comet-deadline", daemon=True)
    thread.start()
    thread.join(deadline)
    with lock:
        if thread.is_alive():
            box["abandoned"] = True
            return False, None, None
    return True, box.get("result"), box.get("error")


def _end_quietly(experiment: Any) -> None:
    _within(END_DEADLINE_S, experiment.end)


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


def start(
    logger_cfg: Mapping[str, Any],
    run_dir: Path,
    name: str,
    tags: list[str],
    resume_epoch: int | None = None,
    record: RunRecord | None = None,
) -> CometRun | None:
    """The run's Comet experiment, or None unless logger=comet.

    A resumed run (`resume_epoch`) continues the experiment whose key its run directory kept. Comet never
    fails the run: a comet/ folder that cannot be written disables it (mode "disabled", one line), a server
    that cannot be used makes it offline (one line). `record` gives the parameters a dashboard groups by.
    """
    if logger_cfg["name"] != "comet":
        return None
    folder = run_dir / "comet"
    if reason := unwritable(folder):
        route_library_logs(None)
        log.warning(f"Comet disabled: {reason}; the run goes on without it")
        return CometRun(None, "disabled", folder, time.time(), reason=reason)
    key_file = folder / "experiment_key"
    key = key_file.read_text().strip() if resume_epoch is not None and key_file.exists() else None
    run = CometRun.start(folder, name, tags, logger_cfg, key)
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


def server_url() -> str:
    from comet_ml.config import get_comet_root_url, get_config

    return get_comet_root_url(get_config())


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
    def start(
        cls, folder: Path, name: str, tags: list[str], logger_cfg: Mapping[str, Any], key: str | None
    ) -> CometRun:
        """Online when a key is set (and logger.online allows), else or on any failure offline; disabled
        when not even the offline experiment starts."""
        os.environ.update(SETTINGS)
        import comet_ml  # after SETTINGS: some are read at import

        route_library_logs(folder / "comet.log")
        api_key = settings.comet_api_key()
        route_library_logs(folder / "comet.log", secret=api_key)
        online = logger_cfg["online"]
        settings.check_comet_key(online)
        secrets = {api_key} if api_key else set()
        options = {
            "project_name": logger_cfg["project"],
            "workspace": logger_cfg["workspace"],
            "experiment_key": key,
            "mode": "create" if key is None else "get_or_create",
            "experiment_config": _experiment_config(name, tags, folder),
        }
        started, fallback = time.time(), None
        with _beside_others():
            if api_key and online is not False:
                experiment, fallback = _start_online(comet_ml, options, secrets)
                if experiment is not None:
                    return cls(experiment, "online", folder, started)
            experiment, problem = _start_offline(comet_ml, options, secrets)
        if experiment is None:
            log.warning(f"Comet disabled: {problem}; the run goes on without it")
            return cls(None, "disabled", folder, started, reason=problem)
        if fallback:
            log.warning(
                f"Comet server {server_url()}: {fallback}; logging offline instead "
                f"(afterwards: comet upload {os.path.relpath(_offline_archive(experiment, folder))})"
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
        probe = _Probe() if self.mode == "online" else None
        finished, _, error = _within(END_DEADLINE_S, self.experiment.end)
        note(f"end: {time.perf_counter() - took:.1f} s")
        if not finished or error is not None:
            problem = f"did not finish within {END_DEADLINE_S:g} s" if not finished else repr(error)
            log.warning(f"Comet failed at the end of the run ({problem}); the local record is complete")
            return {**self.info, "error": problem}
        return self._outcome(probe)

    def _outcome(self, probe: _Probe | None = None) -> dict[str, Any]:
        """Where the data went, said once on the terminal (unless the start already said it)."""
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


class _Probe:
    """The server's version check, asked in a thread: whether the server answers as Comet does, and if not
    what it does, in a few words. At most MAX_ANSWER_BYTES are read: a server that streams without end
    costs this thread that much memory, and the run no wait beyond HTTP_TIMEOUT_S + 1."""

    def __init__(self) -> None:
        from comet_ml.connection.connection_url_helpers import get_backend_version_url

        self.url = get_backend_version_url(server_url())
        self.ok = False
        self.answer: str | None = None
        self.thread = threading.Thread(target=self._ask, name="comet-probe", daemon=True)
        self.thread.start()

    def _ask(self) -> None:
        try:
            # a new opener: urlopen's own keeps the proxies of the environment at its first use, and
            # comet_ml's requests read them at each request
            with urllib.request.build_opener().open(self.url, timeout=HTTP_TIMEOUT_S) as response:
                body = response.read(MAX_ANSWER_BYTES + 1)
            if len(body) > MAX_ANSWER_BYTES:
                self.answer = (
                    f"it answers, but not as Comet does (over {MAX_ANSWER_BYTES // 1024} KiB for its version)"
                )
                return
            json.loads(body)
            self.ok = True
        except urllib.error.HTTPError as error:  # its text would quote the whole URL
            self.answer = f"it answers HTTP {error.code} ({error.reason})"
        except Exception as error:
            self.answer = why([_chain(error)], set())

    def reason(self) -> str | None:
        """None when the server answered as Comet does, else why not."""
        self.thread.join(HTTP_TIMEOUT_S + 1)
        if self.ok:
            return None
        return self.answer or f"no answer within {HTTP_TIMEOUT_S} s"


_STARTS = threading.Lock()


@contextmanager
def _beside_others() -> Iterator[None]:
    """comet_ml keeps one experiment per process and ends it when another one starts. Runs packed in one
    process (hydra/launcher=packed) each keep theirs: they start in turn, and a start does not see the last
    run's experiment. (comet_ml's own log records then go to the comet.log of the run that started last.)"""
    from comet_ml.config import set_global_experiment

    with _STARTS:
        set_global_experiment(None)
        yield


def _start_online(comet_ml: Any, options: dict[str, Any], secrets: set[str]) -> tuple[Any, str | None]:
    """(the online experiment, None), or (None, why it could not be used) within START_DEADLINE_S. comet_ml
    talks to the server only once it has answered our own bounded version check: comet_ml reads an answer
    whole, however long it streams."""
    probe = _Probe()
    if reason := probe.reason():
        note(f"version check {probe.url}: {reason}; comet_ml was not started online")
        return None, reason
    with _Watch().attached() as watch:
        finished, experiment, error = _within(
            START_DEADLINE_S, lambda: comet_ml.start(online=True, **options), late=_end_quietly
        )
    if not finished:
        return None, f"no experiment within {START_DEADLINE_S:g} s"
    if error is not None:
        return None, why([*watch.texts, _chain(error)], secrets)
    if experiment.alive and not getattr(experiment.streamer, "offline_streamer_disabled_or_failed", False):
        return experiment, None
    if experiment.alive:  # Comet would keep no archive to fall back on if the server went away
        reason = "it does not say its version, so Comet could not keep a backup archive"
    else:
        reason = why(watch.texts, secrets)
    _end_quietly(experiment)
    return None, reason


def _start_offline(comet_ml: Any, options: dict[str, Any], secrets: set[str]) -> tuple[Any, str | None]:
    """(the offline experiment, None), or (None, why not)."""
    with _Watch().attached() as watch:
        finished, experiment, error = _within(
            START_DEADLINE_S, lambda: comet_ml.start(online=False, **options), late=_end_quietly
        )
    if not finished:
        return None, f"no offline experiment within {START_DEADLINE_S:g} s"
    if error is not None or not experiment.alive:
        return None, "the offline experiment did not start: " + why([*watch.texts, _chain(error)], secrets)
    return experiment, None


def _offline_archive(experiment: Any, folder: Path) -> Path:
    """Where an offline experiment will write its archive (comet_ml names it at the end)."""
    name = getattr(experiment, "_get_offline_archive_file_name", None)
    return folder / name() if callable(name) else folder
