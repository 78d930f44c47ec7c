"""What a Comet project view groups, filters and plots by: each run's flat parameters and final metrics, and
the report experiment's curves (the data behind its figures, and lesion and signal curves where runs hold
them).

docs/comet.md lists these names in its table "Names"; tests/test_comet.py checks that the table and the
constants here agree, and that the archives of a real sweep and its report hold every one of them.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from experiments.record import RunRecord
from experiments.report.collect import Run

# flat parameters of every run, beside the whole config (`arch.depth`, `optim.lr`, ...)
PARAMETERS = {
    "family": "the net's family: plain, resnet, densenet, densenet_bc (or densenet_b, densenet_c)",
    "depth": "weighted layers",
    "dataset": "digits, cifar10, ...",
    "seed": "the run's seed",
    "memory_efficient": "true where parts are recomputed in backward",
    "precision": "32-true, bf16-mixed, ...",
    "sweep": "the sweep directory (runs of a sweep only)",
    "environment.<key>": "what computed the run: each key of its environment (torch, cpu, threads, ...)",
}
# single values logged at the end of every run (every other number of summary.json too, under its name)
FINAL_METRICS = {
    "test_error": "final test error (fraction)",
    "train_error": "final epoch's training error",
    "val_error": "final epoch's validation error",
    "params": "trainable parameters",
    "macs_per_image": "forward multiply-adds of one image",
    "activation_bytes": "bytes held for backward in one training step",
    "peak_memory_bytes": "peak memory of a training step",
    "step_time_ms": "median training step (also logged per epoch)",
    "throughput": "training images per second",
}
# the curves of the report experiment, each named `<kind>-<series>`; a series is `<family>-<dataset>`
# (family with `_memory_efficient` where it recomputes), or a run: `<family><depth>-<dataset>-s<seed>`
REPORT_CURVES = {
    "train_error_vs_depth": "x depth, y final training error (mean over seeds); per family",
    "test_error_vs_depth": "x depth, y final test error (mean over seeds); per family",
    "activation_bytes_vs_depth": "x depth, y activation bytes; per family",
    "step_time_ms_vs_depth": "x depth, y median step time (ms); per family",
    "test_accuracy_vs_params": "x parameters, y test accuracy (mean over seeds); per family",
    "lesion_single": "x deleted block's index, y test error; per run with lesion.csv",
    "lesion_random": "x blocks deleted at random, y mean test error; per run with lesion.csv",
    "grad_norm_first_step": "x block index, y gradient norm at the first signal step; per run",
    "grad_norm_last_step": "x block index, y gradient norm at the last signal step; per run",
    "response_std_first_step": "x block index, y response std at the first signal step; per run",
    "response_std_last_step": "x block index, y response std at the last signal step; per run",
}
Curve = tuple[list[float], list[float]]


def run_parameters(record: RunRecord) -> dict[str, Any]:
    """PARAMETERS of a run, from its record (`sweep` only for a run of a sweep; `environment.<key>` for each
    key of the environment its first segment ran in)."""
    values = {
        "family": record.arch,
        "depth": record.depth,
        "dataset": record.dataset,
        "seed": record.seed,
        "memory_efficient": record.memory_efficient,
        "precision": record.precision,
        "sweep": record.sweep,
    }
    values.update({f"environment.{key}": value for key, value in (record.environment or {}).items()})
    return {key: value for key, value in values.items() if value is not None}


def final_metrics(record: RunRecord) -> dict[str, float]:
    """Every number of the record under its field's name (FINAL_METRICS among them)."""
    return {
        key: value
        for key, value in record.to_json().items()
        if isinstance(value, (int, float)) and not isinstance(value, bool)
    }


def _family(run: Run) -> str:
    return run.arch + ("_memory_efficient" if run.memory_efficient else "")


def _series(run: Run) -> str:
    return f"{_family(run)}-{run.dataset}"


def _mean_curve(points: Iterable[tuple[float, float]]) -> Curve:
    """The points sorted by x, the y of equal x averaged (runs that differ only in their seed)."""
    by_x: dict[float, list[float]] = defaultdict(list)
    for x, y in points:
        by_x[x].append(y)
    xs = sorted(by_x)
    return xs, [statistics.mean(by_x[x]) for x in xs]


