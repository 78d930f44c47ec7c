"""Sweeps on a real SLURM cluster, submitted as a user submits them (`train -m hydra/launcher=submitit_slurm`)
and treated as a cluster treats jobs: requeued, sent the time-limit signal, cancelled, run as several tasks.

`make test-cluster` starts the cluster (tests/cluster/local_slurm.sh: munged, MariaDB, slurmdbd, slurmctld,
slurmd on this machine) and runs these; they find it through SLURM_CONF, or the env file that
`local_slurm.sh up` leaves in its state directory. Without a cluster that answers they are skipped.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import clean_env, run_cli, run_dirs, summary

pytestmark = pytest.mark.cluster

CLUSTER_DIR = Path(os.environ.get("CLUSTER_DIR", f"/tmp/experiments-slurm-{os.getuid()}"))
# The node does not hold a job to its CPUs (TaskPlugin=task/none), so each job is told to use the one CPU
# it was given, as task/cgroup would make it on a real cluster: jobs sharing the node do not fight.
ONE_CPU = {"OMP_NUM_THREADS": "1"}
# what every sweep here asks for: the node has no GPUs, and Comet would only add minutes
ON_THE_NODE = ["hydra/launcher=submitit_slurm", "trainer.accelerator=cpu", "logger=none"]


def _slurm_conf() -> str | None:
    if os.environ.get("SLURM_CONF"):
        return os.environ["SLURM_CONF"]
    env_file = CLUSTER_DIR / "env"  # `export SLURM_CONF=...`, written by local_slurm.sh up
    if env_file.is_file():
        return env_file.read_text().strip().removeprefix("export SLURM_CONF=")
    return None


@pytest.fixture(scope="module")
def slurm_env() -> dict[str, str]:
    """What a command needs to reach the cluster (SLURM_CONF); the module is skipped when none answers."""
    if shutil.which("sinfo") is None:
        no_cluster("no SLURM client (sinfo): run `make test-cluster`, which installs and starts the cluster")
    env = {"SLURM_CONF": conf} if (conf := _slurm_conf()) else {}
    try:
        answer = subprocess.run(
            ["sinfo", "-h", "-o", "%T"], env={**os.environ, **env}, capture_output=True, text=True, timeout=10
        )
    except subprocess.TimeoutExpired:
        answer = None
    if answer is None or answer.returncode != 0 or not answer.stdout.strip():
        why = "no answer in 10 s" if answer is None else (answer.stderr.strip() or "no node")
        no_cluster(
            f"no SLURM cluster answers ({why}): run `make test-cluster` or tests/cluster/local_slurm.sh up"
        )
    return env


def no_cluster(reason: str) -> None:
    """Skip, unless the cluster was meant to be there (`make test-cluster` sets CLUSTER_REQUIRED)."""
    if os.environ.get("CLUSTER_REQUIRED"):
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


def slurm(*args: str, env: dict[str, str]) -> str:
    return subprocess.run(args, env={**os.environ, **env}, capture_output=True, text=True, check=True).stdout


class Sweep:
    """`train -m ...` in a subprocess, in a user's directory, its jobs named for this sweep alone (so that
    cleaning up cancels only them)."""

    def __init__(self, root: Path, slurm_env: dict[str, str]) -> None:
        self.root = root
        self.slurm_env = slurm_env
        self.name = f"experiments-test-{uuid.uuid4().hex[:8]}"
        self.env = clean_env(root, **slurm_env, **ONE_CPU)
        self.process: subprocess.Popen | None = None

    def start(self, *overrides: str) -> None:
        command = ["train", "-m", *ON_THE_NODE, f"hydra.launcher.name={self.name}", *overrides]
        self.process = subprocess.Popen(
            [sys.executable, "-m", "experiments", *command],
            cwd=self.root,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def finish(self, timeout: float) -> tuple[int, str, str]:
        """Wait for the command to end (it waits for its jobs): exit status, stdout, stderr."""
        assert self.process is not None
        out, err = self.process.communicate(timeout=timeout)
        return self.process.returncode, out, err

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def run_dirs(self) -> list[Path]:
        return run_dirs(self.root / "multirun")

    def wait_for_checkpoint(self, count: int, timeout: float) -> list[Path]:
        """`count` runs that have finished an epoch (their checkpoint written) and train on."""
        deadline = time.monotonic() + timeout
        while True:
            done = [r for r in self.run_dirs() if (r / "checkpoints" / "last.ckpt").exists()]
            if len(done) >= count:
                return done[:count]
            assert self.running(), "the sweep ended before its runs finished an epoch"
            assert time.monotonic() < deadline, f"no {count} runs finished an epoch in {timeout:.0f} s"
            time.sleep(0.2)

    def job_of(self, run: Path) -> str:
        """The SLURM job running `run`, as `<array>_<task>`: its lock names the job by its own number, which
        for the array's first task to be numbered is also the array's (and scancel would signal them all)."""
        raw = str(json.loads((run / ".lock").read_text())["slurm_job"])
        ids = dict(line.split() for line in self.squeue("%A %i").splitlines())
        return ids[raw]

    def squeue(self, fields: str) -> str:
        return slurm("squeue", "-h", f"--name={self.name}", "-o", fields, env=self.slurm_env)

    def final_state(self, job: str, timeout: float = 30) -> list[str]:
        """Every start of `job` (sacct -D), once SLURM has recorded its end (a moment after its result)."""
        deadline = time.monotonic() + timeout
        while True:
            states = slurm(
                "sacct", "-D", "-n", "-X", "-P", "-j", job, "-o", "State", env=self.slurm_env
            ).split()
            if (states and states[-1] not in ("RUNNING", "COMPLETING")) or time.monotonic() > deadline:
                return states
            time.sleep(0.5)

    def task_error(self) -> str | None:
        """The first `error:` line a job's task printed to its log."""
        for log in sorted(self.root.glob("multirun/*/*/.submitit/*/*_log.err")):
            for line in log.read_text(errors="replace").splitlines():
                if line.startswith("error: "):
                    return line
        return None

    def clean_up(self) -> None:
        """End the command and its jobs: those that wrote their result end by themselves in a moment,
        the others (a test that failed or timed out) are cancelled."""
        if self.running():
            self.process.kill()
            self.process.communicate()
        else:
            self.wait_for_empty_queue(15)
        subprocess.run(["scancel", f"--name={self.name}"], env={**os.environ, **self.slurm_env}, check=False)
        self.wait_for_empty_queue(30)

    def wait_for_empty_queue(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.squeue("%i"):
            time.sleep(0.5)


@pytest.fixture
def sweep(tmp_path: Path, slurm_env: dict[str, str]) -> Iterator[Sweep]:
    (tmp_path / "home").mkdir()
    sweep = Sweep(tmp_path, slurm_env)
    yield sweep
    sweep.clean_up()  # a failed or timed-out test leaves no job on the shared cluster


def epochs_in(run: Path) -> list[int]:
    with (run / "metrics.csv").open() as f:
        return [int(row["epoch"]) for row in csv.DictReader(f)]


def error_lines(err: str) -> list[str]:
    assert "Traceback" not in err, err
    return [line for line in err.splitlines() if line.startswith("error: ")]


@pytest.mark.timeout(360)
def test_the_degradation_demo_sweep_runs_on_the_cluster_and_reports(sweep):
    sweep.start("experiment=degradation_demo", "arch.depth=8,14", "seed=0", "trainer.max_epochs=1")
    status, out, err = sweep.finish(timeout=330)
    assert status == 0, err
    assert error_lines(err) == []
    runs = sweep.run_dirs()
    assert [r.name.rsplit("-", 1)[0] for r in runs] == [
        "plain14-digits-s0",
        "plain8-digits-s0",
        "resnet14-digits-s0",
        "resnet8-digits-s0",
    ]
    for run in runs:
        assert summary(run)["status"] == "completed" and epochs_in(run) == [0]
        assert f"{run}: completed (SLURM job " in err + out  # the launcher says so as each job ends
        assert not (run / ".lock").exists()
    (sweep_dir,) = {run.parent for run in runs}
    report = run_cli("report", str(sweep_dir), "--logger", "none", cwd=sweep.root, env=sweep.env, timeout=300)
    assert report.returncode == 0, report.stderr
    with (sweep_dir / "report" / "runs.csv").open() as f:
        assert sorted((row["arch"], row["depth"], row["status"]) for row in csv.DictReader(f)) == [
            ("plain", "14", "completed"),
            ("plain", "8", "completed"),
            ("resnet", "14", "completed"),
            ("resnet", "8", "completed"),
        ]


@pytest.mark.timeout(360)
def test_a_requeued_job_and_a_timed_out_one_resume_from_their_checkpoints(sweep):
    # timeout_min <= 10: submitit takes every USR2 for the time-limit warning (not a preemption)
    sweep.start(
        "arch=resnet",
        "arch.depth=8",
        "dataset=digits",
        "seed=1,2",
        "trainer.max_epochs=15",
        "hydra.launcher.timeout_min=10",
    )
    requeued, warned = sweep.wait_for_checkpoint(2, timeout=180)
    requeued_job, warned_job = sweep.job_of(requeued), sweep.job_of(warned)
    # what an administrator's (or a preempting job's) requeue does: SIGTERM, then the job queues again
    slurm("scontrol", "requeue", requeued_job, env=sweep.slurm_env)
    # what SLURM sends signal_delay_s before a job's time limit (sbatch --signal=USR2@...), to the job's
    # steps: submitit checkpoints the launcher's call and requeues the job itself
    slurm("scancel", "--signal=USR2", warned_job, env=sweep.slurm_env)
    status, _out, err = sweep.finish(timeout=300)
    assert status == 0, err
    assert error_lines(err) == []
    for run in (requeued, warned):
        record = summary(run)
        assert record["status"] == "completed" and record["epochs"] == 15
        assert epochs_in(run) == list(range(15)), "every epoch once, the re-run ones' first rows dropped"
        assert "resuming from " in (run / "train.log").read_text(), "it started over instead of resuming"
    for job in (requeued_job, warned_job):
        assert sweep.final_state(job) == ["REQUEUED", "COMPLETED"], job
    (log,) = sweep.root.glob(f"multirun/*/*/.submitit/{warned_job}/*_log.out")
    # submitit's own handling of the time-limit warning: it checkpoints the call and requeues the job
    assert "this job is timed-out" in log.read_text() and f"Requeued job {warned_job}" in log.read_text()


@pytest.mark.timeout(300)
def test_a_job_killed_hard_and_requeued_takes_over_its_runs_lock(sweep):
    # a crashed node or the kernel's OOM killer: the run's process dies at once (its lock stays), and the
    # cluster requeues the job, which starts again with SLURM_RESTART_COUNT=1
    sweep.start("arch=resnet", "arch.depth=8", "dataset=digits", "seed=5", "trainer.max_epochs=15")
    (run,) = sweep.wait_for_checkpoint(1, timeout=180)
    job, holder = sweep.job_of(run), json.loads((run / ".lock").read_text())
    os.kill(holder["pid"], signal.SIGKILL)
    slurm("scontrol", "requeue", job, env=sweep.slurm_env)
    status, _out, err = sweep.finish(timeout=240)
    assert status == 0, err
    assert summary(run)["status"] == "completed" and epochs_in(run) == list(range(15))
    (log,) = sweep.root.glob(f"multirun/*/*/.submitit/{job}/*_log.out")
    assert f"the last holder (process {holder['pid']} on " in log.read_text(), (
        "the dead holder's lock was not taken"
    )
    assert "resuming from " in (run / "train.log").read_text()


@pytest.mark.timeout(300)
def test_a_cancelled_job_fails_its_run_and_the_sweep_finishes_the_others(sweep):
    sweep.start("arch=resnet", "arch.depth=8", "dataset=digits", "seed=3,4", "trainer.max_epochs=10")
    (cancelled,) = sweep.wait_for_checkpoint(1, timeout=180)
    job = sweep.job_of(cancelled)
    slurm("scancel", job, env=sweep.slurm_env)
    status, _out, err = sweep.finish(timeout=240)
    assert status == 1, err
    (line,) = error_lines(err)
    assert line.startswith(f"error: {cancelled}: SLURM job ") and " ended CANCELLED" in line, line
    (other,) = [r for r in sweep.run_dirs() if r != cancelled]
    assert summary(other)["status"] == "completed" and epochs_in(other) == list(range(10))


@pytest.mark.timeout(240)
def test_ddp_over_two_slurm_tasks_is_one_run(sweep):
    sweep.start(
        "trainer=ddp",
        "trainer.devices=2",
        "arch=resnet",
        "arch.depth=8",
        "dataset=digits",
        "trainer.max_epochs=2",
    )
    deadline = time.monotonic() + 200
    while sweep.running():
        # a rank that refuses leaves its peer waiting for it in DDP's set-up: fail now, not at the timeout
        if error := sweep.task_error():
            pytest.fail(f"a task of the DDP job refused: {error}")
        assert time.monotonic() < deadline, "the DDP sweep did not end in 200 s"
        time.sleep(0.5)
    status, _out, err = sweep.finish(timeout=10)
    assert status == 0, err
    (run,) = sweep.run_dirs()
    assert [p.parent for p in sweep.root.rglob("summary.json")] == [run]
    record = summary(run)
    assert record["status"] == "completed" and record["epochs"] == 2 and epochs_in(run) == [0, 1]
    logs = {p.name: p.read_text() for p in sweep.root.glob("multirun/*/*/.submitit/*/*_log.*")}
    both = "\n".join(logs.values())
    # Lightning's SLURM environment: the two SLURM tasks are its two ranks (it starts no processes itself)
    assert "GLOBAL_RANK: 0, MEMBER: 1/2" in both and "GLOBAL_RANK: 1, MEMBER: 2/2" in both
    assert sorted(name.split("_", 1)[1] for name in logs if name.endswith("_log.out")) == [
        "0_log.out",
        "1_log.out",
    ]


@pytest.mark.timeout(180)
def test_a_run_that_fails_in_its_job_says_why_in_one_line(sweep):
    sweep.start("arch=resnet", "arch.depth=8,9", "dataset=digits", "trainer.max_epochs=1")
    status, _out, err = sweep.finish(timeout=150)
    assert status == 1, err
    (line,) = error_lines(err)
    (completed,) = sweep.run_dirs()
    assert completed.name.startswith("resnet8-") and summary(completed)["status"] == "completed"
    failed = completed.parent / completed.name.replace("resnet8-", "resnet9-").rsplit("-", 1)[0]
    assert line.startswith(f"error: {failed}-") and "depth must be 6n+2, got 9" in line, line


@pytest.mark.timeout(120)
def test_a_sweep_the_cluster_cannot_run_is_refused_in_one_line(sweep):
    # the node has 2 CPUs (and no GPU): sbatch refuses, and the sweep leaves nothing behind
    sweep.start("arch=resnet", "arch.depth=8", "dataset=digits", "hydra.launcher.cpus_per_task=64")
    status, _out, err = sweep.finish(timeout=100)
    assert status == 2
    (line,) = err.strip().splitlines()
    assert line.startswith("error: slurm refused the sweep: ") and "More processors requested" in line, line
    assert not (sweep.root / "multirun").exists()
