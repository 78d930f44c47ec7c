"""The report's table: runs.csv (raw numbers) and report.md (formatted, with the figures)."""

from __future__ import annotations

import csv
import statistics
from collections import Counter
from pathlib import Path
from typing import Any

from experiments.report import aggregate
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


def _mean_sd(values: list[float]) -> str:
    if not values:
        return "-"
    mean = 100 * sum(values) / len(values)
    return f"{mean:.2f}%" if len(values) < 2 else f"{mean:.2f} +- {100 * statistics.stdev(values):.2f}%"


def seeds_section(groups: list[aggregate.Group]) -> str:
    """Each config's errors over its seeds, beside the paper's test error and the difference."""
    lines = [
        "| config | n | train error | test error | paper's test error | difference |",
        "|---|---|---|---|---|---|",
    ]
    for group in groups:
        test, paper = group.values("test_error"), group.paper
        difference = f"{100 * (sum(test) / len(test) - paper):+.2f} points" if test and paper else "-"
        cells = [group.label, str(len(group.runs)), _mean_sd(group.values("train_error")), _mean_sd(test)]
        lines.append(
            "| " + " | ".join([*cells, "-" if paper is None else _percent(paper), difference]) + " |"
        )
    return "\n".join(lines)


def comparisons_section(comparisons: list[aggregate.Comparison]) -> str:
    lines = [
        "| plain | residual | difference in test error (plain - residual) | 95% interval | verdict |",
        "|---|---|---|---|---|",
    ]
    for c in comparisons:
        interval = "-" if c.low is None else f"{100 * c.low:+.2f} to {100 * c.high:+.2f} points"
        pair = f"| {c.a.label} (n={len(c.a.runs)}) | {c.b.label} (n={len(c.b.runs)}) "
        lines.append(f"{pair}| {100 * c.difference:+.2f} points | {interval} | {c.verdict} |")
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
    groups = aggregate.groups(runs)
    if groups:
        parts += [
            "## Over seeds",
            "Mean +- standard deviation over the runs of each config that differ only in their seed "
            "(aggregate.csv).",
            seeds_section(groups),
        ]
    if comparisons := aggregate.plain_vs_residual(groups):
        parts += [
            "## Plain against residual: is the difference real?",
            "Welch's t-test on the per-seed test errors of each pair of configs the error-against-depth "
            "figure compares.",
            comparisons_section(comparisons),
        ]
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
