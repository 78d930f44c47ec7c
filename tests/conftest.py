"""Fixtures shared by the tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import run_cli


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """An empty directory to run the CLI in, as a user's project folder."""
    (tmp_path / "home").mkdir()
    return tmp_path


@pytest.fixture(scope="session")
def digits_sweep(tmp_path_factory) -> tuple[Path, str]:
    """`train -m arch=plain,resnet arch.depth=20,32 dataset=digits trainer.max_epochs=1`, run once: its
    workdir and stdout."""
    workdir = tmp_path_factory.mktemp("sweep")
    (workdir / "home").mkdir()
    result = run_cli(
        "train",
        "-m",
        "arch=plain,resnet",
        "arch.depth=20,32",
        "dataset=digits",
        "trainer.max_epochs=1",
        cwd=workdir,
    )
    assert result.returncode == 0, result.stderr
    return workdir, result.stdout
