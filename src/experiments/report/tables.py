"""The report's table: runs.csv (raw numbers) and report.md (formatted, with the figures)."""

from __future__ import annotations

import csv
import statistics
from collections import Counter
from pathlib import Path
from typing import Any

from scipy import stats

from experiments import environment
from experiments.report import aggregate, landscape, over_seeds
from experiments.report.collect import Run


def _percent(n: float) -> str:
    return f"{100 * n:.2f}%"


# (column, record key or None when computed, how report.md heads and shows it)
COLUMNS = [
    ("arch", None, "arch", str),
    ("depth", None, "depth", str),
    ("memory_efficient", None, "memory-efficient", lambda flag: "yes" if flag else ""),
    ("command", None, "command", str),
    ("dataset", None, "dataset", str),
    ("precision", "precision", "precision", str),
    ("batch", "batch_size", "batch", str),
    ("params", "params", "params", lambda n: f"{n / 1e6:.2f}M"),
    ("macs", "macs_per_image", "MACs/image (the papers' FLOPs)", lambda n: f"{n / 1e9:.3f}G"),
    ("flops", "flops_per_image", "FLOPs/image (2 x MACs)", lambda n: f"{n / 1e9:.3f}G"),
    ("activation_memory", "activation_bytes", "activations held (float32)", lambda n: f"{n / 1e6:,.0f} MB"),
    (
        "activation_memory_at_precision",
        "activation_bytes_at_precision",
        "at its precision",
        lambda n: f"{n / 1e6:,.0f} MB",
    ),
    ("peak_memory", "peak_memory_bytes", "peak memory", lambda n: f"{n / 1e6:,.0f} MB"),
    ("step_time_ms", "step_time_ms", "step time", lambda n: f"{n:,.0f} ms"),
    ("epochs", "epochs", "epochs", str),
    ("train_error", "train_error", "train error", _percent),
    ("val_error", "val_error", "val error", _percent),
    ("test_error", "test_error", "test error", _percent),
    ("paper_test_error", None, "paper's test error", _percent),
    ("status", None, "status", str),
    ("run_dir", None, "run dir", str),
]


def row(run: Run) -> dict[str, Any]:
    values = {
        "arch": run.arch,
        "depth": run.depth,
        "memory_efficient": run.memory_efficient,
        "command": run.command,
        "dataset": run.dataset,
        "status": run.status,
        "run_dir": str(run.path),
        "paper_test_error": run.paper_test_error,
    }
    values.update({column: run.get(key) for column, key, _, _ in COLUMNS if key})
    if run.status == "unfinished" and run.rows:  # a killed run: what its record got to
        values["epochs"] = len(run.rows)
    return values


def write_csv(runs: list[Run], path: Path) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[column for column, *_ in COLUMNS])
        writer.writeheader()
        writer.writerows(row(run) for run in runs)


def markdown_table(runs: list[Run]) -> str:
    shown = [(column, head, show) for column, _, head, show in COLUMNS if column != "run_dir"]
    lines = ["| " + " | ".join(head for _, head, _ in shown) + " |", "|" + "---|" * len(shown)]
    for run in runs:
        values = row(run)
        cells = ["-" if values[column] is None else show(values[column]) for column, _, show in shown]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def mean_interval(values: list[float]) -> tuple[float, float] | None:
    """The confidence interval (1 - aggregate.LEVEL: 95%) of the mean of `values` (Student's t), or None for
    fewer than two."""
    if len(values) < 2:
        return None
    half = (
        stats.t.ppf(1 - aggregate.LEVEL / 2, len(values) - 1) * statistics.stdev(values) / len(values) ** 0.5
    )
    mean = statistics.mean(values)
    return mean - half, mean + half


def mean_sd(values: list[float]) -> str:
    """`12.30 +- 1.20% (n=3; 95% interval 9.32 to 15.28%)`: a statistic over seeds, as figures are given."""
    if not values:
        return "-"
    mean = 100 * statistics.mean(values)
    if len(values) < 2:
        return f"{mean:.2f}% (n=1)"
    low, high = mean_interval(values)
    spread = f"{mean:.2f} +- {100 * statistics.stdev(values):.2f}%"
    return f"{spread} (n={len(values)}; 95% interval {100 * low:.2f} to {100 * high:.2f}%)"


