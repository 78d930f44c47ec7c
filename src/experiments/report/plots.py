"""The report's figures of what runs measured, in the style of the papers (mechanisms.py draws why): one
function per figure, each returning its title and the PNG it wrote, or None when the runs hold nothing to
draw; FIGURES lists them all in the report's order."""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import matplotlib.ticker

from experiments.report import landscape, mechanisms, over_seeds
from experiments.report.collect import Run
from experiments.report.style import (
    LINESTYLES,
    Figure,
    collapsed,
    depth_colors,
    error_bar,
    legend_outside,
    plt,
    save,
)


def _completed_training(runs: list[Run]) -> list[Run]:
    return [r for r in runs if r.trained and r.rows]


def exponent(depths: list[int], values: list[float]) -> float:
    """Least-squares slope of log(value) on log(depth): how memory (or time) grows with depth."""
    xs, ys = [math.log(d) for d in depths], [math.log(v) for v in values]
    mx, my = statistics.mean(xs), statistics.mean(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum((x - mx) ** 2 for x in xs)


def training_error(runs: list[Run], out: Path) -> list[Figure]:
    """Training error against epoch, a line per config (the mean over its seeds, a band of one s.d.), plain
    dashed and residual solid: one figure per dataset."""
    figures: list[Figure] = []
    by_dataset: dict[str, list[Run]] = defaultdict(list)
    for run in _completed_training(runs):  # an interrupted run would cut its config's line short
        by_dataset[run.dataset].append(run)
    for dataset, group in sorted(by_dataset.items()):
        colors = depth_colors(group)
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for config in over_seeds.by_config(group):
            epochs = min(len(run.train_errors) for run in config.runs)  # the epochs every seed reached
            per_epoch = [[100 * run.train_errors[e] for run in config.runs] for e in range(epochs)]
            means = [statistics.mean(values) for values in per_epoch]
            first = config.runs[0]
            style = {"color": colors[first.depth]}
            ax.plot(
                range(1, epochs + 1),
                means,
                LINESTYLES.get(first.arch, ":"),
                marker="o",
                markersize=3,
                label=config.name,
                **style,
            )
            if len(config.runs) > 1:
                spread = [error_bar(values) for values in per_epoch]
                low = [m - s for m, s in zip(means, spread, strict=True)]
                high = [m + s for m, s in zip(means, spread, strict=True)]
                ax.fill_between(range(1, epochs + 1), low, high, alpha=0.15, linewidth=0, **style)
        ax.set(xlabel="epoch", ylabel="training error (%)", ylim=(0, None))
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.set_title(
            f"Training error on {dataset}: plain (dashed) vs residual (solid); mean and s.d. over seeds"
        )
        ax.legend(*collapsed(*ax.get_legend_handles_labels()), ncol=2)
        ax.grid(alpha=0.3)
        figures.append((f"Training error on {dataset}", save(fig, out / f"training_error_{dataset}.png")))
    return figures


def error_vs_depth(runs: list[Run], out: Path) -> list[Figure]:
    """Final training and test error against depth, a line per net (He et al. Table 6 as a plot); the
    mean over seeds, with their standard deviation as error bars."""
    done = [r for r in _completed_training(runs) if r.get("train_error") is not None]
    if not done:
        return [None]
    epochs = sorted({r.get("epochs") for r in done})
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2), sharey=True)
    for ax, key, name in zip(axes, ("train_error", "test_error"), ("training", "test"), strict=True):
        lines: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
        for run in done:
            if run.get(key) is not None:
                lines[_depth_line(run, epochs)][run.depth].append(100 * run.get(key))
        for line, by_depth in sorted(lines.items()):
            depths = sorted(by_depth)
            ax.errorbar(
                depths,
                [statistics.mean(by_depth[d]) for d in depths],
                yerr=[error_bar(by_depth[d]) for d in depths],
                linestyle=LINESTYLES.get(line.split()[0], ":"),
                marker="o",
                capsize=3,
                label=line,
            )
        ax.set(
            xlabel="depth (weighted layers)", ylabel=f"final {name} error (%)", title=f"Final {name} error"
        )
        _depth_axis(ax, done)
        ax.grid(alpha=0.3)
    axes[0].legend()
    seeds = sorted({r.get("seed") for r in done})
    over = f"seed {seeds[0]}" if len(seeds) == 1 else f"mean and s.d. over {len(seeds)} seeds"
    fig.suptitle(f"Error vs depth after {', '.join(map(str, epochs))} epochs ({over})")
    return [("Error vs depth", save(fig, out / "error_vs_depth.png"))]


