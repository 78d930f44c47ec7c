"""Statistics of runs over their seeds, for the report's tables and figures and the analysis commands'
summaries (no plotting here): runs grouped by config, each seed once; the per-block signals in log space;
the lesions' rises, with the seeds whose net did not train set apart."""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from experiments import environment
from experiments.report.aggregate import config_key, differences
from experiments.report.collect import Run


def log_band(values: list[float]) -> tuple[float, float, float]:
    """(mean, low, high) of positive `values` in log space: the geometric mean and the geometric standard
    deviation on either side (values that span 1e-18 to 1e5 have no meaningful arithmetic mean)."""
    logs = [math.log10(v) for v in values]
    mean = statistics.mean(logs)
    spread = statistics.stdev(logs) if len(logs) > 1 else 0.0
    return 10**mean, 10 ** (mean - spread), 10 ** (mean + spread)


@dataclass
class Config:
    """The runs of one config and command over their seeds (each seed once), as one line of a figure."""

    runs: list[Run]
    detail: str = ""  # what sets it apart from other configs of the same net (`optim.lr=0.1`), where any

    @property
    def name(self) -> str:
        """`resnet-56, optim.lr=0.1 (n=3)`: its line in a figure's legend and its row in a table."""
        first = self.runs[0]
        detail = f", {self.detail}" if self.detail else ""
        return (
            first.net + detail + (" (probe)" if first.command == "probe" else "") + f" (n={len(self.runs)})"
        )

    @property
    def net(self) -> tuple[str, str]:
        return self.runs[0].net, self.runs[0].dataset


def by_config(runs: list[Run]) -> list[Config]:
    """`runs` grouped by config, environment and command, in the runs' order; each seed once (a completed
    run before any other of its seed). A config in several environments is one line per environment, named
    by what differs between them (`threads=2`)."""
    found: dict[tuple[str, tuple, str], list[Run]] = {}
    for run in sorted(runs, key=lambda r: r.status != "completed"):
        key = (config_key(run), environment.numerical(run.get("environment")), run.command)
        same = found.setdefault(key, [])
        if _seed(run) not in [_seed(r) for r in same]:
            same.append(run)
    order = {id(run): i for i, run in enumerate(runs)}
    groups = sorted(found.items(), key=lambda item: min(order[id(r)] for r in item[1]))
    details = differences([group[0] for (_, _, command), group in groups if command == "train"])
    envs: dict[str, list[dict | None]] = defaultdict(list)
    for (config, _, _), group in groups:
        envs[config].append(group[0].get("environment"))
    configs = []
    for (config, _, _), group in groups:
        where = environment.difference(group[0].get("environment"), envs[config])
        configs.append(Config(group, ", ".join(filter(None, [details.get(id(group[0]), ""), where]))))
    return configs


def _seed(run: Run) -> Any:
    return run.get("seed") if run.record else run.config.get("seed")


def signal_over_seeds(
    runs: list[Run], quantity: str, step: float | None
) -> dict[float, tuple[float, float, float, int]]:
    """block index -> (mean, low, high, n) of `quantity` over the runs' seeds in log space, at `step` (None:
    each run's last signal step, the same step for runs of one config); non-positive values left out."""
    by_index: dict[float, list[float]] = defaultdict(list)
    for run in runs:
        at = step if step is not None else max(row["step"] for row in run.signals)
        for row in run.signals:
            if row["quantity"] == quantity and row["step"] == at and row["value"] > 0:
                by_index[row["index"]].append(row["value"])
    return {index: (*log_band(values), len(values)) for index, values in sorted(by_index.items())}


# A seed whose net ended with a test error above this did not train: deleting its blocks says nothing
# of how a trained net depends on them (a lesion of a net at 70% error), so it is flagged and left out.
UNTRAINED_ERROR = 0.5


def intact_error(run: Run) -> float:
    return next(r["test_error"] for r in run.lesion if r["kind"] == "intact")


@dataclass
class LesionSummary:
    """One config's lesions over its seeds: each seed's intact error, the rise one deleted block causes."""

    config: Config
    intact: list[float]  # per seed
    mean_rise: list[float]  # per trained seed: the mean over blocks of (error with it deleted - intact)
    largest_rise: list[float]  # per trained seed

    @property
    def untrained(self) -> list[Run]:
        return [run for run in self.config.runs if intact_error(run) > UNTRAINED_ERROR]


def lesion_summaries(runs: list[Run]) -> list[LesionSummary]:
    summaries = []
    for config in by_config([r for r in runs if r.lesion]):
        rises = []
        for run in config.runs:
            if intact_error(run) <= UNTRAINED_ERROR:
                singles = [r["test_error"] for r in run.lesion if r["kind"] == "single" and "test_error" in r]
                rises.append([e - intact_error(run) for e in singles] or [0.0])
        summaries.append(
            LesionSummary(
                config,
                [intact_error(run) for run in config.runs],
                [statistics.mean(r) for r in rises],
                [max(r) for r in rises],
            )
        )
    return summaries


def moments(configs: list[Config]) -> list[tuple[str, float | None, list[Config]]]:
    """The panels' moments and the configs each shows: initialisation (a probe only where no training run
    of the same net has its step 0: one line a net), then the last measured step of the training runs."""
    trained = [c for c in configs if c.runs[0].command != "probe"]
    nets_trained = {c.net for c in trained}
    at_init = trained + [c for c in configs if c.runs[0].command == "probe" and c.net not in nets_trained]
    found = [("at initialisation (step 0)", 0.0, at_init)]
    if any(row["step"] > 0 for c in trained for row in c.runs[0].signals):
        found.append(("at the last measured step", None, trained))
    return found
