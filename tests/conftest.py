"""Fixtures shared by the tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """An empty directory to run the CLI in, as a user's project folder."""
    (tmp_path / "home").mkdir()
    return tmp_path
