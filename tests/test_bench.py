"""The benchmark scripts run on the CPU and print their tables (their small launch-bound case)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).parents[1] / "bench"
LAUNCH_BOUND = "resnet8, 8 px, batch 2"


def run_bench(script: str, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, str(BENCH / script), *args], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


@pytest.mark.slow
def test_speed_bench_prints_the_three_paths_and_the_startup_times():
    out = run_bench("speed.py", "--cases", LAUNCH_BOUND, "--repeats", "1", "--epochs", "1")
    (row,) = [line for line in out.splitlines() if line.startswith(LAUNCH_BOUND)]
    project, lightning, raw = (float(v.replace(",", "")) for v in row[24:].split()[1:4])
    assert min(project, lightning, raw) > 0
    # the project's extra time a step, split into Lightning's share and ours, adds up
    total, lightning_ms, ours_ms = (
        float(v) for v in row.split("=")[0].split()[-1:] + row.split("=")[1].split("+")
    )
    assert total == pytest.approx(lightning_ms + ours_ms, abs=0.011)
    assert "`experiments --help`:" in out and "command to first training step" in out


@pytest.mark.slow
def test_step_profile_counts_each_paths_work_per_step():
    out = run_bench("step_profile.py", "--skip", "3", "--steps", "4")
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines() if line.split()[:1]}
    wall, aten = {}, {}
    for path in ("project", "lightning_only", "raw_loop"):
        wall[path], aten[path] = float(rows[path][0]), float(rows[path][2])
        assert wall[path] > 0
    # the same model's step, with Lightning's loop and then our metrics around it: more tensor ops each
    assert 100 < aten["raw_loop"] < aten["lightning_only"] < aten["project"]


@pytest.mark.slow
def test_sweep_bench_runs_its_passes_and_prints_its_table():
    """bench/sweep.py's CPU dry run: the same code as on a GPU (run after run, packed, DenseNet with compile
    off and on), on tiny images."""
    out = run_bench("sweep.py", "--dry-run", "--steps", "8")
    rows = {line[:46].strip(): line[46:].strip() for line in out.splitlines()[-13:]}
    for net in ("resnet20", "plain56", "resnet110"):
        assert float(rows[f"{net}, img/s alone"].replace(",", "")) > 0
    assert rows["He et al.'s ten runs, run after run"].endswith(" min")
    assert float(rows["packed, 3 at once: speed-up"].removesuffix(" x")) > 0
    assert float(rows["DenseNet-BC-10, compile=true, img/s"].replace(",", "")) > 0
