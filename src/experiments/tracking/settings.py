"""Where a run logs: the `logger` config group (conf/logger/*.yaml) as a frozen value.

Imports nothing heavy (no torch, no comet_ml): the layers that plan a
run read it before they import the libraries it needs.
"""

from __future__ import annotations

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
