"""Real training runs through the CLI: the run's record, its Comet archive, sweeps, resumption."""

from __future__ import annotations

import csv
import json
import time
import zipfile
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from experiments.app import CONF_DIR
from experiments.build import Device, build_module
from experiments.models import create_model
from experiments.module import lr_factor
from tests.helpers import archive_messages, archive_metrics, archive_params, clean_env, run_cli, run_dirs

SUMMARY_KEYS = {
    "status",
    "arch",
    "depth",
    "dataset",
    "seed",
    "params",
    "flops_per_image",
    "activation_bytes",
    "peak_memory_bytes",
    "step_time_ms",
    "throughput",
    "epochs",
    "train_error",
    "val_error",
    "test_error",
    "train_loss",
    "val_loss",
    "wall_time_s",
    "comet",
}


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def resnet20_run(tmp_path_factory) -> tuple[Path, str]:
    """`train arch=resnet arch.depth=20 dataset=digits trainer.max_epochs=3`, once for the module's tests."""
    workdir = tmp_path_factory.mktemp("resnet20")
    (workdir / "home").mkdir()
    result = run_cli(
        "train", "arch=resnet", "arch.depth=20", "dataset=digits", "trainer.max_epochs=3", cwd=workdir
    )
    assert result.returncode == 0, result.stderr
    (run,) = run_dirs(workdir / "outputs")
    return run, result.stdout


def test_run_learns_digits_and_writes_its_summary(resnet20_run):
    run, _ = resnet20_run
    summary = json.loads((run / "summary.json").read_text())
    assert summary.keys() >= SUMMARY_KEYS
    assert summary["status"] == "completed"
    assert (summary["arch"], summary["depth"], summary["dataset"], summary["seed"]) == (
        "resnet",
        20,
        "digits",
        0,
    )
    assert summary["params"] == sum(p.numel() for p in create_model("resnet20", in_channels=1).parameters())
    assert summary["epochs"] == 3
    assert summary["test_error"] < 0.10
    assert summary["cuda_graph_steps"] == 0  # CUDA graphs are for GPUs
    assert 0 <= summary["train_error"] <= 1 and summary["val_loss"] > 0 and summary["wall_time_s"] > 0
    assert (run / "checkpoints" / "last.ckpt").stat().st_size > 100_000
    assert (run / ".hydra" / "config.yaml").exists()


def test_metrics_csv_has_one_row_per_epoch(resnet20_run):
    run, _ = resnet20_run
    rows = read_csv(run / "metrics.csv")
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2]
    for column in ("train/loss", "train/acc", "val/loss", "val/acc", "lr"):
        assert all(float(r[column]) >= 0 for r in rows), column
    assert float(rows[0]["lr"]) == pytest.approx(0.1)
    assert float(rows[-1]["train/loss"]) < float(rows[0]["train/loss"])


def test_comet_archive_holds_the_metrics_and_the_config(resnet20_run):
    run, stdout = resnet20_run
    (archive,) = (run / "comet").glob("*.zip")
    assert f"comet upload {archive.relative_to(run.parents[1])}" in stdout
    metrics = archive_metrics(archive)
    assert len(metrics["train/loss"]) == 3 and len(metrics["val/acc"]) == 3
    for key in ("train_error", "val_error", "test_error", "params", "test/acc"):
        assert key in metrics, key
    params = archive_params(archive)
    assert params["arch.depth"] == 20 and params["dataset.name"] == "digits" and params["optim.lr"] == 0.1
    summary = json.loads((run / "summary.json").read_text())
    assert summary["comet"] == {"mode": "offline", "archive": str(archive)}
    names = [
        m["payload"]["value"]
        for m in archive_messages(archive)
        if m["type"] == "log_other" and m["payload"]["key"] == "Name"
    ]
    assert names == ["resnet20-digits-s0"]


def test_rerunning_a_completed_run_does_nothing(resnet20_run):
    run, _ = resnet20_run
    workdir = run.parents[1]
    before = (run / "summary.json").read_text()
    result = run_cli(
        "train", "arch=resnet", "arch.depth=20", "dataset=digits", "trainer.max_epochs=3", cwd=workdir
    )
    assert result.returncode == 0, result.stderr
    assert "already holds this run, completed" in result.stdout
    assert (run / "summary.json").read_text() == before
    assert len(list((run / "comet").glob("*.zip"))) == 1


def test_multirun_gives_each_run_its_dir_and_comet_experiment(digits_sweep):
    workdir, stdout = digits_sweep
    assert [line for line in stdout.splitlines() if line.startswith("run ")] == [
        f"run {k} of 4" for k in range(1, 5)
    ]
    runs = run_dirs(workdir / "multirun")
    assert [r.name.rsplit("-", 1)[0] for r in runs] == [
        "plain20-digits-s0",
        "plain32-digits-s0",
        "resnet20-digits-s0",
        "resnet32-digits-s0",
    ]
    sweep = runs[0].parent.relative_to(workdir)
    keys = set()
    for run in runs:
        (archive,) = (run / "comet").glob("*.zip")
        with zipfile.ZipFile(archive) as z:
            experiment = json.loads(z.read("experiment.json"))
        keys.add(experiment["offline_id"])
        assert f"sweep:{sweep}" in experiment["tags"]
        assert len(archive_metrics(archive)["train/loss"]) == 1
        assert json.loads((run / "summary.json").read_text())["status"] == "completed"
    assert len(keys) == 4


