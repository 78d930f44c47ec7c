"""Finding the runs under some directories and reading what each left behind."""

from __future__ import annotations

import contextlib
import csv
import logging
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from experiments import papers, specs
from experiments.record import RunRecord, read_metrics, read_record

log = logging.getLogger(__name__)

# the nets by their label (the record's `arch`), in the report's order
LABEL_ORDER = ("plain", "resnet", "densenet", "densenet_b", "densenet_c", "densenet_bc")
# The instruments' files: the columns every row has, and what they hold (float: a number; object: anything)
TABLE_COLUMNS: dict[str, dict[str, type]] = {
    "signals.csv": {"step": float, "block": object, "index": float, "quantity": str, "value": float},
    "lesion.csv": {"kind": str, "k": float},
    "feature_reuse.csv": {"block": float, "target": object, "source": float, "value": float},
    "landscape.csv": {"kind": str, "direction": float, "x": float, "loss": float, "error": float},
    "paths.csv": {
        k: float for k in ("k", "samples", "grad_norm_mean", "grad_norm_std", "paths", "contribution")
    },
    "curvature.csv": {"quantity": str, "value": float, "images": float},
}


@dataclass
class Run:
    """One run directory: its record (summary.json), metrics.csv rows and composed config (each may be
    missing; a summary.json that is not a record makes the run `unreadable`, with the reason)."""

    path: Path
    record: RunRecord | None = None
    problem: str | None = None  # why summary.json could not be read
    config: dict[str, Any] = field(default_factory=dict)
    job: str | None = None  # without a record, the command that made the run as Hydra recorded it
    rows: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def read(cls, path: Path) -> Run:
        run = cls(path)
        try:
            run.record = read_record(path / "summary.json")
        except ValueError as error:
            run.problem = f"{path / 'summary.json'}: {error}"
        if (path / ".hydra" / "config.yaml").exists():
            with contextlib.suppress(Exception):  # a damaged config only costs the run its labels
                config = OmegaConf.load(path / ".hydra" / "config.yaml")
                try:
                    run.config = OmegaConf.to_container(config, resolve=True)
                except Exception:  # an interpolation that needs what is not here: as written
                    run.config = OmegaConf.to_container(config)
        if run.record is None:  # the record names its command; without it, Hydra's job name does
            with contextlib.suppress(Exception):  # a damaged hydra.yaml only costs the run that name
                run.job = str(OmegaConf.load(path / ".hydra" / "hydra.yaml").hydra.job.name)
        with contextlib.suppress(Exception):  # a damaged metrics.csv only costs the run its curves
            run.rows = read_metrics(path / "metrics.csv")
        return run

    def get(self, key: str) -> Any:
        """A field of the run's record; None without one."""
        return getattr(self.record, key, None) if self.record else None

    @property
    def status(self) -> str:
        """completed, failed, diverged, interrupted; unreadable (a summary.json that is not a record), or
        unfinished (no summary: still running, or killed)."""
        if self.problem:
            return "unreadable"
        return self.record.status if self.record else "unfinished"

    @property
    def command(self) -> str:
        return self.record.command if self.record else self.job or "train"

    @cached_property
    def arch(self) -> str:
        """The net's label (`resnet`, `densenet_bc`, ...), as its record's `arch` holds it; without a record,
        the family its config asks for."""
        if self.record:
            return self.record.arch
        arch = self.config.get("arch", {})
        return specs.family_of(str(arch.get("name", "?")), arch.get("shortcut"))

    @property
    def depth(self) -> int:
        depth = self.record.depth if self.record else self.config.get("arch", {}).get("depth")
        return depth if isinstance(depth, int) else 0

    @property
    def dataset(self) -> str:
        return self.record.dataset if self.record else str(self.config.get("dataset", {}).get("name", "?"))

    @property
    def memory_efficient(self) -> bool:
        if self.record:
            return self.record.memory_efficient
        return bool(self.config.get("arch", {}).get("memory_efficient"))

    @property
    def _variant(self) -> str:
        return " memory-efficient" if self.memory_efficient else ""

    @property
    def series(self) -> str:
        """`resnet`, `densenet_bc memory-efficient`: the net's label and whether it recomputes in backward, a
        series of the figures against depth."""
        return self.arch + self._variant

    @property
    def net(self) -> str:
        """`plain-56`, `densenet_bc-100 memory-efficient`: the net as the papers name it."""
        return f"{self.arch}-{self.depth}{self._variant}"

    @property
    def train_errors(self) -> list[float]:
        return [1 - row["train/acc"] for row in self.rows if isinstance(row.get("train/acc"), float)]

    @cached_property
    def signals(self) -> list[dict[str, Any]]:
        """signals.csv's rows (step, block, index, quantity, value), numbers as numbers; none without it."""
        return self._table("signals.csv")

    @cached_property
    def lesion(self) -> list[dict[str, Any]]:
        """lesion.csv's rows (kind, k, blocks, test_error, note)."""
        return self._table("lesion.csv")

    @cached_property
    def reuse(self) -> list[dict[str, Any]]:
        """feature_reuse.csv's rows (block, target, source, value)."""
        return self._table("feature_reuse.csv")

    def measured(self, name: str) -> list[dict[str, Any]]:
        """The rows of landscape.csv, paths.csv or curvature.csv, read once (as `_table` reads them)."""
        if name not in self._measurements:
            self._measurements[name] = self._table(name)
        return self._measurements[name]

    @cached_property
    def _measurements(self) -> dict[str, list[dict[str, Any]]]:
        return {}

    def _table(self, name: str) -> list[dict[str, Any]]:
        """The rows of one of the instruments' files; none where it is missing or damaged (a damaged file
        only costs the run that figure, and the report says so in a line)."""
        try:
            rows = read_metrics(self.path / name)
        except (OSError, ValueError, csv.Error):
            rows = None
        if rows is None or not all(_well_formed(row, name) for row in rows):
            log.warning(f"{self.path / name} is damaged: left out of the report")
            return []
        return rows

    @property
    def trained(self) -> bool:
        """A training run that completed."""
        return self.command == "train" and self.status == "completed"

    @property
    def paper_test_error(self) -> float | None:
        """The paper's test error for a training run's net and data: its record's, or looked up from its
        config where the record has no `paper_test_error`."""
        if self.command != "train":
            return None
        return self.get("paper_test_error") or papers.for_config(self.config)

    @property
    def error(self) -> str | None:
        return self.problem or self.get("error")

    def sort_key(self) -> tuple:
        order = LABEL_ORDER.index(self.arch) if self.arch in LABEL_ORDER else len(LABEL_ORDER)
        return (
            self.status == "unreadable",
            self.command != "train",
            self.dataset,
            order,
            self.arch,
            self.depth,
            self.memory_efficient,
            str(self.path),
        )


def _well_formed(row: dict[str, Any], name: str) -> bool:
    """Whether a row of `name` has its columns, numbers where numbers go (lesion.csv: an intact or
    deleted-block row has a test error unless its note says why not, a single block's index is a number)."""
    if not all(c in row and isinstance(row[c], kind) for c, kind in TABLE_COLUMNS[name].items()):
        return False
    if name != "lesion.csv":
        return True
    error = row.get("test_error")
    if error is None:
        return row["kind"] != "intact" and bool(row.get("note"))
    return isinstance(error, float) and (row["kind"] != "single" or isinstance(row.get("blocks"), float))


RUN_MARKERS = (".hydra", "summary.json")  # what a run directory holds: Hydra's composed config, its record


def is_run_dir(path: Path) -> bool:
    return path.is_dir() and any((path / marker).exists() for marker in RUN_MARKERS)


def find_runs(directories: list[Path]) -> list[Run]:
    """Every run under `directories`."""
    paths = {
        marker.parent for directory in directories for name in RUN_MARKERS for marker in directory.rglob(name)
    }
    return sorted((Run.read(path) for path in paths), key=Run.sort_key)
