"""Scale out and survive: DDP, submitit, a killed run resumed, divergence, determinism, bad output dirs."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from experiments.__main__ import main
from tests.helpers import archive_messages, clean_env, run_cli, run_dirs


def update_of(checkpoint: Path) -> dict:
    """How the checkpoint's optimiser updates its parameters: fused, foreach (None: PyTorch's default)."""
    group = torch.load(checkpoint, weights_only=False)["optimizer_states"][0]["param_groups"][0]
    return {key: group[key] for key in ("fused", "foreach")}


def epochs_in(metrics: Path) -> list[int]:
    with metrics.open() as f:
        return [int(row["epoch"]) for row in csv.DictReader(f)]


@pytest.mark.slow
def test_ddp_on_two_cpu_processes_leaves_one_run(workdir):
    result = run_cli(
        "train",
        "arch=resnet20",
        "dataset=digits",
        "trainer=ddp",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "trainer.max_epochs=2",
        cwd=workdir,
    )
    assert result.returncode == 0, result.stderr
    assert "Starting with 2 processes" in result.stdout + result.stderr
    (run,) = run_dirs(workdir)
    assert [p.parent for p in workdir.rglob("summary.json")] == [run]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["epochs"] == 2
    assert epochs_in(run / "metrics.csv") == [0, 1]
    assert len(list((run / "comet").glob("*.zip"))) == 1
    assert summary["throughput"] > 0


def test_a_killed_run_resumes_where_it_stopped(workdir):
    command = [
        sys.executable,
        "-m",
        "experiments",
        "train",
        "arch=resnet20",
        "dataset=digits",
        "trainer.max_epochs=5",
    ]
    env = clean_env(workdir)
    process = subprocess.Popen(
        command, cwd=workdir, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 300
    while not (metrics := next(workdir.glob("outputs/*/metrics.csv"), None)) or len(epochs_in(metrics)) < 2:
        assert process.poll() is None and time.monotonic() < deadline, "the run ended before its second epoch"
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    run = metrics.parent
    assert (run / "checkpoints" / "last.ckpt").exists() and not (run / "summary.json").exists()

    result = subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "resuming from" in result.stdout
    assert epochs_in(run / "metrics.csv") == [0, 1, 2, 3, 4]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["epochs"] == 5
    # the Comet experiment continues under the key the run directory kept, marked as resumed
    key = (run / "comet" / "experiment_key").read_text()
    messages = archive_messages(Path(summary["comet"]["archive"]))
    others = {m["payload"]["key"]: m["payload"]["value"] for m in messages if m["type"] == "log_other"}
    assert others["resumed_after_epoch"] >= 1 and summary["comet"]["archive"].split("/")[-1].startswith(key)


@pytest.mark.slow
def test_resuming_from_a_given_checkpoint(workdir):
    # saved with a fused update (as on a GPU), resumed with the configured one
    first = run_cli(
        "train",
        "arch=resnet20",
        "dataset=digits",
        "trainer.max_epochs=1",
        "logger=none",
        "+optim.fused=true",
        cwd=workdir,
    )
    assert first.returncode == 0, first.stderr
    (run,) = run_dirs(workdir)
    checkpoint = run / "checkpoints" / "last.ckpt"
    assert update_of(checkpoint) == {"fused": True, "foreach": None}
    second = run_cli(
        "train",
        "arch=resnet20",
        "dataset=digits",
        "trainer.max_epochs=2",
        "logger=none",
        f"ckpt_path={checkpoint}",
        "hydra.run.dir=continued",
        cwd=workdir,
    )
    assert second.returncode == 0, second.stderr
    assert epochs_in(workdir / "continued" / "metrics.csv") == [1]
    assert json.loads((workdir / "continued" / "summary.json").read_text())["epochs"] == 2
    assert update_of(workdir / "continued" / "checkpoints" / "last.ckpt") == {"fused": None, "foreach": None}


def test_divergence_stops_its_run_and_the_sweep_goes_on(workdir):
    result = run_cli(
        "train",
        "-m",
        "arch=resnet20",
        "dataset=digits",
        "optim.lr=1e4,0.1",
        "trainer.max_epochs=1",
        "logger=none",
        cwd=workdir,
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "run diverged: training loss became nan" in errors[0]
    statuses = sorted(json.loads(p.read_text())["status"] for p in workdir.rglob("summary.json"))
    assert statuses == ["completed", "diverged"]
    report = run_cli("report", str(next(workdir.glob("multirun/*/*"))), "--logger", "none", cwd=workdir)
    assert report.returncode == 0, report.stderr
    assert "| diverged |" in next(workdir.glob("multirun/*/*/report/report.md")).read_text()


@pytest.mark.slow
def test_a_seed_gives_the_same_metrics_csv(workdir):
    for name in ("a", "b"):
        result = run_cli(
            "train",
            "arch=resnet20",
            "dataset=digits",
            "trainer.max_epochs=2",
            "seed=7",
            "logger=none",
            f"hydra.run.dir={name}",
            cwd=workdir,
        )
        assert result.returncode == 0, result.stderr
    assert (workdir / "a" / "metrics.csv").read_bytes() == (workdir / "b" / "metrics.csv").read_bytes()


def test_an_unwritable_output_dir_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "file").write_text("not a directory")
    assert main(["train", "dataset=digits", "hydra.run.dir=file/run"]) != 0
    _, err = capsys.readouterr()
    assert err.strip().splitlines() == [
        "error: cannot write file/run: Not a directory (runs go elsewhere with hydra.run.dir=DIR, "
        "or hydra.sweep.dir=DIR with -m)"
    ]


@pytest.mark.slow
def test_a_submitit_local_sweep_completes(workdir):
    result = run_cli(
        "train",
        "-m",
        "hydra/launcher=submitit_local",
        "arch=resnet20",
        "seed=1,2",
        "dataset=digits",
        "trainer.max_epochs=1",
        cwd=workdir,
    )
    assert result.returncode == 0, result.stderr
    runs = run_dirs(workdir / "multirun")
    assert [r.name.rsplit("-", 1)[0] for r in runs] == ["resnet20-digits-s1", "resnet20-digits-s2"]
    for run in runs:
        assert json.loads((run / "summary.json").read_text())["status"] == "completed"
        assert (run / "checkpoints" / "last.ckpt").exists() and len(list((run / "comet").glob("*.zip"))) == 1


def test_slurm_launcher_defaults_follow_the_trainer(workdir):
    result = run_cli(
        "train",
        "hydra/launcher=submitit_slurm",
        "trainer=ddp",
        "trainer.devices=4",
        "--cfg",
        "all",
        "--resolve",
        cwd=workdir,
    )
    assert result.returncode == 0, result.stderr
    launcher = OmegaConf.create(result.stdout).hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.gpus_per_node, launcher.tasks_per_node, launcher.nodes) == (4, 4, 1)
    assert (launcher.max_num_timeout, launcher.signal_delay_s, launcher.partition) == (3, 120, None)
