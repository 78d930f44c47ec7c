"""The rule for secrets: nothing named like a key, secret, password or token may be in a config, because a
config is written to disk (.hydra/, multirun.yaml, the Comet archive). Imports nothing of the project's, so
that both the settings' checks and the error messages can follow it."""

from __future__ import annotations

import re
from typing import Any

SECRET_KEY = re.compile(r"(api_?key|secret|password|token)$", re.IGNORECASE)


def refused(key: str) -> str:
    """The one line that refuses a secret given as `key`."""
    return (
        f"{key}: a secret in the config would be written to disk; set COMET_API_KEY in the environment (or "
        f"run `comet login`) instead, and give no {key}"
    )


def find(config: Any, path: str = "") -> str | None:
    """The dotted key of the first secret in `config` (plain dicts and lists), or None."""
    if isinstance(config, dict):
        for key, value in config.items():
            where = f"{path}{key}"
            if SECRET_KEY.search(str(key)) and value not in (None, "", "???"):
                return where
            if found := find(value, f"{where}."):
                return found
    elif isinstance(config, list):
        for i, value in enumerate(config):
            if found := find(value, f"{path}{i}."):
                return found
    return None
