"""The report's table: runs.csv (raw numbers) and report.md (formatted, with the figures)."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path
from typing import Any

from experiments.report.collect import Run

# (column, summary key or None when computed, how report.md shows it)
COLUMNS = [
    ("arch", None, str),
    ("depth", None, str),
    ("memory_efficient", None, lambda flag: "yes" if flag else ""),
    ("command", None, str),
    ("dataset", None, str),
    ("batch", "batch_size", str),
    ("params", "params", lambda n: f"{n / 1e6:.2f}M"),
    ("flops", "flops_per_image", lambda n: f"{n / 1e9:.2f}G"),
    ("activation_memory", "activation_bytes", lambda n: f"{n / 1e6:,.0f} MB"),
    ("peak_memory", "peak_memory_bytes", lambda n: f"{n / 1e6:,.0f} MB"),
    ("step_time_ms", "step_time_ms", lambda n: f"{n:,.0f} ms"),
    ("epochs", "epochs", str),
    ("train_error", "train_error", lambda n: f"{100 * n:.2f}%"),
    ("val_error", "val_error", lambda n: f"{100 * n:.2f}%"),
    ("test_error", "test_error", lambda n: f"{100 * n:.2f}%"),
    ("status", None, str),
    ("run_dir", None, str),
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
    }
    values.update({column: run.get(key) for column, key, _ in COLUMNS if key})
    if run.status == "unfinished" and run.rows:  # a killed run: what its record got to
        values["epochs"] = len(run.rows)
    return values


def write_csv(runs: list[Run], path: Path) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[column for column, _, _ in COLUMNS])
        writer.writeheader()
        writer.writerows(row(run) for run in runs)


def markdown_table(runs: list[Run]) -> str:
    shown = [(column, show) for column, _, show in COLUMNS if column != "run_dir"]
    lines = ["| " + " | ".join(column.replace("_", " ") for column, _ in shown) + " |"]
    lines.append("|" + "---|" * len(shown))
    for run in runs:
        values = row(run)
        cells = ["-" if values[column] is None else show(values[column]) for column, show in shown]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_markdown(
    runs: list[Run], directories: list[Path], figures: dict[str, Path], missing: list[str], path: Path
) -> None:
    statuses = ", ".join(f"{n} {status}" for status, n in Counter(run.status for run in runs).most_common())
    parts = [
        "# Report",
        f"{len(runs)} runs ({statuses}) under {', '.join(f'`{d}`' for d in directories)}.",
        "Errors are those of the final epoch; activation memory is what one training step holds for "
        "backward (float32, at the run's batch size); peak memory is the CUDA allocator's peak on a GPU and "
        "the peak RSS growth on a CPU; step time is the median over timed steps.",
        markdown_table(runs),
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
