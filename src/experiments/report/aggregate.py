"""Runs that differ only in their seed, taken together, and the verdicts drawn from them.

A group is one config (the composed config less its seed) trained in one environment (the part of
`experiments.environment` that can change the numbers: versions, CPU kernels, threads, numerical flags, GPU;
not the host). Runs of a group that share a seed are one experiment repeated: counted once. The same config
in two environments makes two groups, and where they share seeds the report sets them side by side: that is
the cross-machine comparison.

A verdict compares two groups on one metric with Welch's t-test (unequal variances): the difference of the
means, its 95% confidence interval and the two-sided p-value. Where that cannot decide (fewer than two seeds
a side, or p >= 0.05) the verdict is "unresolved", never a direction. A verdict between groups of different
environments says so.
"""

from __future__ import annotations

import csv
import json
import math
import statistics
from collections import defaultdict
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scipy import stats

from experiments import environment
from experiments.record import flatten
from experiments.report.collect import Run
from experiments.rundir import drop_neutral, pop_key

KEYS = ("train_error", "val_error", "test_error", "train_loss", "val_loss")
METRICS = {"train_error": "training error", "test_error": "test error"}  # what verdicts are drawn on
LEVEL = 0.05  # a verdict's significance level; its interval is the (1 - LEVEL) confidence interval


@dataclass
class Group:
    """The completed training runs of one config in one environment, one run per seed."""

    runs: list[Run] = field(default_factory=list)
    repeats: int = 0  # runs left out as repeats of a seed already counted (same config and environment)
    tag: str = "E1"  # which of the report's environments it ran in
    tagged: bool = False  # whether its name says so: the report holds its config in several environments
    detail: str = ""  # what sets the config apart from others of the same net (`optim.lr=0.1`), where any

    @property
    def first(self) -> Run:
        return self.runs[0]

    @property
    def environment(self) -> dict[str, Any] | None:
        return self.first.get("environment")

    @property
    def name(self) -> str:
        """`resnet-56 on cifar10, optim.lr=0.1 [E2]`: its row in the report's tables."""
        detail = f", {self.detail}" if self.detail else ""
        return f"{self.first.net} on {self.first.dataset}{detail}" + (f" [{self.tag}]" if self.tagged else "")

    @property
    def seeds(self) -> list[int]:
        return [run.get("seed") for run in self.runs]

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
            "environment": self.tag,
            "seeds": ";".join(map(str, self.seeds)),
            "n": len(self.runs),
            "repeats": self.repeats,
        }
        for key in KEYS:
            values = self.values(key)
            row[f"{key}_mean"] = statistics.mean(values) if values else None
            row[f"{key}_std"] = statistics.stdev(values) if len(values) > 1 else None
        row["paper_test_error"] = self.paper
        return row


def config_key(run: Run, *leave_out: str) -> str:
    """What names a run's config but its seed (and the top-level `leave_out` groups or dotted keys): the
    composed config without seed and Hydra's settings, or the record's description of it."""
    if run.config:
        config = json.loads(json.dumps({k: v for k, v in run.config.items() if k not in ("seed", "hydra")}))
    else:
        config = {"arch": {"name": run.arch, "depth": run.depth, "memory_efficient": run.memory_efficient}}
        config.update({k: run.get(k) for k in ("dataset", "precision", "epochs")})
    drop_neutral(config, lambda dotted: _select(config, dotted, _ABSENT))
    for dotted in leave_out:
        pop_key(config, dotted)
    return json.dumps(config, sort_keys=True, default=str)


_ABSENT = object()


def _select(config: dict[str, Any], dotted: str, default: Any) -> Any:
    node: Any = config
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


def environments(runs: list[Run]) -> list[tuple]:
    """The distinct environments (as `environment.numerical` gives them) of `runs`, in order of appearance:
    E1, E2, ..."""
    return list(dict.fromkeys(environment.numerical(run.get("environment")) for run in runs))


def groups(runs: list[Run]) -> list[Group]:
    """Completed training runs grouped by config and environment, in the report's order; each seed once."""
    trained = [run for run in runs if run.trained]
    tags = {env: f"E{i}" for i, env in enumerate(environments(runs), 1)}
    found: dict[tuple[str, tuple], Group] = defaultdict(Group)
    for run in trained:
        env = environment.numerical(run.get("environment"))
        group = found[(config_key(run), env)]
        if run.get("seed") in group.seeds:
            group.repeats += 1
        else:
            group.runs.append(run)
    envs_of_config = defaultdict(set)
    for config, env in found:
        envs_of_config[config].add(env)
    for (config, env), group in found.items():
        group.tag, group.tagged = tags[env], len(envs_of_config[config]) > 1
    details = differences([group.first for group in found.values()])
    for group in found.values():
        group.detail = details[id(group.first)]
    return list(found.values())


def differences(runs: list[Run]) -> dict[int, str]:
    """For each run (by id), the config values that set it apart from the other runs of the same net and
    dataset (`optim.lr=0.1, schedule.warmup_steps=22`); empty where it is the only config of its net."""
    by_net: dict[tuple[str, str], list[Run]] = defaultdict(list)
    for run in runs:
        by_net[(run.net, run.dataset)].append(run)
    found = {id(run): "" for run in runs}
    for same_net in by_net.values():
        flats = [flatten(json.loads(config_key(run))) for run in same_net]
        keys = sorted({k for flat in flats for k in flat})
        differing = [k for k in keys if len({json.dumps(flat.get(k), default=str) for flat in flats}) > 1]
        for run, flat in zip(same_net, flats, strict=True):
            found[id(run)] = ", ".join(f"{k}={flat.get(k)}" for k in differing)
    return found


