"""The report's figures of the loss's shape around trained nets: the loss landscape (landscape.csv: Li et al.
2018; the interpolation from initial to final weights: Goodfellow et al. 2015), the gradient by path length
(paths.csv: Veit et al. 2016, Fig. 6) and the curvature table (curvature.csv).

These quantities span many decades (a slice's loss reaches 1e3..1e9 at one filter norm), so means over seeds
and directions are taken in log space (geometric means), bands are min..max, and axes are logarithmic.
Runs of one config (all but the seed: `aggregate.config_key`) make one line, its seed count shown as n.
"""

from __future__ import annotations

import logging
import math
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.colors import LogNorm
from matplotlib.ticker import MaxNLocator

from experiments.report import over_seeds
from experiments.report.collect import Run
from experiments.report.style import LINESTYLES, Figure, depth_colors, legend_outside, plt, save

log = logging.getLogger(__name__)
PANELS_2D = 12  # surfaces in one figure; more would be unreadable (each run's landscape.csv has its own)
SIMILAR_LOSS = 2.0  # train losses within this factor count as similar when comparing curvatures


def table(run: Run, name: str) -> list[dict[str, Any]]:
    """The rows of one of a run's measurement files; none where it is missing or damaged (a damaged file
    costs the run that figure, with a line naming it, not the report)."""
    return run.measured(name)


def _by_config(runs: list[Run], name: str) -> list[tuple[over_seeds.Config, list[list[dict[str, Any]]]]]:
    """The runs holding `name`, grouped by config (all but the seed; each seed once), with their rows."""
    measured = {id(run): rows for run in runs if (rows := table(run, name))}
    configs = over_seeds.by_config([run for run in runs if id(run) in measured])
    return [(config, [measured[id(run)] for run in config.runs]) for config in configs]


def _log_mean_band(
    curves: list[dict[float, float]],
) -> tuple[list[float], list[float], list[float], list[float]]:
    """(x, geometric mean, min, max) over `curves` (x -> positive value) at the x all of them hold; a loss
    that overflowed (inf, nan) is left out of its point."""
    curves = [{x: v for x, v in curve.items() if math.isfinite(v)} for curve in curves]
    xs = sorted(set.intersection(*(set(curve) for curve in curves)))
    values = [[curve[x] for curve in curves] for x in xs]
    means = [over_seeds.log_band([max(v, 1e-300) for v in column])[0] for column in values]  # a 0 loss: tiny
    return xs, means, [min(column) for column in values], [max(column) for column in values]


def _name(config: over_seeds.Config) -> str:
    """A config's line in a legend and row in a table: its name with the dataset."""
    first, detail = config.runs[0], f", {config.detail}" if config.detail else ""
    return f"{first.net} on {first.dataset}{detail} (n={len(config.runs)})"


def _draw_bands(
    ax: plt.Axes, groups: list[tuple[over_seeds.Config, list[dict[float, float]]]], colors: dict
) -> None:
    for config, curves in groups:
        if not curves:
            continue
        xs, means, low, high = _log_mean_band(curves)
        first = config.runs[0]
        style = {"color": colors[first.depth], "linestyle": LINESTYLES.get(first.arch, ":")}
        ax.plot(xs, means, label=_name(config), **style)
        ax.fill_between(xs, low, high, alpha=0.2, color=style["color"])


def _curves(tables: list[list[dict[str, Any]]], kind: str) -> list[dict[float, float]]:
    """One curve (x -> loss) per run and direction of the rows of `kind`."""
    curves: dict[tuple[int, float], dict[float, float]] = defaultdict(dict)
    for index, rows in enumerate(tables):
        for row in rows:
            if row.get("kind") == kind:
                curves[(index, row["direction"])][row["x"]] = row["loss"]
    return list(curves.values())


