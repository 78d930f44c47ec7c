"""Finding the runs under some directories and reading what each left behind."""

from __future__ import annotations

import contextlib
import csv
import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

FAMILY_ORDER = ("plain", "resnet", "densenet", "densenet_b", "densenet_c", "densenet_bc")


def _number(text: str) -> float | str:
    try:
        return float(text)
    except ValueError:
        return text


@dataclass
class Run:
    """One run directory: its summary.json, metrics.csv rows and composed config (each may be missing)."""

    path: Path
    summary: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    rows: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def read(cls, path: Path) -> Run:
        run = cls(path)
        if (path / "summary.json").exists():
            try:
                run.summary = json.loads((path / "summary.json").read_text())
            except ValueError as error:
                run.summary = {"status": "unreadable", "error": f"summary.json: {error}"}
        if (path / ".hydra" / "config.yaml").exists():
            with contextlib.suppress(Exception):  # a damaged config only costs the run its labels
                run.config = OmegaConf.to_container(OmegaConf.load(path / ".hydra" / "config.yaml"))
        if (path / "metrics.csv").exists():
            with (path / "metrics.csv").open(newline="") as f:
                run.rows = [{k: _number(v) for k, v in row.items() if v != ""} for row in csv.DictReader(f)]
        return run

    def get(self, key: str) -> Any:
        return self.summary.get(key)

    @property
    def status(self) -> str:
        """completed, failed, diverged, interrupted, or unfinished (no summary: still running or killed)."""
        return self.summary.get("status", "unfinished")

    @property
    def command(self) -> str:
        return self.summary.get("command") or ("profile" if "profile" in self.config else "train")

    @cached_property
    def arch(self) -> str:
        if "arch" in self.summary:
            return self.summary["arch"]
        arch = self.config.get("arch", {})
        return "plain" if arch.get("shortcut") == "none" else arch.get("name", "?")

    @property
    def depth(self) -> int:
        depth = self.summary.get("depth", self.config.get("arch", {}).get("depth"))
        return depth if isinstance(depth, int) else 0

    @property
    def dataset(self) -> str:
        return self.summary.get("dataset") or self.config.get("dataset", {}).get("name", "?")

    @property
    def memory_efficient(self) -> bool:
        return bool(self.summary.get("memory_efficient", self.config.get("arch", {}).get("memory_efficient")))

    @property
    def _variant(self) -> str:
        return " memory-efficient" if self.memory_efficient else ""

    @property
    def family(self) -> str:
        """`resnet`, `densenet_bc memory-efficient`: the family and whether it recomputes in backward."""
        return self.arch + self._variant

    @property
    def label(self) -> str:
        """`plain-56`, `densenet_bc-100 memory-efficient`: the net as the papers name it."""
        return f"{self.arch}-{self.depth}{self._variant}"

    @property
    def train_errors(self) -> list[float]:
        return [1 - row["train/acc"] for row in self.rows if isinstance(row.get("train/acc"), float)]

    def sort_key(self) -> tuple:
        family = FAMILY_ORDER.index(self.arch) if self.arch in FAMILY_ORDER else len(FAMILY_ORDER)
        return (
            self.command != "train",
            self.dataset,
            family,
            self.arch,
            self.depth,
            self.memory_efficient,
            str(self.path),
        )


def find_runs(directories: list[Path]) -> list[Run]:
    """Every run under `directories`: a directory holding .hydra/ (composed by Hydra) or summary.json."""
    paths = {
        marker.parent
        for directory in directories
        for pattern in (".hydra", "summary.json")
        for marker in directory.rglob(pattern)
    }
    return sorted((Run.read(path) for path in paths), key=Run.sort_key)