def seeds_section(groups: list[aggregate.Group]) -> str:
    """Each config's errors over its seeds, beside the paper's test error and the difference."""
    lines = [
        "| config | seeds | train error | test error | paper's test error | difference |",
        "|---|---|---|---|---|---|",
    ]
    for group in groups:
        test, paper = group.values("test_error"), group.paper
        difference = f"{100 * (sum(test) / len(test) - paper):+.2f} points" if test and paper else "-"
        seeds = ", ".join(map(str, group.seeds)) + (
            f" ({group.repeats} repeats not counted)" if group.repeats else ""
        )
        cells = [group.name, seeds, mean_sd(group.values("train_error")), mean_sd(test)]
        lines.append(
            "| " + " | ".join([*cells, "-" if paper is None else _percent(paper), difference]) + " |"
        )
    return "\n".join(lines)


def comparisons_section(comparisons: list[aggregate.Comparison]) -> str:
    """One row per verdict: the two configs, the metric, the difference of the means and its interval."""
    lines = [
        "| a | b | metric | a - b | 95% interval | verdict |",
        "|---|---|---|---|---|---|",
    ]
    for c in comparisons:
        interval = "-" if c.low is None else f"{100 * c.low:+.2f} to {100 * c.high:+.2f} points"
        mixed = " (runs of different environments)" if c.mixed_environments else ""
        pair = f"| {c.a.name} (n={len(c.a.runs)}) | {c.b.name} (n={len(c.b.runs)}) "
        metric = aggregate.METRICS[c.metric]
        lines.append(
            f"{pair}| {metric} | {100 * c.difference:+.2f} points | {interval} | {c.verdict}{mixed} |"
        )
    return "\n".join(lines)


def environments_section(runs: list[Run]) -> str:
    """The distinct environments the runs were computed in (E1, E2, ... as the groups name them), what sets
    each apart, how many runs each; and the runs resumed in another environment than they began in."""
    by_env: dict[tuple, list[Run]] = {}
    for run in runs:
        by_env.setdefault(environment.numerical(run.get("environment")), []).append(run)
    firsts = [same[0].get("environment") for same in by_env.values()]  # in aggregate.environments' order
    lines = []
    for i, (same, first) in enumerate(zip(by_env.values(), firsts, strict=True), 1):
        hosts = sorted({str((run.get("environment") or {}).get("host") or "unknown") for run in same})
        apart = environment.difference(first, firsts)
        lines.append(
            f"- E{i}: {environment.describe(first)}{f' ({apart})' if apart else ''}; {len(same)} runs "
            f"(host{'s' if len(hosts) > 1 else ''} {', '.join(hosts)})"
        )
    moved = [
        run
        for run in runs
        if len({environment.numerical(e) for e in (run.record.segments if run.record else [])}) > 1
    ]
    if moved:
        lines.append(
            f"- {len(moved)} run(s) resumed in another environment than they began in, listed under their "
            f"first (their `environments` say each segment's): {', '.join(r.path.name for r in moved[:5])}"
        )
    return "\n".join(lines)


def disagreements_section(disagreements: list[aggregate.Disagreement]) -> str:
    lines = [
        "| config | environments | seeds run in both | train error gap: median | largest |",
        "|---|---|---|---|---|",
    ]
    for d in disagreements:
        lines.append(
            f"| {d.a.first.net} on {d.a.first.dataset} | {d.a.tag}, {d.b.tag} | {len(d.seeds)} "
            f"| {100 * statistics.median(d.gaps):.2f} points | {100 * max(d.gaps):.2f} points |"
        )
    return "\n".join(lines)


def write_markdown(
    runs: list[Run], directories: list[Path], figures: dict[str, Path], missing: list[str], path: Path
) -> None:
    statuses = ", ".join(f"{n} {status}" for status, n in Counter(run.status for run in runs).most_common())
    parts = [
        "# Report",
        f"{len(runs)} runs ({statuses}) under {', '.join(f'`{d}`' for d in directories)}.",
        "Errors are those of the final epoch, as fractions of the split; the papers' figures are their "
        "test errors for the same net, dataset and augmentation (not the same recipe: compare the epochs). "
        "MACs are multiply-adds, what the papers call FLOPs. Activation memory is what one training step "
        "holds for backward at the run's batch size, in float32 and at the run's precision; peak memory is "
        "the CUDA allocator's peak on a GPU and the peak RSS growth on a CPU; step time is the median over "
        "timed steps.",
        markdown_table(runs),
    ]
    parts += verdict_parts(runs) + mechanism_parts(runs)
    not_completed = [run for run in runs if run.status != "completed"]
    if not_completed:
        parts.append("## Runs that did not complete")
        parts.append(
            "\n".join(
                f"- `{run.path}`: {run.status}" + (f" ({run.error})" if run.error else "")
                for run in not_completed
            )
        )
    parts.append("## Figures")
    parts += [f"### {title}\n\n![{title}]({figure.name})" for title, figure in figures.items()]
    if missing:
        parts.append("Not drawn, for lack of runs: " + "; ".join(missing) + ".")
    path.write_text("\n\n".join(parts) + "\n")