def landscape_1d(runs: list[Run], out: Path) -> list[Figure]:
    """The loss along filter-normalised random directions (Li et al. 2018), and along the line from the
    initial weights to the final ones (Goodfellow et al. 2015) where measured: a line per net (geometric mean
    over directions and seeds), a band from the lowest to the highest."""
    groups = _by_config(runs, "landscape.csv")
    slices = [(config, _curves(tables, "slice_1d")) for config, tables in groups]
    lines = [(config, _curves(tables, "interpolation")) for config, tables in groups]
    if not any(curves for _, curves in slices):
        return [None]
    interpolated = any(curves for _, curves in lines)
    fig, axes = plt.subplots(
        1, 2 if interpolated else 1, figsize=(12.5 if interpolated else 7, 4.4), squeeze=False
    )
    colors = depth_colors([config.runs[0] for config, _ in groups])
    _draw_bands(axes[0][0], slices, colors)
    axes[0][0].set(yscale="log", xlabel="step along the direction (filter norms)", ylabel="training loss")
    axes[0][0].set_title("1-D slices (band: min..max over directions and seeds)")
    if interpolated:
        _draw_bands(axes[0][1], lines, colors)
        axes[0][1].set(yscale="log", xlabel="t (0: initial weights, 1: final)", ylabel="training loss")
        axes[0][1].set_title("From initial to final weights")
    for ax in axes[0]:
        ax.grid(alpha=0.3, which="both")
    legend_outside(axes[0][-1])
    fig.suptitle("Loss landscape (Li et al. 2018): filter-normalised random directions")
    return [("Loss landscape, 1-D", save(fig, out / "landscape_1d.png"))]


def _surface(rows: list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(x, y, loss) grids of a run's surface_2d rows; None without a full grid."""
    points = {(row["x"], row["y"]): row["loss"] for row in rows if row.get("kind") == "surface_2d"}
    xs, ys = sorted({x for x, _ in points}), sorted({y for _, y in points})
    if len(xs) < 2 or len(ys) < 2 or len(points) != len(xs) * len(ys):
        return None
    loss = np.array([[points[(x, y)] for x in xs] for y in ys])
    grid_x, grid_y = np.meshgrid(xs, ys)
    return grid_x, grid_y, loss


def landscape_2d(runs: list[Run], out: Path) -> list[Figure]:
    """Each run's 2-D loss surface as contours, every panel on the same log-spaced levels (the loss spans
    decades), for the first PANELS_2D runs holding one."""
    measured = [(run, surface) for run in runs if (surface := _surface(table(run, "landscape.csv")))]
    shown = measured[:PANELS_2D]
    if not shown:
        return [None]
    finite = [s[2][np.isfinite(s[2]) & (s[2] > 0)] for _, s in shown]  # an overflowed loss is no level
    low = min(float(np.min(f)) for f in finite if f.size)
    high = max(float(np.max(f)) for f in finite if f.size)
    levels = np.logspace(math.log10(low), math.log10(max(high, low * 1.01)), 20)
    columns = min(len(shown), 4)
    rows = -(-len(shown) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.9 * rows), squeeze=False)
    for ax, (run, (grid_x, grid_y, loss)) in zip(axes.flat, shown, strict=False):
        contours = ax.contour(
            grid_x,
            grid_y,
            np.clip(np.nan_to_num(loss, nan=high, posinf=high), low, None),
            levels=levels,
            norm=LogNorm(),
            cmap="viridis",
        )
        fig.colorbar(contours, ax=ax, fraction=0.046, label="training loss")  # the same levels in each
        ax.plot(0, 0, "k+")  # the trained weights
        title = f"{run.net} on {run.dataset}, seed {run.get('seed')}"
        ax.set(title=title, xlabel="direction 1", ylabel="direction 2", aspect="equal")
    for ax in axes.flat[len(shown) :]:
        ax.axis("off")
    extra = f" (the first {len(shown)} of {len(measured)} runs)" if len(measured) > len(shown) else ""
    fig.suptitle(f"Loss surfaces around the trained weights (Li et al. 2018), shared contour levels{extra}")
    return [(f"Loss landscape, 2-D{extra}", save(fig, out / "landscape_2d.png"))]


