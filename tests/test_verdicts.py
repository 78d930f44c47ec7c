"""The report's claims over seeds: statistics in log space checked by hand, verdicts that say unresolved where
the seeds cannot decide, environments listed and mixed ones warned of, repeats of a run counted once."""

from __future__ import annotations

import csv
import json
import math
import shutil
import statistics
from pathlib import Path

import matplotlib.image
import pytest
from matplotlib.lines import Line2D

from experiments.record import RunRecord
from experiments.report import aggregate, over_seeds
from experiments.report.collect import Run, find_runs
from experiments.report.style import MAX_LEGEND, collapsed
from tests.helpers import run_dirs, summary


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def test_signals_over_seeds_are_geometric_means_and_spreads(three_seeds):
    runs = [run for run in find_runs([three_seeds]) if run.arch == "resnet"]
    (config,) = over_seeds.by_config(runs)
    assert config.name == "resnet-8 (n=3)"
    series = over_seeds.signal_over_seeds(config.runs, "grad_norm", 0.0)
    for index, (mean, low, high, n) in series.items():
        by_hand = [
            math.log10(float(row["value"]))
            for run in runs
            for row in _rows(run.path / "signals.csv")
            if row["quantity"] == "grad_norm" and float(row["step"]) == 0 and float(row["index"]) == index
        ]
        assert n == len(by_hand) == 3
        assert math.log10(mean) == pytest.approx(statistics.mean(by_hand), abs=1e-12)
        assert math.log10(high) - math.log10(mean) == pytest.approx(statistics.stdev(by_hand), abs=1e-12)
        assert math.log10(mean) - math.log10(low) == pytest.approx(statistics.stdev(by_hand), abs=1e-12)


def test_lesions_over_seeds_are_the_seeds_means(three_seeds):
    runs = [run for run in find_runs([three_seeds]) if run.arch == "resnet"]
    (summary_,) = over_seeds.lesion_summaries(runs)
    by_hand_rise = []
    for run in summary_.config.runs:
        rows = _rows(run.path / "lesion.csv")
        intact = float(next(r["test_error"] for r in rows if r["kind"] == "intact"))
        singles = [float(r["test_error"]) - intact for r in rows if r["kind"] == "single"]
        if intact <= over_seeds.UNTRAINED_ERROR:
            by_hand_rise.append(statistics.mean(singles))
    assert summary_.mean_rise == pytest.approx(by_hand_rise, abs=1e-12)
    assert len(summary_.intact) == 3 and len(summary_.mean_rise) + len(summary_.untrained) == 3


def _group(arch: str, errors: list[float], **env: object) -> aggregate.Group:
    runs = []
    for seed, error in enumerate(errors):
        record = RunRecord(status="completed", arch=arch, depth=20, dataset="digits", seed=seed)
        record.update(train_error=error, test_error=error, environment={"cpu": "x", "threads": 1, **env})
        runs.append(Run(Path(f"{arch}-{seed}"), record=record))
    return aggregate.Group(runs)


def test_a_verdict_is_unresolved_where_the_seeds_cannot_decide():
    one_seed = aggregate.compare(_group("plain", [0.5]), _group("resnet", [0.1, 0.2]), "train_error")
    assert one_seed.verdict.startswith("unresolved: fewer than 2 seeds") and one_seed.low is None
    overlapping = aggregate.compare(_group("plain", [0.1, 0.3]), _group("resnet", [0.2, 0.25]), "train_error")
    assert not overlapping.resolved and overlapping.verdict.startswith("unresolved: the interval holds 0")
    assert overlapping.low < 0 < overlapping.high
    apart = aggregate.compare(
        _group("plain", [0.8, 0.82, 0.85]), _group("resnet", [0.05, 0.02, 0.03]), "train_error"
    )
    assert (
        apart.resolved and apart.verdict.startswith("plain-20 higher (p = ") and 0.7 < apart.low < apart.high
    )


def test_a_verdict_across_environments_says_so_and_one_across_hosts_does_not():
    plain, resnet = _group("plain", [0.8, 0.9], host="a"), _group("resnet", [0.1, 0.2], host="b")
    assert not aggregate.compare(plain, resnet, "train_error").mixed_environments
    other_cpu = _group("resnet", [0.1, 0.2], cpu="another")
    assert aggregate.compare(plain, other_cpu, "train_error").mixed_environments


def _copy(run: Path, to: Path, **environment: object) -> Path:
    """A copy of a run's directory under `to`, its record's environment changed by `environment`."""
    copy = to / f"{run.name}-{len(list(to.glob('*'))) if to.exists() else 0}"
    shutil.copytree(run, copy)
    record = summary(copy)
    record["environment"].update(environment)
    (copy / "summary.json").write_text(json.dumps(record))
    return copy


