"""What the report's figures share: matplotlib for files, the papers' line styles, colours, error bars."""

from __future__ import annotations

import statistics
import warnings
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.lines import Line2D

from experiments.report.collect import Run

plt.rcParams.update({"font.size": 11, "axes.titlesize": 12, "legend.fontsize": 9, "figure.dpi": 100})
LINESTYLES = {"plain": "--", "resnet": "-"}  # He et al. Fig. 1 and 6: plain dashed, residual solid
Figure = tuple[str, Path] | None  # (title, PNG written), or None when the runs hold nothing to draw


MAX_LEGEND = 24  # entries a legend shows; past them it names how many more (runs.csv lists every run)


def save(fig: plt.Figure, path: Path) -> Path:
    with warnings.catch_warnings():  # a figure too crowded to lay out is saved as it is, without a word
        warnings.filterwarnings("ignore", message="Tight layout not applied")
        fig.tight_layout()
    fig.savefig(path, bbox_inches="tight")  # legends outside the axes stay in the picture
    plt.close(fig)
    return path


def legend_outside(ax: plt.Axes) -> None:
    ax.legend(*collapsed(*ax.get_legend_handles_labels()), loc="upper left", bbox_to_anchor=(1.02, 1))


def collapsed(handles: list[Any], labels: list[str]) -> tuple[list[Any], list[str]]:
    """One legend entry per label, at most MAX_LEGEND of them, then one saying how many more there are."""
    unique = dict(zip(labels, handles, strict=True))
    if len(unique) <= MAX_LEGEND:
        return list(unique.values()), list(unique)
    shown = list(unique)[: MAX_LEGEND - 1]
    more = f"... {len(unique) - len(shown)} more (runs.csv)"
    return [unique[label] for label in shown] + [Line2D([], [], linestyle="")], [*shown, more]


def depth_colors(runs: list[Run]) -> dict[int, str]:
    depths = sorted({run.depth for run in runs})
    cmap = plt.get_cmap("viridis")
    return {d: cmap(i / max(len(depths) - 1, 1) * 0.9) for i, d in enumerate(depths)}


def error_bar(values: list[float]) -> float:
    """The sample standard deviation the tables give (0 for a single value), as an error bar."""
    return statistics.stdev(values) if len(values) > 1 else 0.0
