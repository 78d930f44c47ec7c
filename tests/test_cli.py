"""The command line: help, config composition of every option, and one clear line for every bad input."""

from __future__ import annotations

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from experiments.__main__ import main
from experiments.app import CONF_DIR
from experiments.build import build_datamodule, build_model
from experiments.sweep import SweepProgress
from tests.helpers import clean_env, run_cli

ARCHS = sorted(p.stem for p in (CONF_DIR / "arch").glob("*.yaml"))
EXPERIMENTS = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))
DATASETS = sorted(p.stem for p in (CONF_DIR / "dataset").glob("*.yaml"))


def test_help_lists_the_commands(workdir):
    result = run_cli("--help", cwd=workdir)
    assert result.returncode == 0
    for command in ("train", "profile", "report"):
        assert f"  {command}" in result.stdout


def test_unknown_command_is_one_line(workdir):
    result = run_cli("fit", cwd=workdir)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: unknown command 'fit'; valid: train, profile, report (see experiments --help)"
    ]


def test_train_help_and_cfg_are_hydras(workdir):
    helped = run_cli("train", "--help", cwd=workdir)
    assert helped.returncode == 0
    assert "experiments train" in helped.stdout and "arch: " in helped.stdout
    printed = run_cli(
        "train", "--cfg", "job", "arch=densenet_bc100", "arch.memory_efficient=true", cwd=workdir
    )
    assert printed.returncode == 0, printed.stderr
    config = OmegaConf.create(printed.stdout)
    assert config.arch.name == "densenet_bc" and config.arch.depth == 100 and config.arch.memory_efficient
    assert not (workdir / "outputs").exists()


@pytest.mark.parametrize("dataset", DATASETS)
def test_every_arch_composes_with_every_dataset(dataset):
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        for arch in ARCHS:
            cfg = compose("train", [f"arch={arch}", f"dataset={dataset}"])
            assert cfg.arch.name in ("resnet", "plain", "densenet", "densenet_bc")
            assert isinstance(cfg.arch.depth, int) and cfg.dataset.name == dataset


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_preset_composes_and_builds(experiment):
    """A preset composes with the first value of each of its swept keys, and its model builds."""
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        preset = compose("train", [f"experiment={experiment}"], return_hydra_config=True)
        swept = [
            f"{key}={str(values).split(',')[0]}"
            for key, values in (preset.hydra.sweeper.params or {}).items()
        ]
        cfg = compose("train", [f"experiment={experiment}", *swept])
    with torch.device("meta"):
        model = build_model(cfg, build_datamodule(cfg))
    assert model.depth == cfg.arch.depth


def sweep_size(params: dict[str, str], task: list[str]) -> int:
    config = OmegaConf.create({"hydra": {"sweeper": {"params": params}, "overrides": {"task": task}}})
    SweepProgress().on_multirun_start(config)
    return SweepProgress.size


def test_sweep_size_counts_runs_as_the_basic_sweeper_makes_them():
    degradation = {"arch": "plain,resnet", "arch.depth": "20,32,44,56,110"}
    assert sweep_size(degradation, ["experiment=degradation"]) == 10
    assert sweep_size(degradation, ["experiment=degradation", "seed=0,1,2"]) == 30
    assert sweep_size(degradation, ["experiment=degradation", "arch=resnet"]) == 5  # replaces the sweep
    assert sweep_size({}, ["arch.depth=20,56", "arch=plain,resnet", "arch.depth=110"]) == 2


SHAPES = ["digits", "cifar100", "mnist", "synthetic"]  # 1 channel 8 px, 100 classes, 28 px, 3 channels 32 px


def test_every_arch_builds_for_a_datasets_shape():
    """Each arch once, the datasets' shapes taken in turn (on the meta device: no memory, little time)."""
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        for i, arch in enumerate(ARCHS):
            cfg = compose("train", [f"arch={arch}", f"dataset={SHAPES[i % len(SHAPES)]}"])
            datamodule = build_datamodule(cfg)
            with torch.device("meta"):
                model = build_model(cfg, datamodule)
            assert model.head.fc.out_features == datamodule.num_classes
            assert (model.arch.startswith("densenet"), model.depth) == (
                arch.startswith("densenet"),
                cfg.arch.depth,
            )