def _path_curves(tables: list[list[dict[str, Any]]], column: str) -> list[dict[float, float]]:
    return [{row["k"]: row[column] for row in rows if row.get(column, 0) > 0} for rows in tables]


def paths(runs: list[Run], out: Path) -> list[Figure]:
    """Veit et al. 2016, Fig. 6: how many paths each length has (C(n, k)), the gradient norm at the stem of
    one path of length k (log scale), and the total gradient from paths of length k."""
    groups = _by_config(runs, "paths.csv")
    if not groups:
        return [None]
    colors = depth_colors([config.runs[0] for config, _ in groups])
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.4))
    panels = [
        ("paths", "number of paths", "Paths of each length: C(n, k)"),
        ("grad_norm_mean", "gradient norm per image", "Gradient through one path"),
        ("contribution", "total gradient norm per image", "Total gradient from paths of length k"),
    ]
    for ax, (column, ylabel, title) in zip(axes, panels, strict=True):
        _draw_bands(ax, [(config, _path_curves(tables, column)) for config, tables in groups], colors)
        ax.set(xlabel="path length k (residual branches passed)", ylabel=ylabel, title=title)
        ax.set_yscale("log" if column == "grad_norm_mean" else "linear")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3, which="both")
    legend_outside(axes[-1])
    fig.suptitle("Gradient by path length (Veit et al. 2016): band min..max over seeds")
    return [("Gradient by path length", save(fig, out / "paths.png"))]


def _geometric_mean(values: list[float | None]) -> float | None:
    """The geometric mean over seeds; the arithmetic mean where a value is not positive (a trace or an
    eigenvalue away from a minimum can be negative), None where a seed has none."""
    if not values or any(not isinstance(v, float) or not math.isfinite(v) for v in values):
        return None
    if min(values) <= 0:
        return statistics.mean(values)
    return over_seeds.log_band(values)[0]


def _number(value: float | None) -> str:
    return "" if value is None else f"{value:.3g}"


CURVATURE_COLUMNS = [
    ("top_eigenvalue", "top eigenvalue"),
    ("top_eigenvalue_normalised", "per filter norm"),
    ("trace", "trace"),
    ("trace_normalised", "per filter norm"),
    ("weight_norm", "weight norm"),
]


def curvature_table(runs: list[Run]) -> str:
    """A markdown table of each config's curvature (geometric means over seeds: the top eigenvalue, the
    trace, each raw and per filter norm, the weight norm) beside its final training loss, with a note where
    the nets compared are not at similar training losses (a net further from a minimum sits elsewhere on
    its landscape, and its curvature says as much about that as about the net)."""
    groups = _by_config(runs, "curvature.csv")
    if not groups:
        return ""
    head = ["net", "n", *(title for _, title in CURVATURE_COLUMNS), "train loss"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    losses = []
    for config, tables in groups:
        members = config.runs
        values = [{row["quantity"]: row["value"] for row in rows} for rows in tables]
        cells = [
            _number(_geometric_mean([v.get(quantity) for v in values])) for quantity, _ in CURVATURE_COLUMNS
        ]
        loss = _geometric_mean([run.get("train_loss") for run in members])
        losses.append(loss)
        name = _name(config).rsplit(" (n=", 1)[0]
        lines.append("| " + " | ".join([name, str(len(members)), *cells, _number(loss)]) + " |")
    known = [loss for loss in losses if loss]
    text = "\n".join(lines) + "\n"
    if len(known) > 1 and max(known) > SIMILAR_LOSS * min(known):
        text += (
            f"\nThe nets are not at similar training losses ({min(known):.3g} to {max(known):.3g}): their "
            "curvatures are measured at different distances from a minimum and compare less than the nets.\n"
        )
    return text