def verdict_parts(runs: list[Run]) -> list[str]:
    """The report's sections over seeds: each config's statistics, the verdicts, the environments."""
    groups = aggregate.groups(runs)
    parts = []
    if groups:
        parts += [
            "## Over seeds",
            "Mean +- standard deviation over the seeds of each config (n seeds), and the 95% interval of the "
            "mean (aggregate.csv). Runs of one config, seed and environment count once.",
            seeds_section(groups),
        ]
    comparisons = aggregate.verdicts(groups)
    if comparisons:
        parts += [
            "## Verdicts",
            "Each pair of configs that the degradation problem compares, plain against residual at each "
            "depth and each net against the shallowest of its family, on the metric named: the difference of "
            "the means over seeds, its 95% interval (Welch's t-test) and the verdict. Where the interval "
            "holds 0, or a side has one seed, the verdict is unresolved: run more seeds.",
            comparisons_section(comparisons),
        ]
    parts += ["## Environments", environments_section(runs)]
    if any(c.mixed_environments for c in comparisons):
        parts.append(
            "Warning: some verdicts above compare runs of different environments: another CPU, thread "
            "count or library rounds differently, and a deep net at a high learning rate can turn that "
            "into a different run."
        )
    if disagreements := aggregate.across_environments(groups):
        parts += [
            "## The same seeds in other environments",
            "Configs run in several environments, compared seed for seed: how far apart the same seed's "
            "final training errors ended.",
            disagreements_section(disagreements),
        ]
    return parts


def _log_spread(values: list[float]) -> str:
    """`2.8e+03 x/÷ 1.4 (n=3)`: a geometric mean and geometric s.d. over seeds."""
    mean, low, _ = over_seeds.log_band(values)
    return f"{mean:.3g} x/÷ {mean / low:.2g} (n={len(values)})" if len(values) > 1 else f"{mean:.3g} (n=1)"


def backward_ratio_section(runs: list[Run]) -> str | None:
    """Per net, at initialisation: the per-image gradient norm at the stem's output over that at the last
    block's, over seeds (geometric): > 1 grows on its way back to the input, < 1 vanishes."""
    lines = ["| net | stem / last block, gradient norm at initialisation |", "|---|---|"]
    for _, _, shown in over_seeds.moments(over_seeds.by_config([r for r in runs if r.signals]))[:1]:
        for config in shown:
            ratios = []
            for run in config.runs:
                series = over_seeds.signal_over_seeds([run], "grad_norm", 0.0)
                if len(series) > 1:
                    ratios.append(series[min(series)][0] / series[max(series)][0])
            if ratios:
                lines.append(f"| {config.name.rsplit(' (n=', 1)[0]} | {_log_spread(ratios)} |")
    return "\n".join(lines) if len(lines) > 2 else None


def lesion_section(runs: list[Run]) -> str | None:
    lines = [
        "| net | intact test error | one block deleted: mean rise | largest rise | seeds not trained |",
        "|---|---|---|---|---|",
    ]
    for summary in over_seeds.lesion_summaries(runs):
        untrained = ", ".join(
            f"{r.get('seed')} ({_percent(over_seeds.intact_error(r))})" for r in summary.untrained
        )
        cells = [
            summary.config.runs[0].net,
            mean_sd(summary.intact),
            _points(summary.mean_rise),
            _points(summary.largest_rise),
            untrained or "none",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) if len(lines) > 2 else None


def _points(values: list[float]) -> str:
    if not values:
        return "-"
    mean = f"{100 * statistics.mean(values):+.1f}"
    spread = f" +- {100 * statistics.stdev(values):.1f}" if len(values) > 1 else ""
    return f"{mean}{spread} points (n={len(values)})"


def mechanism_parts(runs: list[Run]) -> list[str]:
    parts = []
    if ratios := backward_ratio_section(runs):
        parts += ["## The backward signal at initialisation", ratios]
    if curvature := landscape.curvature_table(runs):
        parts += ["## Curvature", curvature]
    if lesions := lesion_section(runs):
        parts += [
            "## Lesions over seeds",
            f"Test error with one block deleted, less the intact net's; seeds whose net ended above "
            f"{over_seeds.UNTRAINED_ERROR:.0%} test error did not train and are left out.",
            lesions,
        ]
    return parts