BAD_INPUT = {
    "unknown arch": (["arch=resnet57"], "unknown arch option 'resnet57'; valid: densenet, "),
    "unknown dataset": (["dataset=cifar11"], "unknown dataset option 'cifar11'; valid: cifar10, cifar100, "),
    "unknown trainer": (
        ["trainer=tpu"],
        "unknown trainer option 'tpu'; valid: cpu, ddp, debug, default, gpu",
    ),
    "misspelled key": (["arch.dpeth=20"], "unknown config key 'arch.dpeth': misspelled?"),
    "impossible depth": (["arch=resnet", "arch.depth=21"], "6n+2, got 21; nearest valid: 20, 26"),
    "impossible densenet_bc depth": (["arch=densenet_bc", "arch.depth=101"], "6n+4, got 101"),
    "batch size 0": (["dataset.batch_size=0"], "dataset.batch_size must be a positive integer, got 0"),
    "negative batch size": (
        ["dataset.batch_size=-8"],
        "dataset.batch_size must be a positive integer, got -8",
    ),
    "no epochs": (["trainer.max_epochs=0"], "trainer.max_epochs must be an integer >= 1, got 0"),
    "imagefolder without path": (["dataset=imagefolder"], "dataset.path must be set"),
    "missing imagefolder path": (
        ["dataset=imagefolder", "dataset.path=/no/such"],
        "/no/such/train is not a folder",
    ),
    "gpu that is not there": (["trainer=gpu"], "no CUDA GPU is visible here; use trainer=cpu"),
    "missing checkpoint": (["ckpt_path=/no/such.ckpt"], "ckpt_path: /no/such.ckpt does not exist"),
    "unknown compile mode": (["compile=fastest"], "compile must be false, true or a torch.compile mode"),
    "cuda graph on a cpu": (["cuda_graph=true"], "cuda_graph=true needs a CUDA GPU; on a CPU leave it false"),
    "cuda graph not a bool": (["cuda_graph=maybe"], "cuda_graph must be auto, true or false, got 'maybe'"),
    "unknown optimiser": (["optim._target_=torch.optim.Nope"], "optim: Error loading 'torch.optim.Nope'"),
    "malformed override": (
        ["arch.depth=[1"],
        "cannot parse override 'arch.depth=[1': no viable alternative at input '[1' (the grammar: https",
    ),
}


def one_error_line(capsys) -> str:
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    (line,) = err.strip().splitlines()
    assert line.startswith("error: ")
    return line


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message for a missing GPU")
@pytest.mark.parametrize("case", BAD_INPUT, ids=list(BAD_INPUT))
def test_bad_input_is_one_line_and_nonzero(case, tmp_path, monkeypatch, capsys):
    # In-process for speed (the CLI's own main(), as the console script calls it); subprocess runs of the
    # same path are below.
    monkeypatch.chdir(tmp_path)
    overrides, expected = BAD_INPUT[case]
    assert main(["train", "dataset=digits", *overrides, "logger=none"]) != 0
    assert expected in one_error_line(capsys)


@pytest.mark.parametrize(
    ("setting", "expected"),
    [
        ("profile.batch_size=-1", "profile.batch_size must be a positive integer or null, got -1"),
        ("profile.batch_size=0", "profile.batch_size must be a positive integer or null, got 0"),
        ("profile.steps=0", "profile.steps must be >= 1 and profile.warmup_steps >= 0, got 0 and 1"),
    ],
)
def test_bad_profile_settings_are_one_line(setting, expected, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["profile", "dataset=digits", setting, "logger=none"]) != 0
    assert expected in one_error_line(capsys)


def test_bad_input_in_a_subprocess(workdir):
    result = run_cli("train", "arch=resnet", "arch.depth=21", cwd=workdir)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "error: arch: resnet (cifar form, basic blocks) depth must be 6n+2, got 21; nearest valid: 20, 26"
    ]


def test_corrupt_checkpoint_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    corrupt = tmp_path / "corrupt.ckpt"
    corrupt.write_bytes(b"PK\x03\x04 this is not a checkpoint")
    assert main(["train", "dataset=digits", f"ckpt_path={corrupt}", "logger=none"]) == 1
    assert f"checkpoint {corrupt} is unreadable or not a Lightning checkpoint" in one_error_line(capsys)


def test_dataset_absent_offline_names_the_files_and_the_alternatives(workdir):
    # A proxy that refuses connections: offline even on a machine with internet access.
    env = clean_env(workdir, http_proxy="http://127.0.0.1:9", https_proxy="http://127.0.0.1:9")
    result = run_cli("train", "dataset=cifar10", "trainer.max_epochs=1", "logger=none", cwd=workdir, env=env)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert "cifar10 is not in" in line and "cifar-10-batches-py" in line
    assert "dataset=digits or dataset=synthetic" in line