def write_csv(found: list[Group], path: Path) -> None:
    rows = [group.row() for group in found]
    columns = list(rows[0]) if rows else ["n"]
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


@dataclass
class Comparison:
    """Welch's test of two groups on one metric (a minus b)."""

    a: Group
    b: Group
    metric: str  # a key of METRICS
    difference: float
    low: float | None = None  # the confidence interval of the difference, where there is a test
    high: float | None = None
    p_value: float | None = None

    @property
    def resolved(self) -> bool:
        return self.p_value is not None and self.p_value < LEVEL

    @property
    def mixed_environments(self) -> bool:
        """Whether the two sides ran in environments that can round differently (the host alone does not)."""
        return environment.numerical(self.a.environment) != environment.numerical(self.b.environment)

    @property
    def verdict(self) -> str:
        if math.isnan(self.difference):
            return "unresolved: a side has no values of it"
        if self.p_value is None:
            return "unresolved: fewer than 2 seeds on a side (run seed=0,1,2,3,4)"
        if not self.resolved:
            return f"unresolved: the interval holds 0 (p = {self.p_value:.2g})"
        higher = self.a if self.difference > 0 else self.b
        return f"{higher.first.net} higher (p = {self.p_value:.2g})"


def compare(a: Group, b: Group, metric: str) -> Comparison:
    x, y = a.values(metric), b.values(metric)
    if not x or not y:  # records that hold no such figure (older ones, a run that never finished an epoch)
        return Comparison(a, b, metric, math.nan)
    difference = statistics.mean(x) - statistics.mean(y)
    if len(x) < 2 or len(y) < 2:
        return Comparison(a, b, metric, difference)
    va, vb = statistics.variance(x) / len(x), statistics.variance(y) / len(y)
    if va + vb == 0:  # both sides the same at every seed: exactly that difference
        return Comparison(a, b, metric, difference, difference, difference, 0.0 if difference else 1.0)
    dof = (va + vb) ** 2 / (va**2 / (len(x) - 1) + vb**2 / (len(y) - 1))
    half = stats.t.ppf(1 - LEVEL / 2, dof) * (va + vb) ** 0.5
    p_value = stats.ttest_ind(x, y, equal_var=False).pvalue
    return Comparison(a, b, metric, difference, difference - half, difference + half, float(p_value))


def _pairs(
    found: list[Group],
    first: Callable[[Group], bool],
    second: Callable[[Group], bool],
    key: Callable[[Group], Hashable],
) -> list[tuple[Group, Group]]:
    """(a, b) for each group `first` picks and each group `second` picks with the same `key`: in the same
    environment where there is one such, else in every environment there is."""
    seconds: dict[Any, list[Group]] = defaultdict(list)
    for group in found:
        if second(group):
            seconds[key(group)].append(group)
    pairs = []
    for a in (group for group in found if first(group)):
        candidates = seconds.get(key(a), [])
        env = environment.numerical(a.environment)
        same = [b for b in candidates if environment.numerical(b.environment) == env]
        pairs += [(a, b) for b in (same or candidates)]
    return pairs


def plain_vs_residual(found: list[Group]) -> list[Comparison]:
    """Each plain net against the residual net of the same depth and otherwise the same config (He et al.'s
    comparison), on training and test error."""
    pairs = _pairs(
        found,
        lambda g: g.first.arch == "plain",
        lambda g: g.first.arch == "resnet",
        lambda g: (config_key(g.first, "arch"), g.first.depth),
    )
    return [compare(a, b, metric) for a, b in pairs for metric in METRICS]


def deeper_vs_shallower(found: list[Group]) -> list[Comparison]:
    """Each net against the shallowest net of its family with otherwise the same config (plain-56 against
    plain-20): degradation is a deeper net training worse."""
    line = {id(g): config_key(g.first, "arch.depth") for g in found}
    shallowest: dict[str, int] = {}
    for group in found:
        shallowest[line[id(group)]] = min(
            shallowest.get(line[id(group)], group.first.depth), group.first.depth
        )
    pairs = _pairs(
        found,
        lambda g: g.first.depth > shallowest[line[id(g)]],
        lambda g: g.first.depth == shallowest[line[id(g)]],
        lambda g: line[id(g)],
    )
    return [compare(a, b, metric) for a, b in pairs for metric in METRICS]


def verdicts(found: list[Group]) -> list[Comparison]:
    """Every comparison the report draws a verdict on."""
    return plain_vs_residual(found) + deeper_vs_shallower(found)


@dataclass
class Disagreement:
    """One config in two environments, over the seeds both ran: how far apart the same seed's runs are."""

    a: Group
    b: Group
    seeds: list[int]
    gaps: list[float]  # |a - b| of the final training error, per shared seed


def across_environments(found: list[Group]) -> list[Disagreement]:
    """Each config that ran in several environments, compared seed for seed."""
    by_config: dict[str, list[Group]] = defaultdict(list)
    for group in found:
        if group.tagged:
            by_config[config_key(group.first)].append(group)
    found_pairs = []
    for same_config in by_config.values():
        for i, a in enumerate(same_config):
            for b in same_config[i + 1 :]:
                shared = [seed for seed in a.seeds if seed in b.seeds]
                errors_a = {run.get("seed"): run.get("train_error") for run in a.runs}
                errors_b = {run.get("seed"): run.get("train_error") for run in b.runs}
                gaps = [
                    abs(errors_a[s] - errors_b[s]) for s in shared if None not in (errors_a[s], errors_b[s])
                ]
                if gaps:
                    found_pairs.append(Disagreement(a, b, shared, gaps))
    return found_pairs