def _depth_line(run: Run, epochs: list[int]) -> str:
    """A line of the error-vs-depth figure: runs differing only in seed (and depth, along the line)."""
    line = f"{run.arch} ({run.dataset}"
    return f"{line}, {run.get('epochs')} epochs)" if len(epochs) > 1 else f"{line})"


def _by_depth_series(runs: list[Run], key: str) -> dict[str, list[Run]]:
    """Runs with `key`, grouped into series of one net, naive or memory-efficient (and dataset, batch
    size and device, where those differ between runs), named by what sets them apart."""
    runs = [run for run in runs if run.get(key) and run.depth]
    facets: list[Callable[[Run], str]] = [lambda r: r.series]
    for facet in (
        lambda r: r.dataset,
        lambda r: f"batch {r.get('batch_size')}",
        lambda r: str(r.get("device")),
    ):
        if len({facet(run) for run in runs}) > 1:
            facets.append(facet)
    series: dict[str, list[Run]] = defaultdict(list)
    for run in runs:
        series[", ".join(facet(run) for facet in facets)].append(run)
    return {name: sorted(group, key=lambda r: r.depth) for name, group in sorted(series.items())}


def _depth_axis(ax: plt.Axes, runs: list[Run]) -> None:
    """Ticks at the depths that ran (but for ones too close to the last to read), as plain numbers."""
    closest = 1.2 if ax.get_xscale() == "log" else 1.08  # 100 and 110: both on a linear axis, one on a log
    ticks: list[int] = []
    for depth in sorted({run.depth for run in runs}):
        if not ticks or depth >= closest * ticks[-1]:
            ticks.append(depth)
    ax.set_xticks(ticks)
    ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())


def activation_memory(runs: list[Run], out: Path) -> list[Figure]:
    """Activation memory against depth on log-log axes, with each series' fitted exponent."""
    series = _by_depth_series(runs, "activation_bytes")
    if not series:
        return [None]
    # series with the same bytes at the same depths (plain and resnet hold the same) share one line
    lines: dict[tuple, list[str]] = defaultdict(list)
    for name, group in series.items():
        lines[tuple((r.depth, r.get("activation_bytes")) for r in group)].append(name)
    fig, ax = plt.subplots(figsize=(10, 4.5))
    for points, names in lines.items():
        depths, values = [depth for depth, _ in points], [size / 1e6 for _, size in points]
        fitted = f" (exponent {exponent(depths, values):.2f})" if len(set(depths)) > 1 else ""
        name = " = ".join(names)
        ax.plot(depths, values, "--" if "memory-efficient" in name else "-", marker="o", label=name + fitted)
    ax.set(xscale="log", yscale="log", xlabel="depth (weighted layers)", ylabel="activation memory (MB)")
    _depth_axis(ax, [r for group in series.values() for r in group])
    batches = sorted({r.get("batch_size") for group in series.values() for r in group})
    ax.set_title(f"Memory held for backward vs depth (batch {', '.join(map(str, batches))}, float32)")
    legend_outside(ax)
    ax.grid(alpha=0.3, which="both")
    return [("Activation memory vs depth", save(fig, out / "activation_memory.png"))]


