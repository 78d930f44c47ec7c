"""The report's figures of why nets behave as they do: the signal through the blocks (signals.csv), how fast
each block learns, what deleting blocks does (lesion.csv), what DenseNet layers read (feature_reuse.csv)."""

from __future__ import annotations

import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.ticker import MaxNLocator

from experiments.report.collect import Run
from experiments.report.over_seeds import (
    by_config,
    intact_error,
    lesion_summaries,
    moments,
    signal_over_seeds,
)
from experiments.report.style import (
    LINESTYLES,
    Figure,
    collapsed,
    depth_colors,
    error_bar,
    plt,
    save,
)


def _by_block_figure(
    runs: list[Run], quantities: list[tuple[str, str]], out: Path, name: str, title: str
) -> Figure:
    """One panel per quantity and moment (initialisation, the last signal step): each config a line of the
    quantity against block index, its geometric mean over seeds with a band of one geometric s.d., plain
    nets dashed, residual nets solid, a colour per depth."""
    configs = by_config([r for r in runs if r.signals])
    if not configs:
        return None
    colors = depth_colors(runs)
    panels = moments(configs)
    fig, axes = plt.subplots(
        len(quantities),
        len(panels),
        figsize=(6.2 * len(panels), max(4.4, 3.6 * len(quantities))),
        squeeze=False,
    )
    for row, (quantity, ylabel) in enumerate(quantities):
        for col, (moment, step, shown) in enumerate(panels):
            ax = axes[row][col]
            for config in shown:
                series = signal_over_seeds(config.runs, quantity, step)
                if not series:
                    continue
                xs = list(series)
                mean, low, high, _ = zip(*series.values(), strict=True)
                style = {"color": colors[config.runs[0].depth]}
                ax.plot(xs, mean, LINESTYLES.get(config.runs[0].arch, ":"), label=config.name, **style)
                if len(config.runs) > 1:
                    ax.fill_between(xs, low, high, alpha=0.15, linewidth=0, **style)
            ax.set(yscale="log", xlabel="block index (0: the stem's output)", ylabel=ylabel, title=moment)
            ax.grid(alpha=0.3, which="both")
    handles, labels = axes[0][0].get_legend_handles_labels()  # every net is in the first panel
    fig.legend(*collapsed(handles, labels), loc="upper left", bbox_to_anchor=(1.0, 0.93), fontsize=8)
    fig.suptitle(f"{title}\ngeometric mean over seeds, band: one geometric s.d.; n: seeds")
    family = "DenseNets" if name.endswith("_densenet") else "ResNets and plain nets"
    return (f"{title.split(':')[0]}, {family}", save(fig, out / f"{name}.png"))


def _by_family(runs: list[Run]) -> list[tuple[str, list[Run]]]:
    """ResNets and plain nets in one figure, DenseNets (whose blocks are dense layers) in another."""
    residual = [r for r in runs if r.signals and r.arch in ("plain", "resnet")]
    dense = [r for r in runs if r.signals and r.arch.startswith("densenet")]
    return [(suffix, group) for suffix, group in (("", residual), ("_densenet", dense)) if group]


def signal_propagation(runs: list[Run], out: Path) -> list[Figure]:
    """The forward signal (each block's output std) and the backward signal (the per-image gradient norm at
    each block's output) against depth in the net."""
    quantities = [("response_std", "output std"), ("grad_norm", "gradient norm at the output")]
    title = "Signal propagation: forward (output std) and backward (per-image gradient norm) by block"
    groups = _by_family(runs)
    return [
        _by_block_figure(group, quantities, out, f"signal_propagation{suffix}", title)
        for suffix, group in groups
    ] or [None]


def update_ratio(runs: list[Run], out: Path) -> list[Figure]:
    """||dW|| / ||W|| of each block's weights over one optimiser step: how fast each block learns."""
    title = "Update ratio ||dW|| / ||W|| by block: how fast each block learns"
    quantities = [("update_ratio", "update ratio")]
    groups = _by_family(runs)
    return [
        _by_block_figure(group, quantities, out, f"update_ratio{suffix}", title) for suffix, group in groups
    ] or [None]


def _mean_by(runs: list[Run], kind: str, x: str) -> dict[float, list[float]]:
    """`x` (a deleted block's index, or k) -> each run's mean test error there (over its draws)."""
    found: dict[float, list[float]] = defaultdict(list)
    for run in runs:
        per_run: dict[float, list[float]] = defaultdict(list)
        for r in run.lesion:
            if r["kind"] == kind and "test_error" in r:
                per_run[float(r["blocks"]) if x == "blocks" else r["k"]].append(r["test_error"])
        for key, errors in per_run.items():
            found[key].append(statistics.mean(errors))
    return dict(sorted(found.items()))


