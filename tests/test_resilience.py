"""Scale out and survive: DDP, submitit, killed and concurrent runs, divergence, determinism, upgrades,
directories that belong to another run."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from experiments.build import build_training
from experiments.checkpoints import AtomicCheckpointIO
from experiments.config import compose
from experiments.device import resolve_device
from experiments.errors import UserError
from experiments.measure.instruments import Instruments
from experiments.plan import Plan
from experiments.record import read_rows, write_atomic
from experiments.rundir import LOCK_NAME
from tests.conftest import TINY
from tests.helpers import FIXTURES, archive_messages, clean_env, run_cli, run_dirs, summary


def update_of(checkpoint: Path) -> dict:
    """How the checkpoint's optimiser updates its parameters: fused, foreach (None: PyTorch's default)."""
    group = torch.load(checkpoint, weights_only=False)["optimizer_states"][0]["param_groups"][0]
    return {key: group[key] for key in ("fused", "foreach")}


def epochs_in(metrics: Path) -> list[int]:
    with metrics.open() as f:
        return [int(row["epoch"]) for row in csv.DictReader(f)]


TRAIN = [sys.executable, "-m", "experiments", "train", "arch=resnet", "arch.depth=8", "dataset=digits"]


def start(workdir: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [*TRAIN, *args],
        cwd=workdir,
        env=clean_env(workdir),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_epochs(workdir: Path, process: subprocess.Popen, epochs: int) -> Path:
    deadline = time.monotonic() + 120
    while (
        not (metrics := next(workdir.glob("outputs/*/metrics.csv"), None)) or len(epochs_in(metrics)) < epochs
    ):
        assert process.poll() is None and time.monotonic() < deadline, "the run ended before its epoch"
        time.sleep(0.05)
    return metrics.parent


@pytest.mark.slow
def test_a_killed_run_resumes_where_it_stopped_and_its_lock_does_not_block(workdir):
    process = start(workdir, "trainer.max_epochs=5")
    run = wait_for_epochs(workdir, process, 2)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert (run / "checkpoints" / "last.ckpt").exists() and not (run / "summary.json").exists()
    assert (run / LOCK_NAME).exists()  # left by the killed process: stale, since it is gone

    result = subprocess.run(
        [*TRAIN, "trainer.max_epochs=5"],
        cwd=workdir,
        env=clean_env(workdir),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "resuming from" in result.stdout and "is gone; taking over" in result.stdout
    assert epochs_in(run / "metrics.csv") == [0, 1, 2, 3, 4]
    record = summary(run)
    assert record["status"] == "completed" and record["epochs"] == 5
    # the Comet experiment continues under the key the run directory kept, marked as resumed
    key = (run / "comet" / "experiment_key").read_text()
    messages = archive_messages(Path(record["comet"]["archive"]))
    others = {m["payload"]["key"]: m["payload"]["value"] for m in messages if m["type"] == "log_other"}
    assert others["resumed_after_epoch"] >= 1 and record["comet"]["archive"].split("/")[-1].startswith(key)


@contextlib.contextmanager
def files_capped_at(size: int) -> Iterator[None]:
    """A write past `size` bytes fails part-way with EFBIG, as a write to a full disk fails with ENOSPC."""
    limits = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the error, not the signal that kills
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, limits[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limits)
        signal.signal(signal.SIGXFSZ, handler)


def test_a_checkpoint_or_record_that_cannot_be_written_leaves_the_last_one_whole(tmp_path):
    """A run's trainer writes checkpoints beside their name and renames them into place: a write that
    fails part-way leaves the previous checkpoint loadable and nothing else behind."""
    plan = Plan.of(compose("train", ["arch=resnet", "arch.depth=8", *TINY]))
    run = build_training(plan, resolve_device(plan.recipe), Instruments(), tmp_path / "run", callbacks=[])
    checkpoint_io = run.trainer.strategy.checkpoint_io
    assert isinstance(checkpoint_io, AtomicCheckpointIO)
    written = tmp_path / "written"  # apart from the run the trainer was built for
    path = written / "checkpoints" / "last.ckpt"
    good = {"epoch": 1, "weights": torch.ones(100_000)}  # 0.4 MB
    checkpoint_io.save_checkpoint(good, path)
    with files_capped_at(1_000_000), pytest.raises(UserError, match="file too large"):
        checkpoint_io.save_checkpoint({"epoch": 2, "weights": torch.zeros(1_000_000)}, path)  # 4 MB
    assert torch.equal(torch.load(path)["weights"], good["weights"])
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]
    record = written / "summary.json"  # the run's other files go the same way
    write_atomic(record, "{}")
    with files_capped_at(1000), pytest.raises(OSError):
        write_atomic(record, "x" * 5000)
    assert record.read_text() == "{}" and sorted(p.name for p in written.iterdir()) == [
        "checkpoints",
        "summary.json",
    ]


@pytest.mark.slow
def test_the_same_command_twice_at_once_runs_once(workdir):
    """The second process refuses with one line naming the holder; the first completes untouched."""
    first = start(workdir, "trainer.max_epochs=4")
    run = wait_for_epochs(workdir, first, 1)
    second = subprocess.run(
        [*TRAIN, "trainer.max_epochs=4"],
        cwd=workdir,
        env=clean_env(workdir),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert second.returncode == 1
    (line,) = second.stderr.strip().splitlines()
    assert line.startswith(f"error: {run} is in use by another run (process {first.pid} on ")
    _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    assert summary(run)["status"] == "completed" and epochs_in(run / "metrics.csv") == [0, 1, 2, 3]
    log = (run / "train.log").read_text()
    assert log.count("epoch 1/4") == 1  # one writer


def test_a_directory_holding_another_run_is_never_written_to(cli, workdir):
    assert cli("train", "arch=resnet", "arch.depth=8", *TINY, "logger=none", "hydra.run.dir=mine").status == 0
    before = {p: p.read_bytes() for p in (workdir / "mine").rglob("*") if p.is_file()}
    result = cli("train", "arch=resnet", "arch.depth=14", *TINY, "logger=none", "hydra.run.dir=mine")
    assert result.status == 1
    assert "mine holds another run (arch.depth: 8 there, 14 here); nothing was changed" in result.error_line()
    assert {p: p.read_bytes() for p in (workdir / "mine").rglob("*") if p.is_file()} == before
    theirs = workdir / "theirs"  # a folder of the user's, no run's
    theirs.mkdir()
    (theirs / "metrics.csv").write_text("my own data\n")
    result = cli("train", "arch=resnet", "arch.depth=8", *TINY, "logger=none", "hydra.run.dir=theirs")
    assert result.status == 1
    assert result.error_line() == (
        f"error: {theirs} holds files that are not a run's (metrics.csv); nothing was changed: give a new or "
        "empty hydra.run.dir"
    )
    assert [p.name for p in theirs.iterdir()] == ["metrics.csv"]
    assert (theirs / "metrics.csv").read_text() == "my own data\n"


def test_a_run_saved_before_the_upgrade_resumes_in_its_directory(cli, workdir):
    """A run saved by an earlier version (old module names, a config without the keys added since) is found
    by the same command, and its checkpoint loads."""
    old = workdir / "outputs" / "resnet8-digits-s0-f01d45"
    shutil.copytree(FIXTURES / "legacy_run", old)
    result = cli(
        "train", "arch=resnet", "arch.depth=8", "dataset=digits", "trainer.max_epochs=3", "logger=none"
    )
    assert result.status == 0, result.err
    assert f"resuming from {old}/checkpoints/last.ckpt, saved at the end of epoch 2" in result.out
    assert run_dirs(workdir) == [old]
    assert epochs_in(old / "metrics.csv") == [0, 1, 2]
    # its 44 steps were counted where Lightning ran the optimiser step: the third epoch goes on from there
    assert [row["step"] for row in read_rows(old / "metrics.csv")] == ["22", "44", "66"]
    assert summary(old)["status"] == "completed" and summary(old)["epochs"] == 3


def test_a_run_named_as_its_config_spelt_it_is_still_found(cli, workdir):
    """Earlier versions named a run by its arch config (`arch=resnet arch.shortcut=none` trained in
    resnet8-...); the same command finds that directory and its completed run, and makes no plain8-..."""
    command = ["train", "arch=resnet", "arch.depth=8", "arch.shortcut=none", *TINY, "logger=none"]
    assert cli(*command).status == 0
    (run,) = run_dirs(workdir)
    assert run.name.startswith("plain8-digits-s0-")
    old = run.rename(run.with_name(run.name.replace("plain8", "resnet8")))
    again = cli(*command)
    assert again.status == 0 and f"{old.relative_to(workdir)} already holds this run" in again.out
    assert run_dirs(workdir) == [old]


def test_divergence_stops_its_run_and_the_sweep_goes_on(cli, workdir):
    result = cli("train", "-m", "arch=resnet", "arch.depth=8", "optim.lr=1e4,0.1", *TINY, "logger=none")
    assert result.status == 1
    assert "Traceback" not in result.err
    errors = [line for line in result.err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "run diverged: training loss became nan" in errors[0]
    statuses = sorted(json.loads(p.read_text())["status"] for p in workdir.rglob("summary.json"))
    assert statuses == ["completed", "diverged"]


def test_resuming_from_a_given_checkpoint(cli, workdir):
    # saved with a fused update (as on a GPU), resumed with the configured one
    assert cli("train", "arch=resnet", "arch.depth=8", *TINY, "logger=none", "+optim.fused=true").status == 0
    (run,) = run_dirs(workdir)
    checkpoint = run / "checkpoints" / "last.ckpt"
    assert update_of(checkpoint) == {"fused": True, "foreach": None}
    args = ["arch=resnet", "arch.depth=8", "dataset=digits", "trainer.max_epochs=2", "logger=none"]
    result = cli("train", *args, f"ckpt_path={checkpoint}", "hydra.run.dir=continued")
    assert result.status == 0, result.err
    assert epochs_in(workdir / "continued" / "metrics.csv") == [1]
    assert summary(workdir / "continued")["epochs"] == 2
    assert update_of(workdir / "continued" / "checkpoints" / "last.ckpt") == {"fused": None, "foreach": None}


def test_a_seed_gives_the_same_metrics_csv(cli, workdir):
    for name in ("a", "b"):
        assert (
            cli(
                "train",
                "arch=resnet",
                "arch.depth=8",
                *TINY,
                "seed=7",
                "logger=none",
                f"hydra.run.dir={name}",
            ).status
            == 0
        )
    assert (workdir / "a" / "metrics.csv").read_bytes() == (workdir / "b" / "metrics.csv").read_bytes()


def test_an_unwritable_output_dir_is_one_line(cli, workdir):
    (workdir / "file").write_text("not a directory")
    result = cli("train", "dataset=digits", "hydra.run.dir=file/run")
    assert result.status != 0
    assert result.error_line() == (
        "error: cannot write file/run: Not a directory (runs go elsewhere with hydra.run.dir=DIR, "
        "or hydra.sweep.dir=DIR with -m)"
    )


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
    record = summary(run)
    assert record["status"] == "completed" and record["epochs"] == 2 and record["throughput"] > 0
    assert epochs_in(run / "metrics.csv") == [0, 1]
    assert len(list((run / "comet").glob("*.zip"))) == 1


@pytest.mark.slow
def test_a_submitit_local_sweep_completes_however_long_its_runs_take(cli, workdir, monkeypatch):
    """The launcher asks for the jobs' states at every poll here, as it does every 30 s of a slow sweep."""
    monkeypatch.setattr("experiments.launchers.STATE_CHECK_S", 0.0)
    result = cli(
        "train", "-m", "hydra/launcher=submitit_local", "arch=resnet", "arch.depth=8", "seed=1,2", *TINY
    )
    assert result.status == 0, result.err
    runs = run_dirs(workdir / "multirun")
    assert [r.name.rsplit("-", 1)[0] for r in runs] == ["resnet8-digits-s1", "resnet8-digits-s2"]
    for run in runs:
        assert summary(run)["status"] == "completed"
        assert (run / "checkpoints" / "last.ckpt").exists() and len(list((run / "comet").glob("*.zip"))) == 1


