"""User-facing errors: anything a user can mistype ends as one line on stderr, never a traceback.

A user who wants the traceback sets HYDRA_FULL_ERROR=1, for every command. Hydra itself must always raise
(we print its errors as one line), so the dispatcher notes the user's wish once in TRACEBACK_ENV, which
launcher worker processes inherit, and `traceback_wanted()` reads it everywhere.
"""

from __future__ import annotations

import os
import re

OVERRIDE_GRAMMAR = "https://hydra.cc/docs/1.3/advanced/override_grammar/basic"
TRACEBACK_ENV = "EXPERIMENTS_TRACEBACK"


class UserError(Exception):
    """A mistake in what the user asked for; its message is the one line they see."""


class RunFailed(Exception):
    """A run ended without completing; its one-line reason was already printed and recorded."""


def note_traceback_wish() -> None:
    """Called once by the dispatcher, before Hydra is told to raise."""
    os.environ[TRACEBACK_ENV] = "1" if os.environ.get("HYDRA_FULL_ERROR") == "1" else "0"


def traceback_wanted() -> bool:
    return os.environ.get(TRACEBACK_ENV) == "1"


def is_user_error(error: BaseException) -> bool:
    """Whether `error` is the user's to fix (their one line says how) rather than a bug of ours."""
    from omegaconf.errors import MissingMandatoryValue

    return isinstance(error, (UserError, RunFailed, MissingMandatoryValue))


def one_line(error: BaseException) -> str:
    """The message a user sees for `error`: Hydra's multi-line composition errors condensed to one line."""
    from hydra.errors import MissingConfigException, OverrideParseException
    from omegaconf.errors import MissingMandatoryValue

    if isinstance(error, MissingMandatoryValue) or isinstance(error.__cause__, MissingMandatoryValue):
        key = getattr(error, "full_key", None) or getattr(error.__cause__, "full_key", "")
        return f"{key} must be set: add {key}=VALUE to the command"
    if isinstance(error, MissingConfigException) and error.options is not None:
        missing = error.missing_cfg_file or ""
        group, _, name = missing.rpartition("/")
        return f"unknown {group or 'config'} option '{name}'; valid: {', '.join(sorted(error.options))}"
    if isinstance(error, OverrideParseException):
        reason = str(error).splitlines()[0]
        return f"cannot parse override '{error.override}': {reason} (the grammar: {OVERRIDE_GRAMMAR})"
    text = str(error) or type(error).__name__  # NotImplementedError() and the like say nothing else
    if "in DataLoader worker process" in text:
        # a worker's error comes back with the worker's whole traceback: its last line is the message
        return text.strip().splitlines()[-1].split(": ", 1)[-1]
    cause = error.__cause__
    key = re.search(r"Could not override '([^']+)'", text)
    if key and cause is not None and "not in struct" in str(cause):
        from experiments import secret

        name = key.group(1)
        if secret.SECRET_KEY.search(name):  # adding it would be refused too
            return secret.refused(name)
        if nearest := _nearest_key(name, getattr(cause, "parent_node", None)):
            return f"unknown config key '{name}'; did you mean '{nearest}'? (--cfg job lists the keys)"
        return f"unknown config key '{name}': misspelled? (--cfg job lists the keys; +{name}=VALUE adds one)"
    if isinstance(error, UserError) or cause is None:
        return " ".join(text.split())
    return " ".join(f"{text}: {cause}".split())


def _nearest_key(name: str, parent: object) -> str | None:
    """The key (or config group) beside where `name` was looked for that is nearest to it in spelling."""
    import difflib

    keys = [str(key) for key in getattr(parent, "keys", list)() if key != "hydra"]
    prefix, _, last = name.rpartition(".")
    nearest = difflib.get_close_matches(last, keys, n=1)
    return f"{prefix}.{nearest[0]}" if nearest and prefix else nearest[0] if nearest else None


def message(error: BaseException, hydra_command: bool = True) -> str:
    """What a command prints after `error: `: the one line, and for a bug of ours in a Hydra command how to
    see its traceback (the other commands take HYDRA_FULL_ERROR too, but a hint naming Hydra there would
    only puzzle)."""
    hint = hydra_command and not is_user_error(error)
    return one_line(error) + (" (HYDRA_FULL_ERROR=1 shows the traceback)" if hint else "")


def describe(error: BaseException) -> str:
    """`error` for a run's record: the user's own message, or the type and message of anything else."""
    return one_line(error) if is_user_error(error) else " ".join(f"{type(error).__name__}: {error}".split())