def step_time(runs: list[Run], out: Path) -> list[Figure]:
    """Median training step time against depth, one series per net, naive or memory-efficient."""
    series = _by_depth_series(runs, "step_time_ms")
    if not series:
        return [None]
    fig, ax = plt.subplots(figsize=(10, 4.5))
    for name, group in series.items():
        ax.plot(
            [r.depth for r in group],
            [r.get("step_time_ms") for r in group],
            "--" if "memory-efficient" in name else "-",
            marker="o",
            label=name,
        )
    devices = ", ".join(sorted({str(r.get("device")) for g in series.values() for r in g}))
    ax.set(xlabel="depth (weighted layers)", ylabel="median step time (ms)", ylim=(0, None))
    _depth_axis(ax, [r for group in series.values() for r in group])
    ax.set_title(f"Training step time vs depth on {devices}")
    legend_outside(ax)
    ax.grid(alpha=0.3)
    return [("Step time vs depth", save(fig, out / "step_time.png"))]


def accuracy_vs_params(runs: list[Run], out: Path) -> list[Figure]:
    """Test accuracy against parameter count: what each net buys per parameter."""
    done = [r for r in _completed_training(runs) if r.get("test_error") is not None]
    if not done:
        return [None]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    nets: dict[str, list[Run]] = defaultdict(list)
    for run in done:
        nets[f"{run.arch} ({run.dataset})"].append(run)
    for net, group in sorted(nets.items()):
        ax.scatter(
            [r.get("params") / 1e6 for r in group],
            [100 * (1 - r.get("test_error")) for r in group],
            label=net,
        )
        for r in group:
            ax.annotate(
                r.net,
                (r.get("params") / 1e6, 100 * (1 - r.get("test_error"))),
                fontsize=8,
                xytext=(4, 4),
                textcoords="offset points",
            )
    ax.set(xscale="log", xlabel="parameters (millions)", ylabel="test accuracy (%)")
    plain_numbers = matplotlib.ticker.FuncFormatter(lambda value, _: f"{value:g}")
    ax.xaxis.set_major_formatter(plain_numbers)
    ax.xaxis.set_minor_formatter(plain_numbers)
    ax.set_title("Test accuracy vs parameters")
    ax.legend()
    ax.grid(alpha=0.3, which="both")
    return [("Accuracy vs parameters", save(fig, out / "accuracy_vs_params.png"))]


def param_grad_norms(runs: list[Run], out: Path) -> list[Figure]:
    """Each part's parameter-gradient norm over training, for the deepest plain and the deepest residual net
    (a health check: the per-block signals say whether the signal vanishes or explodes)."""
    with_norms = [r for r in runs if r.command == "train" and r.get("param_grad_norms")]
    deepest = [
        max(group, key=lambda r: r.depth)
        for arch in ("plain", "resnet")
        if (group := [r for r in with_norms if r.arch == arch])
    ]
    if not deepest:
        return [None]
    fig, axes = plt.subplots(1, len(deepest), figsize=(5.2 * len(deepest), 4.2), sharey=True, squeeze=False)
    for ax, run in zip(axes[0], deepest, strict=True):
        for part, norms in run.get("param_grad_norms").items():
            points = [(epoch, n) for epoch, n in enumerate(norms, 1) if n]
            ax.plot(*zip(*points, strict=True), marker="o", markersize=3, label=part)
        ax.set(yscale="log", xlabel="epoch", title=f"{run.net} on {run.dataset}")
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.grid(alpha=0.3, which="both")
    axes[0][0].set_ylabel("parameter-gradient norm (epoch mean)")
    axes[0][-1].legend(title="part of the net")
    fig.suptitle("Parameter-gradient norm by part of the net (scales as 1/||W|| under batch norm)")
    return [("Parameter-gradient norm by part", save(fig, out / "param_grad_norms.png"))]


FIGURES: dict[str, Callable[[list[Run], Path], list[Figure]]] = {
    "training error vs epoch": training_error,
    "error vs depth": error_vs_depth,
    "activation memory vs depth": activation_memory,
    "accuracy vs parameters": accuracy_vs_params,
    "step time vs depth": step_time,
    "parameter-gradient norm by part": param_grad_norms,
    "signal propagation": mechanisms.signal_propagation,
    "update ratio": mechanisms.update_ratio,
    "lesion": mechanisms.lesion,
    "feature reuse": mechanisms.feature_reuse,
    "loss landscape, 1-D": landscape.landscape_1d,
    "loss landscape, 2-D": landscape.landscape_2d,
    "gradient by path length": landscape.paths,
}
