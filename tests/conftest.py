"""Fixtures: a user's working directory, the CLI run in-process in it, and runs trained once per session."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from experiments.__main__ import main
from tests.helpers import COMET_KEY, FOREIGN_ENV, Result, refused_url, run_dirs

Cli = Callable[..., Result]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked `gpu` run only where a CUDA GPU is; each other test runs everywhere."""
    import torch

    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs a CUDA GPU")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)


def _as_user(mp: pytest.MonkeyPatch, root: Path) -> None:
    """Work in `root` as a user with no Comet key and no datasets (only digits and synthetic work)."""
    (root / "home").mkdir(exist_ok=True)
    mp.chdir(root)
    mp.setenv("HOME", str(root / "home"))
    mp.setenv("EXPERIMENTS_DATA_DIR", str(root / "data"))
    for name in FOREIGN_ENV:
        mp.delenv(name, raising=False)


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty directory, the current one, as a user's project folder."""
    _as_user(monkeypatch, tmp_path)
    return tmp_path


@pytest.fixture
def cli(workdir: Path, capsys: pytest.CaptureFixture) -> Cli:
    """`experiments ARGS` in-process in `workdir` (the console script's own main), what it printed."""

    def run(*args: str) -> Result:
        capsys.readouterr()
        status = main(list(args))
        out, err = capsys.readouterr()
        return Result(status, out, err)

    return run


@pytest.fixture(scope="session")
def session_cli(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., str]]:
    """Runs a command in-process in a directory of its own, with `env` set, for fixtures shared by a
    session; it must succeed. Returns what it printed."""

    def run(root: Path, args: list[str], **env: str) -> str:
        printed = io.StringIO()
        with pytest.MonkeyPatch.context() as mp:
            _as_user(mp, root)
            for name, value in env.items():
                mp.setenv(name, value)
            with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(printed):
                status = main(args)
        assert status == 0, (args, printed.getvalue())
        return printed.getvalue()

    yield run


TINY = ["dataset=digits", "trainer.max_epochs=1"]


@pytest.fixture(scope="session")
def keyed_digits_sweep(tmp_path_factory, session_cli) -> tuple[Path, str]:
    """`train -m arch=plain,resnet arch.depth=8,14 dataset=digits trainer.max_epochs=1`, run once, by a user
    with a Comet API key whose server does not answer (each run falls back to offline): its root (the sweep
    is under multirun/) and what it printed."""
    root = tmp_path_factory.mktemp("sweep")
    args = ["train", "-m", "arch=plain,resnet", "arch.depth=8,14", *TINY]
    printed = session_cli(root, args, COMET_API_KEY=COMET_KEY, COMET_URL_OVERRIDE=refused_url())
    assert len(run_dirs(root / "multirun")) == 4
    return root, printed


@pytest.fixture(scope="session")
def digits_sweep(keyed_digits_sweep) -> Path:
    """The root of that sweep."""
    return keyed_digits_sweep[0]


@pytest.fixture(scope="session")
def three_seeds(tmp_path_factory, session_cli) -> Path:
    """`train -m arch=plain,resnet arch.depth=8 seed=0,1,2 dataset=digits trainer.max_epochs=1`, and a lesion
    of each run, once a session: the sweep's directory."""
    root = tmp_path_factory.mktemp("seeds")
    args = ["arch=plain,resnet", "arch.depth=8", "seed=0,1,2", "dataset=digits", "trainer.max_epochs=1"]
    session_cli(root, ["train", "-m", *args, "logger=none", "hydra.sweep.dir=sweep"])
    runs = run_dirs(root / "sweep")
    printed = session_cli(root, ["lesion", "--draws", "2", "--test-images", "100", *map(str, runs)])
    assert "resnet-8 on digits: one block deleted raises the test error by " in printed
    assert "(mean over 3 trained seeds)" in printed or "did not train: seed" in printed
    return root / "sweep"
