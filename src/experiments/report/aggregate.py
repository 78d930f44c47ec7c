"""Runs that differ only in their seed, taken together: mean, standard deviation and n of each error and
loss (aggregate.csv), the papers' figures beside them, and whether two configs differ for real.

Two configs are compared with Welch's t-test (unequal variances) on their per-seed test errors: the
difference of the means, its 95% confidence interval and the two-sided p-value. With fewer than two seeds
on either side there is no test: the report says to run more seeds (`seed=0,1,2,3,4`).
"""

from __future__ import annotations

import csv
import json
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scipy import stats

from experiments.report.collect import Run

KEYS = ("train_error", "val_error", "test_error", "train_loss", "val_loss")


@dataclass
class Group:
    """The completed training runs of one config, over seeds."""

    runs: list[Run] = field(default_factory=list)

    @property
    def first(self) -> Run:
        return self.runs[0]

    @property
    def label(self) -> str:
        return f"{self.first.label} on {self.first.dataset}"

    def values(self, key: str) -> list[float]:
        return [value for run in self.runs if (value := run.get(key)) is not None]

    @property
    def paper(self) -> float | None:
        return self.first.paper_test_error

    def row(self) -> dict[str, Any]:
        row: dict[str, Any] = {
            "arch": self.first.arch,
            "depth": self.first.depth,
            "memory_efficient": self.first.memory_efficient,
            "dataset": self.first.dataset,
            "precision": self.first.get("precision"),
            "epochs": self.first.get("epochs"),
            "seeds": ";".join(str(run.get("seed")) for run in self.runs),
            "n": len(self.runs),
        }
        for key in KEYS:
            values = self.values(key)
            row[f"{key}_mean"] = statistics.mean(values) if values else None
            row[f"{key}_std"] = statistics.stdev(values) if len(values) > 1 else None
        row["paper_test_error"] = self.paper
        return row


def _config_key(run: Run) -> str:
    """What names a config but its seed: the composed config without seed and Hydra's settings."""
    if run.config:
        config = {k: v for k, v in run.config.items() if k not in ("seed", "hydra")}
    else:
        config = {
            k: run.get(k) for k in ("arch", "depth", "dataset", "memory_efficient", "precision", "epochs")
        }
    return json.dumps(config, sort_keys=True, default=str)


def groups(runs: list[Run]) -> list[Group]:
    """Completed training runs grouped by config, in the report's order."""
    found: dict[str, Group] = defaultdict(Group)
    for run in runs:
        if run.trained:
            found[_config_key(run)].runs.append(run)
    return list(found.values())


def write_csv(found: list[Group], path: Path) -> None:
    rows = [group.row() for group in found]
    columns = list(rows[0]) if rows else ["n"]
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


@dataclass
class Comparison:
    """Welch's test of two configs' test errors (a minus b)."""

    a: Group
    b: Group
    difference: float
    low: float | None = None  # the 95% confidence interval of the difference, where there is a test
    high: float | None = None
    p_value: float | None = None

    @property
    def verdict(self) -> str:
        if self.p_value is None:
            return "no test: fewer than 2 seeds on a side (run seed=0,1,2,3,4)"
        real = "significant" if self.p_value < 0.05 else "not significant"
        return f"{real} at the 5% level (p = {self.p_value:.3g})"


def compare(a: Group, b: Group) -> Comparison:
    x, y = a.values("test_error"), b.values("test_error")
    difference = statistics.mean(x) - statistics.mean(y)
    if len(x) < 2 or len(y) < 2:
        return Comparison(a, b, difference)
    va, vb = statistics.variance(x) / len(x), statistics.variance(y) / len(y)
    if va + vb == 0:
        return Comparison(a, b, difference, difference, difference, 0.0 if difference else 1.0)
    dof = (va + vb) ** 2 / (va**2 / (len(x) - 1) + vb**2 / (len(y) - 1))
    half = stats.t.ppf(0.975, dof) * (va + vb) ** 0.5
    p_value = stats.ttest_ind(x, y, equal_var=False).pvalue
    return Comparison(a, b, difference, difference - half, difference + half, float(p_value))


def plain_vs_residual(found: list[Group]) -> list[Comparison]:
    """Each plain net against the residual net of the same depth and dataset (He et al.'s comparison):
    the configs the error-against-depth figure sets side by side."""
    residual = {(g.first.dataset, g.first.depth): g for g in found if g.first.arch == "resnet"}
    return [
        compare(g, residual[(g.first.dataset, g.first.depth)])
        for g in found
        if g.first.arch == "plain" and (g.first.dataset, g.first.depth) in residual
    ]
