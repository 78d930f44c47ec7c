"""Where a run logs: the `logger` config group (conf/logger/*.yaml) as a frozen value.

Imports nothing heavy (no torch, no comet_ml, Hydra only when the conf is composed): the layers that plan a
run read it before they import the libraries it needs.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class LoggerSettings:
    """`name`: comet, csv or none; for comet, the `project` and `workspace` its experiments go to, and
    `online`: True, False or "auto" (online when an API key is set)."""

    name: str
    project: str | None = None
    workspace: str | None = None
    online: bool | str = "auto"

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> LoggerSettings:
        """From a `logger` config, a DictConfig or a dict: only comet's holds more than `name`."""
        return cls(
            name=config["name"],
            project=config.get("project"),
            workspace=config.get("workspace"),
            online=config.get("online", "auto"),
        )


@functools.cache
def configured_logger(name: str) -> LoggerSettings:
    """conf/logger/<name>.yaml as a run composes it: the conf is the one place its defaults are written
    (Comet's project name among them)."""
    from experiments.config import compose

    return LoggerSettings.from_config(compose("train", [f"logger={name}"]).logger)
