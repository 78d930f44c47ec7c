"""comet_ml's and urllib3's log records go to the run's comet/comet.log, API key redacted, never to the
terminal: the user sees one line of ours about Comet per run, and comet.log keeps comet_ml's account
(tracebacks included) and our own notes."""

from __future__ import annotations

import logging
from pathlib import Path

LOGGERS = ("comet_ml", "urllib3")  # urllib3 warns of each failed request of comet_ml's


class _CometLog(logging.Handler):
    """Appends records to the current run's comet/comet.log, secrets redacted (comet_ml redacts its API key
    only in its own handlers). Opening the file per record holds no file open between runs, and a file that
    cannot be written costs only the record."""

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
