"""Test helpers: the CLI in-process and in a subprocess, Comet's offline archives, run directories."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures"
# a user's environment has none of these: no Comet key or server, no Hydra or project switches
FOREIGN_ENV = (
    "COMET_API_KEY",
    "COMET_URL_OVERRIDE",
    "COMET_WORKSPACE",
    "COMET_PROJECT_NAME",
    "HYDRA_FULL_ERROR",
)


COMET_KEY = "LeakCanaryKey7Qm2Zp9Wd4Rt6Yv8"  # distinctive, so that a grep finds any copy of it


def refused_url() -> str:
    """A Comet URL (COMET_URL_OVERRIDE) on a local port where nothing listens."""
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{free.getsockname()[1]}/clientlib/"


def clean_env(root: Path, **extra: str) -> dict[str, str]:
    """The environment of a user with no Comet key, no Comet config file and no datasets, for a subprocess."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COMET_", "HYDRA_", "EXPERIMENTS_"))}
    env.update(HOME=str(root / "home"), EXPERIMENTS_DATA_DIR=str(root / "data"), **extra)
    return env


def run_cli(*args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 600):
    """`python -m experiments ARGS` in `cwd` in a subprocess, as a user types it."""
    return subprocess.run(
        [sys.executable, "-m", "experiments", *args],
        cwd=cwd,
        env=env if env is not None else clean_env(cwd),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@dataclass
class Result:
    """What an in-process command returned and printed."""

    status: int
    out: str
    err: str

    def error_line(self) -> str:
        """The one line a refused command prints (and nothing else: no traceback)."""
        assert "Traceback" not in self.out + self.err, self.err
        (line,) = self.err.strip().splitlines()
        assert line.startswith("error: "), line
        return line


def archive_messages(archive: Path) -> list[dict]:
    """The messages of a Comet offline archive (a zip holding messages.json, one JSON message per line)."""
    with zipfile.ZipFile(archive) as z:
        return [json.loads(line) for line in z.read("messages.json").decode().splitlines()]


def archive_metrics(archive: Path) -> dict[str, list[float]]:
    metrics: dict[str, list[float]] = {}
    for message in archive_messages(archive):
        if message["type"] == "metric_msg":
            metric = message["payload"]["metric"]
            metrics.setdefault(metric["metricName"], []).append(metric["metricValue"])
    return metrics


def archive_params(archive: Path) -> dict[str, object]:
    return {
        m["payload"]["param"]["paramName"]: m["payload"]["param"]["paramValue"]
        for m in archive_messages(archive)
        if m["type"] == "parameter_msg" and "param" in m["payload"]
    }


def run_dirs(root: Path) -> list[Path]:
    """Every run directory under `root` (one holding .hydra/), sorted."""
    return sorted(p.parent for p in root.rglob(".hydra"))


def summary(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())