def test_rerunning_a_sweep_in_its_directory_skips_its_completed_runs(digits_sweep):
    workdir, _ = digits_sweep
    sweep = run_dirs(workdir / "multirun")[0].parent
    before = sorted(p.stat().st_mtime_ns for p in sweep.rglob("summary.json"))
    args = ["arch=plain,resnet", "arch.depth=20,32", "dataset=digits", "trainer.max_epochs=1"]
    result = run_cli("train", "-m", *args, f"hydra.sweep.dir={sweep}", cwd=workdir)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("already holds this run, completed") == 4
    assert sorted(p.stat().st_mtime_ns for p in sweep.rglob("summary.json")) == before
    assert len(run_dirs(workdir / "multirun")) == 4


def test_comet_key_without_server_logs_offline_and_never_leaks_the_key(workdir):
    secret = "s3cretKEYs3cretKEYs3cretKEY"
    env = clean_env(workdir, COMET_API_KEY=secret, COMET_URL_OVERRIDE="http://127.0.0.1:9/clientlib/")
    begun = time.perf_counter()
    result = run_cli("train", "arch=resnet20", "dataset=digits", "trainer=debug", cwd=workdir, env=env)
    elapsed = time.perf_counter() - begun
    assert result.returncode == 0, result.stderr
    assert "Comet server unreachable" in result.stdout + result.stderr
    (run,) = run_dirs(workdir / "outputs")
    # the process ends soon after training: imports before it, the archive and shutdown after it
    assert elapsed - json.loads((run / "summary.json").read_text())["wall_time_s"] < 60
    (archive,) = (run / "comet").glob("*.zip")
    assert archive_metrics(archive)["test/acc"]
    for path in [p for p in run.rglob("*") if p.is_file()]:
        assert secret.encode() not in path.read_bytes(), path
    with zipfile.ZipFile(archive) as z:
        assert all(secret.encode() not in z.read(name) for name in z.namelist())


def test_other_loggers(workdir):
    result = run_cli("train", "arch=resnet20", "dataset=digits", "trainer=debug", "logger=csv", cwd=workdir)
    assert result.returncode == 0, result.stderr
    (run,) = run_dirs(workdir / "outputs")
    assert (run / "csv" / "metrics.csv").exists() and not (run / "comet").exists()
    assert len(read_csv(run / "metrics.csv")) == 1
    assert json.loads((run / "summary.json").read_text())["comet"] == {"mode": "disabled"}


@pytest.mark.parametrize(
    "overrides",
    [
        [
            "arch=densenet121",
            "dataset=synthetic",
            "dataset.train_size=32",
            "dataset.val_size=16",
            "dataset.test_size=16",
            "dataset.batch_size=16",
        ],
        pytest.param(["arch=densenet121", "dataset=synthetic"], marks=pytest.mark.slow),
        pytest.param(["arch=densenet121", "dataset=digits"], marks=pytest.mark.slow),
        ["arch=densenet_bc", "dataset=digits"],
        pytest.param(
            ["arch=resnet1202", "dataset=synthetic", "dataset.train_size=64", "dataset.batch_size=32"],
            marks=pytest.mark.slow,
        ),
    ],
    ids=[
        "densenet121-small-synthetic",
        "densenet121-synthetic",
        "densenet121-digits",
        "densenet_bc-digits",
        "resnet1202-synthetic",
    ],
)
def test_big_nets_train_for_an_epoch(overrides, workdir):
    result = run_cli("train", *overrides, "trainer.max_epochs=1", "logger=none", cwd=workdir)
    assert result.returncode == 0, result.stderr
    (run,) = run_dirs(workdir / "outputs")
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["epochs"] == 1


def test_learning_rate_schedules():
    he2016 = {"total_steps": 64_000, "name": "multistep", "milestones": [0.5, 0.75]}
    assert [
        lr_factor(step, **he2016) for step in (0, 31_999, 32_000, 47_999, 48_000, 63_999)
    ] == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])
    assert (
        lr_factor(399, warmup_steps=400, **he2016) == 0.1 and lr_factor(400, warmup_steps=400, **he2016) == 1
    )
    cosine = {"total_steps": 100, "name": "cosine"}
    assert [lr_factor(step, **cosine) for step in (0, 50, 100)] == pytest.approx([1, 0.5, 0])
    assert lr_factor(10, total_steps=100, name="constant") == 1


@pytest.mark.parametrize("optim", ["sgd", "adamw"])
def test_optimisers_are_fused_on_a_gpu_unless_the_config_or_a_grad_scaler_says(optim):
    def built(cuda: bool, *overrides: str, precision: str = "bf16-mixed") -> dict:
        with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
            cfg = compose("train", [f"optim={optim}", *overrides])
        module = build_module(cfg, torch.nn.Linear(2, 2), Device(cuda, precision, channels_last=False))
        return module.optimizer(module.parameters()).defaults

    assert built(cuda=True)["fused"] and not built(cuda=False)["fused"]
    assert built(True, "+optim.fused=false")["fused"] is False and built(False, "+optim.fused=true")["fused"]
    multi_tensor = built(True, "+optim.foreach=true")  # the user's pick; fused and foreach would conflict
    assert multi_tensor["foreach"] and not multi_tensor["fused"]
    assert not built(True, precision="16-mixed")["fused"]  # Lightning unscales only unfused optimisers
    if optim == "sgd":  # an optimiser without a fused update builds as configured
        assert "fused" not in built(True, "optim._target_=torch.optim.RMSprop", "~optim.nesterov")