def _lesion_line(ax: plt.Axes, by_x: dict[float, list[float]], label: str, style: dict) -> None:
    xs = list(by_x)
    means = [statistics.mean(v) for v in by_x.values()]
    ax.errorbar(
        xs,
        means,
        yerr=[error_bar(v) for v in by_x.values()],
        capsize=2,
        marker="o",
        markersize=3,
        label=label,
        **style,
    )


def lesion(runs: list[Run], out: Path) -> list[Figure]:
    """Test error with one block deleted, against the block; and with k random blocks deleted, against k:
    for each config the mean over its trained seeds (error bars: their s.d.), each seed's intact error a
    thin line; seeds that did not train are named and left out. Residual nets degrade gently, plain nets
    fall to chance."""
    summaries = lesion_summaries(runs)
    if not summaries:
        return [None]
    colors = depth_colors([run for s in summaries for run in s.config.runs])
    fig, (single, several) = plt.subplots(1, 2, figsize=(12.5, 4.3))
    for summary in summaries:
        first = summary.config.runs[0]
        style = {"color": colors[first.depth], "linestyle": LINESTYLES.get(first.arch, ":")}
        trained = [run for run in summary.config.runs if run not in summary.untrained]
        label = f"{first.net} (n={len(trained)})"
        if summary.untrained:
            shown = ", ".join(f"{100 * intact_error(r):.0f}%" for r in summary.untrained)
            label += f"; {len(summary.untrained)} did not train (intact {shown}): left out"
        for run in summary.config.runs:
            single.axhline(intact_error(run), alpha=0.35, linewidth=0.7, **style)
        if trained:
            _lesion_line(single, _mean_by(trained, "single", "blocks"), label, style)
            _lesion_line(several, _mean_by(trained, "random", "k"), label, style)
        else:
            single.plot([], [], label=label, **style)
    single.set(
        xlabel="deleted block (index as in signals.csv)",
        ylabel="test error",
        title="One block deleted (thin lines: each seed intact)",
    )
    several.set(xlabel="blocks deleted at random (k)", ylabel="test error", title="k random blocks deleted")
    for ax in (single, several):
        ax.set_ylim(0, 1)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    fig.legend(
        *collapsed(*single.get_legend_handles_labels()),
        loc="upper center",
        bbox_to_anchor=(0.5, 0.0),
        ncol=2,
        fontsize=8,
    )
    fig.suptitle(
        "Lesion study (Veit et al. 2016): test error with blocks deleted at test time, mean over seeds"
    )
    return [("Lesion study", save(fig, out / "lesion.png"))]


def _reuse_matrix(rows: list[dict[str, Any]]) -> tuple[np.ndarray, list[str]]:
    """A dense block's map: rows the targets (layers 1..L, then transition or classifier), columns the
    sources (0: the block's input, then each layer); empty cells NaN."""
    targets = sorted({r["target"] for r in rows}, key=lambda t: (isinstance(t, str), t))
    sources = int(max(r["source"] for r in rows)) + 1
    matrix = np.full((len(targets), sources), np.nan)
    for r in rows:
        matrix[targets.index(r["target"]), int(r["source"])] = r["value"]
    return matrix, [t if isinstance(t, str) else str(int(t)) for t in targets]


REUSE_RUNS = 4  # rows of maps in one figure; more would be unreadable (each run's feature_reuse.csv has all)


def feature_reuse(runs: list[Run], out: Path) -> list[Figure]:
    """Each dense block's feature-reuse map (Huang et al. 2017, Fig. 5), for the first REUSE_RUNS DenseNet
    runs with maps: how much each layer's weights read each earlier layer's maps."""
    measured = [r for r in runs if r.reuse]
    runs = measured[:REUSE_RUNS]
    if not runs:
        return [None]
    blocks = sorted({int(r["block"]) for run in runs for r in run.reuse})
    fig, axes = plt.subplots(
        len(runs), len(blocks), figsize=(4.2 * len(blocks), 3.8 * len(runs)), squeeze=False
    )
    for row, run in enumerate(runs):
        for col, block in enumerate(blocks):
            matrix, targets = _reuse_matrix([r for r in run.reuse if int(r["block"]) == block])
            ax = axes[row][col]
            image = ax.imshow(matrix, cmap="viridis", aspect="auto", origin="upper")
            fig.colorbar(image, ax=ax, fraction=0.046)
            ax.set_yticks(range(len(targets)), targets, fontsize=7)
            ax.set(
                xlabel="source (0: the block's input)",
                ylabel="target layer",
                title=f"{run.net}, dense block {block}",
            )
    shown = f" (the first {len(runs)} of {len(measured)} runs)" if len(measured) > len(runs) else ""
    fig.suptitle(f"Feature reuse: mean absolute weight a layer gives each earlier layer's maps{shown}")
    return [(f"Feature reuse{shown}", save(fig, out / "feature_reuse.png"))]
