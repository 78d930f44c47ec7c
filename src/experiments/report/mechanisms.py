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
from experiments.report.style import LINESTYLES, Figure, depth_colors, error_bar, legend_outside, plt, save


def _series(run: Run, quantity: str, step: float) -> tuple[list[float], list[float]]:
    """(block index, value) of `quantity` at `step` of a run's signals.csv."""
    points = sorted(
        (r["index"], r["value"]) for r in run.signals if r["quantity"] == quantity and r["step"] == step
    )
    return [i for i, _ in points], [v for _, v in points]


def _label(run: Run) -> str:
    return run.label + (" (probe)" if run.command == "probe" else "")


def _by_block_figure(
    runs: list[Run], quantities: list[tuple[str, str]], out: Path, name: str, title: str
) -> Figure:
    """One panel per quantity and moment (initialisation, the last signal step): each run a line of the
    quantity against block index, plain nets dashed, residual nets solid, a colour per depth."""
    runs = [r for r in runs if r.signals]
    if not runs:
        return None
    colors = depth_colors(runs)
    last = {id(r): max(row["step"] for row in r.signals) for r in runs}
    moments = [("at initialisation (step 0)", lambda r: 0.0)]
    if any(step > 0 for step in last.values()):
        moments.append(("at the last measured step", lambda r: last[id(r)]))
    fig, axes = plt.subplots(
        len(quantities),
        len(moments),
        figsize=(6.2 * len(moments), max(4.4, 3.6 * len(quantities))),
        squeeze=False,
    )
    for row, (quantity, ylabel) in enumerate(quantities):
        for col, (moment, step_of) in enumerate(moments):
            ax = axes[row][col]
            for run in runs:
                if col and last[id(run)] == 0:
                    continue  # a probe has the initialisation only
                xs, ys = _series(run, quantity, step_of(run))
                ax.plot(xs, ys, LINESTYLES.get(run.arch, ":"), color=colors[run.depth], label=_label(run))
            ax.set(yscale="log", xlabel="block index (0: the stem's output)", ylabel=ylabel, title=moment)
            ax.grid(alpha=0.3, which="both")
    handles, labels = axes[0][0].get_legend_handles_labels()  # every run is in the first panel
    fig.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.0, 0.93), fontsize=8)
    fig.suptitle(title)
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


def _intact(run: Run) -> float:
    return next(r["test_error"] for r in run.lesion if r["kind"] == "intact")


def lesion(runs: list[Run], out: Path) -> list[Figure]:
    """Test error with one block deleted, against the block; and with k random blocks deleted, against k
    (mean and s.d. over the draws): residual nets degrade gently, plain nets fall to chance."""
    runs = [r for r in runs if r.lesion]
    if not runs:
        return [None]
    colors = depth_colors(runs)
    fig, (single, several) = plt.subplots(1, 2, figsize=(12.5, 4.3))
    for run in runs:
        style = {"color": colors[run.depth], "linestyle": LINESTYLES.get(run.arch, ":")}
        points = [
            (int(r["blocks"]), r["test_error"])
            for r in run.lesion
            if r["kind"] == "single" and "test_error" in r
        ]
        if points:
            single.plot(*zip(*points, strict=True), marker="o", markersize=3, label=run.label, **style)
        single.axhline(_intact(run), alpha=0.4, linewidth=0.8, **style)
        by_k: dict[float, list[float]] = defaultdict(list)
        for r in run.lesion:
            if r["kind"] == "random" and "test_error" in r:
                by_k[r["k"]].append(r["test_error"])
        if by_k:
            ks = sorted(by_k)
            several.errorbar(
                ks,
                [statistics.mean(by_k[k]) for k in ks],
                yerr=[error_bar(by_k[k]) for k in ks],
                capsize=2,
                marker="o",
                markersize=3,
                label=run.label,
                **style,
            )
    single.set(
        xlabel="deleted block (index as in signals.csv)",
        ylabel="test error",
        title="One block deleted (thin line: intact)",
    )
    several.set(xlabel="blocks deleted at random (k)", ylabel="test error", title="k random blocks deleted")
    for ax in (single, several):
        ax.set_ylim(0, 1)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    legend_outside(several)
    fig.suptitle("Lesion study (Veit et al. 2016): test error with blocks deleted at test time")
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
                title=f"{run.label}, dense block {block}",
            )
    shown = f" (the first {len(runs)} of {len(measured)} runs)" if len(measured) > len(runs) else ""
    fig.suptitle(f"Feature reuse: mean absolute weight a layer gives each earlier layer's maps{shown}")
    return [(f"Feature reuse{shown}", save(fig, out / "feature_reuse.png"))]
