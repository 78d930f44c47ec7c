"""Whether the Comet server answers as Comet does, and when it does not, why, in a few words: our own
bounded version check, and comet_ml's messages and exceptions read for a known cause."""

from __future__ import annotations

import json
import logging
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager

from experiments.tracking.comet_logs import redact

HTTP_TIMEOUT_S = 2
MAX_ANSWER_BYTES = 64 * 1024  # a version answer is a few dozen bytes

REASONS = (
    (("Connection refused", "ConnectionRefusedError"), "connection refused"),
    (("Connection reset", "ConnectionResetError"), "the connection was reset"),
    (("timed out", "Timeout"), f"no answer within {HTTP_TIMEOUT_S} s"),
    (("JSONDecodeError", "Expecting value"), "it answers, but not as Comet does (a captive portal?)"),
    (("Name or service not known", "name resolution", "nodename nor servname"), "its name does not resolve"),
    (("SSLError", "CERTIFICATE_VERIFY_FAILED"), "TLS failed"),
    (("InvalidAPIKey", "nvalid API key", "status code 401", "status code 403"), "the API key was refused"),
)


def server_url() -> str:
    from comet_ml.config import get_comet_root_url, get_config

    return get_comet_root_url(get_config())


def why(texts: list[str], secrets: set[str]) -> str:
    """What went wrong, in a few words, from comet_ml's messages and exceptions."""
    every = "\n".join(texts)
    for needles, reason in REASONS:
        if any(needle in every for needle in needles):
            return reason
    first = next((line.strip() for text in texts for line in text.splitlines() if line.strip()), "")
    return redact(first[:200], secrets) or "no reason given (see comet/comet.log)"


def exception_chain(error: BaseException | None) -> str:
    """`error` and everything it was raised from or during, one repr a line."""
    lines, seen = [], set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        lines.append(repr(error))
        error = error.__cause__ or error.__context__
    return "\n".join(lines)


class Watch(logging.Handler):
    """Remembers comet_ml's warnings and errors (with their exceptions) while attached: why a start
    failed."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.texts: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if len(self.texts) < 20:
            error = record.exc_info[1] if record.exc_info else None
            self.texts.append(record.getMessage() + "\n" + exception_chain(error))

    @contextmanager
    def attached(self) -> Iterator[Watch]:
        logger = logging.getLogger("comet_ml")
        logger.addHandler(self)
        try:
            yield self
        finally:
            logger.removeHandler(self)


class VersionProbe:
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
            self.answer = why([exception_chain(error)], set())

    def reason(self) -> str | None:
        """None when the server answered as Comet does, else why not."""
        self.thread.join(HTTP_TIMEOUT_S + 1)
        if self.ok:
            return None
        return self.answer or f"no answer within {HTTP_TIMEOUT_S} s"