def _grouped(
    runs: list[Run], kind: str, point: Callable[[Run], Any], series: Callable[[Run], str] = _series
) -> dict[str, Curve]:
    """One curve `<kind>-<series>` per series, of the points `point(run)` gives (None: the run has none)."""
    points: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for run in runs:
        if (xy := point(run)) is not None:
            points[series(run)].append(xy)
    return {f"{kind}-{series}": _mean_curve(group) for series, group in sorted(points.items())}


def _completed(run: Run, *keys: str) -> bool:
    return run.trained and all(run.get(k) is not None for k in keys)


def _training_series(runs: list[Run]) -> Callable[[Run], str]:
    """Series of trained runs: runs of different lengths on curves of their own, never averaged as seeds."""
    if len({run.get("epochs") for run in runs}) > 1:
        return lambda run: f"{_series(run)}-{run.get('epochs')}epochs"
    return _series


def figure_curves(runs: list[Run]) -> dict[str, Curve]:
    """The data behind the report's figures: error, activation memory and step time against depth, and
    accuracy against parameters."""
    curves: dict[str, Curve] = {}
    for key in ("train_error", "test_error"):
        trained = [r for r in runs if _completed(r, key) and r.depth]
        curves |= _grouped(
            trained, f"{key}_vs_depth", lambda r, key=key: (r.depth, r.get(key)), _training_series(trained)
        )
    for key in ("activation_bytes", "step_time_ms"):
        measured = [r for r in runs if r.get(key) and r.depth]
        curves |= _grouped(measured, f"{key}_vs_depth", lambda r, key=key: (r.depth, r.get(key)))
    tested = [r for r in runs if _completed(r, "test_error", "params")]
    return curves | _grouped(tested, "test_accuracy_vs_params", _accuracy)


def _accuracy(run: Run) -> tuple[float, float]:
    return run.get("params"), 1 - run.get("test_error")


def run_names(runs: list[Run]) -> dict[Path, str]:
    """Each run's name in per-run curves, `<family><depth>-<dataset>-s<seed>`, made unique with `-2`, ...
    where runs of several sweeps share it."""
    names: dict[Path, str] = {}
    taken: dict[str, int] = defaultdict(int)
    for run in runs:
        name = f"{_family(run)}{run.depth}-{run.dataset}-s{run.get('seed') or 0}"
        taken[name] += 1
        names[run.path] = name if taken[name] == 1 else f"{name}-{taken[name]}"
    return names


def lesion_curves(rows: list[dict[str, Any]], name: str) -> dict[str, Curve]:
    """From lesion.csv's rows (kind,k,blocks,test_error,note): the test error against the deleted block's
    index (kind single; undeletable blocks have no error), and the mean test error against the number of
    blocks deleted at random (kind random). Rows that do not parse are left out."""
    single, random = [], []
    for row in rows:
        try:
            if "test_error" not in row:
                continue
            if row["kind"] == "single":
                single.append((int(row["blocks"]), float(row["test_error"])))
            elif row["kind"] == "random":
                random.append((int(row["k"]), float(row["test_error"])))
        except (KeyError, ValueError):
            continue
    named = {"lesion_single": single, "lesion_random": random}
    return {f"{kind}-{name}": _mean_curve(points) for kind, points in named.items() if points}


def signal_curves(rows: list[dict[str, Any]], name: str) -> dict[str, tuple[int, Curve]]:
    """From signals.csv's rows (step,block,index,quantity,value): the gradient norm and the response std
    against the block's index at the first and the last signal step, each with its step."""
    points: dict[str, dict[int, list[tuple[float, float]]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        try:
            if row["quantity"] in ("grad_norm", "response_std"):
                point = (int(row["index"]), float(row["value"]))
                points[row["quantity"]][int(row["step"])].append(point)
        except (KeyError, ValueError):
            continue
    curves = {}
    for quantity, by_step in sorted(points.items()):
        for which, step in (("first", min(by_step)), ("last", max(by_step))):
            curves[f"{quantity}_{which}_step-{name}"] = (step, _mean_curve(by_step[step]))
    return curves


def log_report_curves(experiment: Any, runs: list[Run]) -> list[str]:
    """Log every curve of REPORT_CURVES the runs give to the report's experiment; returns their names."""
    curves = {name: (None, curve) for name, curve in figure_curves(runs).items()}
    for run, name in zip(runs, run_names(runs).values(), strict=True):
        curves |= {curve: (None, xy) for curve, xy in lesion_curves(run.lesion, name).items()}
        curves |= signal_curves(run.signals, name)
    for curve, (step, (xs, ys)) in curves.items():
        experiment.log_curve(curve, xs, ys, step=step)
    return list(curves)
