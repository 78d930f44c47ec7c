"""A call that may hang (comet_ml waiting on a server) run for at most a given time."""

from __future__ import annotations

import threading
from collections.abc import Callable
from contextlib import suppress
from typing import Any


def within(
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

    # the thread's name heads each record comet_ml logs from it in comet.log
    thread = threading.Thread(target=run, name="comet-deadline", daemon=True)
    thread.start()
    thread.join(deadline)
    with lock:
        if thread.is_alive():
            box["abandoned"] = True
            return False, None, None
    return True, box.get("result"), box.get("error")