def test_the_report_counts_repeats_once_keeps_other_environments_apart_and_warns(three_seeds, cli, workdir):
    runs = {run.name.split("-")[0] + run.name.split("-")[2]: run for run in run_dirs(three_seeds)}
    for _ in range(3):  # the same run, again and again on one machine (another host's name changes nothing)
        _copy(runs["plain8s0"], workdir / "copies", host="elsewhere")
    for seed in ("s0", "s1", "s2"):  # the residual nets again, on a machine that rounds differently
        _copy(runs[f"resnet8{seed}"], workdir / "other", cpu_capability="AVX2")
    result = cli("report", str(three_seeds), "copies", "other", "--out", "report", "--logger", "none")
    assert result.status == 0, result.err
    rows = _rows(workdir / "report" / "aggregate.csv")
    counted = {(r["arch"], r["environment"]): (r["n"], r["repeats"]) for r in rows}
    assert counted == {
        ("plain", "E1"): ("3", "3"),
        ("resnet", "E1"): ("3", "0"),
        ("resnet", "E2"): ("3", "0"),
    }
    report = (workdir / "report" / "report.md").read_text()
    assert "(3 repeats not counted)" in report and "## Environments" in report
    assert "- E2: " in report and "AVX2" in report and "- E3" not in report  # a host is no environment
    assert "| resnet-8 on digits | E1, E2 | 3 |" in report  # the same seeds set side by side
    assert "Tight layout" not in result.err
    height = matplotlib.image.imread(workdir / "report" / "training_error_digits.png").shape[0]
    assert height < 800  # a line per config, however many copies of its runs
    warning = "Warning: some verdicts above compare runs of different environments"
    assert warning not in report  # each net met its rival in its own environment
    plain = [str(run) for name, run in runs.items() if name.startswith("plain")]
    mixed = cli("report", *plain, "other", "--out", "mixed", "--logger", "none")
    assert "of the report's verdicts compare runs of different environments" in mixed.err
    assert "different environments" not in result.err
    assert warning in (workdir / "mixed" / "report.md").read_text()  # plain only in E1, resnet only in E2


def test_a_legend_that_cannot_fit_names_how_many_more():
    labels = [f"net-{i} (n=3)" for i in range(40)] + ["net-0 (n=3)"]
    handles, shown = collapsed([Line2D([], []) for _ in labels], labels)
    assert len(shown) == len(handles) == MAX_LEGEND and shown[-1] == "... 17 more (runs.csv)"
    assert shown[:3] == ["net-0 (n=3)", "net-1 (n=3)", "net-2 (n=3)"]


def test_a_side_without_values_is_unresolved_not_a_crash():
    empty = _group("plain", [0.5, 0.6])
    for run in empty.runs:
        run.record.train_error = None  # a record that holds no such figure
    verdict = aggregate.compare(empty, _group("resnet", [0.1, 0.2]), "train_error")
    assert verdict.verdict == "unresolved: a side has no values of it" and not verdict.resolved


def test_a_config_saved_before_a_neutral_key_existed_is_the_same_config():
    """`deterministic: false` joined the config later; runs saved without it pool with runs saved with it."""
    old, new = _group("plain", [0.5]).runs[0], _group("plain", [0.6]).runs[0]
    old.config = {"arch": {"name": "plain", "depth": 20}, "seed": 0}
    new.config = {"arch": {"name": "plain", "depth": 20}, "seed": 1, "deterministic": False}
    assert aggregate.config_key(old) == aggregate.config_key(new)
    new.config["deterministic"] = True
    assert aggregate.config_key(old) != aggregate.config_key(new)


def test_a_figure_draws_a_config_once_per_environment():
    one, two = _group("resnet", [0.1, 0.2]).runs, _group("resnet", [0.3, 0.4], threads=2).runs
    configs = over_seeds.by_config([*one, *two])
    assert [c.detail for c in configs] == ["threads=1", "threads=2"]
    assert [len(c.runs) for c in configs] == [2, 2]


def test_a_damaged_measurement_file_costs_its_figure_not_the_report(three_seeds, cli, workdir):
    (run,) = [run for run in run_dirs(three_seeds) if run.name.startswith("resnet8-digits-s0")]
    copy = workdir / "runs" / run.name
    shutil.copytree(run, copy)
    (copy / "landscape.csv").write_text("kind,direction,x,y,loss,error\nslice_1d,0,abc,,1.0,0.5\n")
    (copy / "paths.csv").write_bytes(b"\x00\xff garbage")
    result = cli("report", "runs", "--out", "report", "--logger", "none")
    assert result.status == 0, result.err
    for name in ("landscape.csv", "paths.csv"):
        assert result.err.count(f"{copy.relative_to(workdir) / name} is damaged: left out of the report") == 1
    assert (workdir / "report" / "report.md").exists()


@pytest.mark.parametrize("span", ["-1", "0", "nan", "inf"])
def test_a_span_that_is_no_distance_is_refused_before_any_pass(span, three_seeds, cli):
    (run,) = [run for run in run_dirs(three_seeds) if run.name.startswith("resnet8-digits-s1")]
    result = cli("landscape", "--span", span, "--points", "3", "--no-surface", str(run))
    assert result.status == 2 and "argument --span: must be a finite number > 0" in result.error_line()
    assert not (run / "landscape.csv").exists()
