"""hydra/launcher=packed: a sweep's runs trained side by side in one process (on a GPU, each on its own
stream), each the same run as alone."""

from __future__ import annotations

import pytest

from tests.conftest import TINY
from tests.helpers import archive_metrics, run_dirs, summary

SWEEP = ["arch=plain,resnet", "arch.depth=8", "seed=0", *TINY]


@pytest.mark.slow  # seconds each: run by make test-slow
def test_packed_runs_are_the_runs_they_would_be_alone(cli, workdir):
    """On a CPU in float32: the same metrics.csv, byte for byte, and the same errors; each run's record names
    the runs it shared the process with, and its Comet archive holds its own metrics."""
    packed = cli(
        "train",
        "-m",
        "hydra/launcher=packed",
        *SWEEP,
        "hydra.sweep.dir=packed",
    )
    assert packed.status == 0, packed.err
    assert "Packing 2 runs into this process, 4 at a time" in packed.out
    assert cli("train", "-m", *SWEEP, "hydra.sweep.dir=alone").status == 0
    runs = {run.name: run for run in run_dirs(workdir / "packed")}
    assert sorted(runs) == sorted(run.name for run in run_dirs(workdir / "alone"))
    for name, run in runs.items():
        alone = workdir / "alone" / name
        assert (run / "metrics.csv").read_bytes() == (alone / "metrics.csv").read_bytes(), name
        for key in (
            "train_error",
            "val_error",
            "test_error",
            "train_loss",
            "val_loss",
            "params",
            "activation_bytes",
        ):
            assert summary(run)[key] == summary(alone)[key], (name, key)
        assert (
            summary(run)["packed_with"] == sorted(set(runs) - {name})
            and summary(alone)["packed_with"] is None
        )
        assert summary(run)["peak_memory_bytes"] is None and summary(run)["step_time_ms"] > 0
        (archive,) = (run / "comet").glob("*.zip")
        assert archive_metrics(archive)["test_error"] == [summary(run)["test_error"]]
        log = (run / "train.log").read_text()
        assert run.name.split("-")[0] in log and all(
            other.split("-s")[0] + "-s" not in log
            for other in set(runs) - {name}
            if other.split("-")[0] != name.split("-")[0]
        )


def test_packed_profiles_do_not_take_the_shared_process_memory_for_their_own(cli, workdir):
    result = cli("profile", "-m", "hydra/launcher=packed", *SWEEP, "logger=none", "hydra.sweep.dir=packed")
    assert result.status == 0, result.err
    for run in run_dirs(workdir / "packed"):
        assert summary(run)["peak_memory_bytes"] is None and summary(run)["step_time_ms"] > 0
        assert summary(run)["packed_with"] and summary(run)["status"] == "completed"


def test_runs_at_once_must_be_positive(cli, workdir):
    result = cli("train", "-m", "hydra/launcher=packed", "hydra.launcher.runs_at_once=0", *TINY)
    assert result.status != 0
    assert "hydra.launcher.runs_at_once must be a positive integer, got 0" in result.error_line()
    assert sorted(p.name for p in workdir.iterdir()) == ["home"]


@pytest.mark.gpu
def test_packed_runs_on_a_gpu_match_the_runs_alone_within_the_cuda_graph_tolerance(cli, workdir):
    """Each run on its own CUDA stream, its steps CUDA-graph replays: cuDNN's kernels are not deterministic,
    so close, as tests/test_step_graph.py holds replays to eager steps."""
    gpu = [
        "trainer=gpu",
        "dataset=synthetic",
        "dataset.image_size=16",
        "dataset.train_size=1350",
        "trainer.max_epochs=2",
        "logger=none",
    ]
    sweep = ["arch=plain,resnet", "arch.depth=8", "seed=0,1", *gpu]
    assert cli("train", "-m", "hydra/launcher=packed", *sweep, "hydra.sweep.dir=packed").status == 0
    assert cli("train", "-m", *sweep, "hydra.sweep.dir=alone").status == 0
    for run in run_dirs(workdir / "packed"):
        alone = workdir / "alone" / run.name
        assert summary(run)["cuda_graph_steps"] == summary(alone)["cuda_graph_steps"] > 0
        for key in ("train_loss", "val_loss"):
            assert summary(run)[key] == pytest.approx(summary(alone)[key], rel=1e-2), (run.name, key)


def test_packed_runs_must_agree_on_deterministic(cli, workdir):
    """One process has one deterministic setting (torch's deterministic algorithms are process-wide)."""
    mixed = cli(
        "train", "-m", "hydra/launcher=packed", *SWEEP, "deterministic=true,false", "hydra.sweep.dir=x"
    )
    assert mixed.status == 2
    assert mixed.error_line().startswith("error: hydra/launcher=packed runs share one process")
    assert not any((workdir / "x").glob("*/summary.json"))
