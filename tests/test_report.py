"""`experiments report` on a real (small) sweep, with a killed run and a failed one among its runs."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
import zipfile

import matplotlib.image
import pytest

from experiments import specs
from experiments.report.collect import Run
from experiments.report.plots import exponent
from tests.helpers import archive_messages, clean_env, run_dirs


@pytest.fixture
def sweep_with_casualties(digits_sweep, workdir):
    """A copy of the digits sweep where plain-14 lost its summary (killed), resnet-14 failed, a run beside
    them has a summary.json that is valid JSON but no record, resnet-8's signals.csv has a row that is not
    numbers and plain-8 has a lesion.csv cut short."""
    shutil.copytree(digits_sweep / "multirun", workdir / "multirun")
    runs = {run.name.split("-")[0]: run for run in run_dirs(workdir / "multirun")}
    (runs["plain14"] / "summary.json").unlink()
    failed = json.loads((runs["resnet14"] / "summary.json").read_text())
    failed.update(status="failed", error="RuntimeError: out of memory", test_error=None)
    (runs["resnet14"] / "summary.json").write_text(json.dumps(failed))
    odd = runs["plain8"].parent / "odd"
    (odd / ".hydra").mkdir(parents=True)
    (odd / "summary.json").write_text('{"status": "completed", "depth": [20]}')
    with (runs["resnet8"] / "signals.csv").open("a") as f:
        f.write("3,stem,0,grad_norm,abc\n")
    (runs["plain8"] / "lesion.csv").write_text("kind,k,blocks,test_error,note\nintact,0,,")
    return runs["plain8"].parent


def test_report_tables_and_figures(sweep_with_casualties, cli, workdir):
    sweep = sweep_with_casualties
    result = cli("report", str(sweep), "--out", "report")
    assert result.status == 0, result.err
    out = workdir / "report"
    assert "report: report/report.md" in result.out
    for damaged in ("resnet8", "plain8"):
        (run,) = sweep.glob(f"{damaged}-*")
        assert f"{run / ('signals.csv' if damaged == 'resnet8' else 'lesion.csv')} is damaged" in result.err

    with (out / "runs.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == [
        "arch",
        "depth",
        "memory_efficient",
        "command",
        "dataset",
        "precision",
        "batch",
        "params",
        "macs",
        "flops",
        "activation_memory",
        "activation_memory_at_precision",
        "peak_memory",
        "step_time_ms",
        "epochs",
        "train_error",
        "val_error",
        "test_error",
        "paper_test_error",
        "status",
        "run_dir",
    ]
    assert [(r["arch"], r["depth"], r["status"]) for r in rows] == [
        ("plain", "8", "completed"),
        ("plain", "14", "unfinished"),
        ("resnet", "8", "completed"),
        ("resnet", "14", "failed"),
        ("?", "0", "unreadable"),
    ]
    assert rows[1]["epochs"] == "1"  # the killed run's metrics.csv still counts
    assert float(rows[0]["params"]) > 0 and 0 <= float(rows[0]["train_error"]) <= 1

    markdown = (out / "report.md").read_text()
    assert (
        markdown.count("| plain | 8") + markdown.count("| plain | 14") == 2
        and markdown.count("| resnet |") == 2
    )
    assert "RuntimeError: out of memory" in markdown and "unfinished" in markdown
    assert f"{sweep}/odd/summary.json: depth is [20], which is not" in markdown
    figures = sorted(p.name for p in out.glob("*.png"))
    assert figures == [
        "accuracy_vs_params.png",
        "activation_memory.png",
        "error_vs_depth.png",
        "param_grad_norms.png",
        "signal_propagation.png",
        "step_time.png",
        "training_error_digits.png",
        "update_ratio.png",
    ]
    for figure in figures:
        assert f"]({figure})" in markdown
        pixels = matplotlib.image.imread(out / figure)
        assert pixels.shape[0] >= 400 and pixels.shape[1] >= 600 and pixels.std() > 0.01, figure

    (archive,) = (out / "comet").glob("*.zip")
    with zipfile.ZipFile(archive) as z:
        experiment = json.loads(z.read("experiment.json"))
    assert f"sweep:{sweep.relative_to(workdir)}" in experiment["tags"] and "report" in experiment["tags"]
    uploads = [m["payload"] for m in archive_messages(archive) if m["type"] == "file_upload"]
    images = sorted(u["additional_params"]["figName"] for u in uploads if u["upload_type"] == "visualization")
    assert images == [figure.removesuffix(".png") for figure in figures]
    assets = sorted(u["additional_params"]["fileName"] for u in uploads if u["upload_type"] == "asset")
    assert assets == ["report.md", "runs.csv"]


def test_report_of_a_directory_without_runs_is_one_line(cli, workdir):
    (workdir / "empty").mkdir()
    result = cli("report", "empty")
    assert result.status == 1
    assert result.error_line() == "error: no runs under empty (a run directory holds .hydra/)"
    assert cli("report", "nowhere").error_line() == "error: nowhere is not a directory"
    wrong_option = cli("report", "empty", "--logger", "wandb")
    assert wrong_option.status == 2
    assert wrong_option.error_line().startswith(
        "error: experiments report: argument --logger: invalid choice"
    )


def test_an_unfinished_run_is_named_by_its_config_as_the_zoo_names_its_net(tmp_path):
    """Without a record, the report reads the net from the config: a resnet without shortcuts is the plain
    net the zoo builds for it."""
    config = {"arch": {"name": "resnet", "depth": 20, "shortcut": "none"}, "dataset": {"name": "digits"}}
    run = Run(tmp_path, config=config)
    assert run.arch == specs.resolve("resnet", depth=20, shortcut="none").family == "plain"
    assert Run(tmp_path, config={"arch": {"name": "densenet_bc"}}).arch == "densenet_bc"


def test_exponent_of_a_power_law():
    assert exponent([10, 20, 40], [3 * d**1.5 for d in (10, 20, 40)]) == pytest.approx(1.5)


@pytest.mark.slow
def test_demo_shows_degradation_and_the_densenet_memory_trade_off(workdir):
    result = subprocess.run(
        [sys.executable, "-m", "experiments.demo", "demo"],
        cwd=workdir,
        env=clean_env(workdir),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    assert "open demo/report/report.md" in result.stdout
    with (workdir / "demo" / "report" / "aggregate.csv").open() as f:
        means = {(r["arch"], int(r["depth"])): r for r in csv.DictReader(f)}
    assert {row["n"] for key, row in means.items() if key[0] in ("plain", "resnet")} == {"3"}  # seeds
    train = {key: float(row["train_error_mean"]) for key, row in means.items()}
    assert train[("plain", 56)] >= train[("plain", 20)] + 0.2
    assert train[("resnet", 56)] <= train[("plain", 56)] - 0.2
    report = (workdir / "demo" / "report" / "report.md").read_text()
    assert "| plain-56 on digits (n=3) | plain-20 on digits (n=3) | training error |" in report
    with (workdir / "demo" / "report" / "runs.csv").open() as f:
        rows = list(csv.DictReader(f))
    memory = {}
    for r in rows:
        if r["command"] == "profile" and r["arch"] == "densenet_bc":
            memory.setdefault(r["memory_efficient"], []).append(
                (int(r["depth"]), float(r["activation_memory"]))
            )
    slopes = {key: exponent(*zip(*sorted(points), strict=True)) for key, points in memory.items()}
    assert slopes["False"] > slopes["True"]