def test_an_interrupted_sweep_says_how_to_finish_it_and_its_csv_log_resumes(cli, workdir, monkeypatch):
    """Ctrl+C (here raised at the second epoch's start, after the first epoch's checkpoint) ends the sweep
    with the command that finishes it; that command resumes the run, and logger=csv's file keeps the epochs
    run before the interrupt."""
    from experiments.tracking.epochs import EpochRecord

    original = EpochRecord.on_train_epoch_start

    def interrupted(self, trainer, module):
        if trainer.current_epoch == 1:
            raise KeyboardInterrupt
        original(self, trainer, module)

    monkeypatch.setattr(EpochRecord, "on_train_epoch_start", interrupted)
    args = [
        "train",
        "-m",
        "arch=resnet",
        "arch.depth=8",
        "dataset=digits",
        "trainer.max_epochs=2",
        "logger=csv",
    ]
    result = cli(*args, "hydra.sweep.dir=sweep")
    assert result.status == 130
    assert result.err.strip().splitlines()[-1] == (
        "error: interrupted; the run's record says where it stopped; to finish the sweep, run the same "
        "command with hydra.sweep.dir=sweep"
    )
    (run,) = run_dirs(workdir / "sweep")
    assert summary(run)["status"] == "interrupted"
    monkeypatch.setattr(EpochRecord, "on_train_epoch_start", original)
    resumed = cli(*args, "hydra.sweep.dir=sweep")
    assert resumed.status == 0, resumed.err
    assert "resuming from" in resumed.out and summary(run)["status"] == "completed"
    with (run / "csv" / "metrics.csv").open() as f:
        logged = [row for row in csv.DictReader(f) if row.get("train/loss")]
    assert [row["epoch"] for row in logged] == ["0", "1"]


@pytest.mark.slow
def test_a_machine_with_srun_prints_no_srun_advice(workdir):
    bin_dir = workdir / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "srun").chmod(0o755)
    env = clean_env(workdir, PATH=f"{bin_dir}:{os.environ['PATH']}")
    result = run_cli("train", "arch=resnet", "arch.depth=8", *TINY, "logger=none", cwd=workdir, env=env)
    assert result.returncode == 0, result.stderr
    assert "`srun` command" not in result.stdout + result.stderr
