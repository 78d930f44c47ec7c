"""What the report's figures share: matplotlib for files, the papers' line styles, colours, error bars."""

from __future__ import annotations

import statistics
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from experiments.report.collect import Run

plt.rcParams.update({"font.size": 11, "axes.titlesize": 12, "legend.fontsize": 9, "figure.dpi": 100})
LINESTYLES = {"plain": "--", "resnet": "-"}  # He et al. Fig. 1 and 6: plain dashed, residual solid
Figure = tuple[str, Path] | None  # (title, PNG written), or None when the runs hold nothing to draw


def save(fig: plt.Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, bbox_inches="tight")  # legends outside the axes stay in the picture
    plt.close(fig)
    return path


def legend_outside(ax: plt.Axes) -> None:
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1), borderaxespad=0)


def depth_colors(runs: list[Run]) -> dict[int, str]:
    depths = sorted({run.depth for run in runs})
    cmap = plt.get_cmap("viridis")
    return {d: cmap(i / max(len(depths) - 1, 1) * 0.9) for i, d in enumerate(depths)}


def error_bar(values: list[float]) -> float:
    """The sample standard deviation the tables give (0 for a single value), as an error bar."""
    return statistics.stdev(values) if len(values) > 1 else 0.0
