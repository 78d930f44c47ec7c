"""The command line: help, config composition of every option, and one clear line for every bad input,
fast, with nothing written."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
import torch
from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from omegaconf import OmegaConf

from experiments import rundir, settings, specs
from experiments.__main__ import COMMANDS
from experiments.build import build_datamodule, build_model
from experiments.config import CONF_DIR, compose, register_presets
from experiments.plan import Subject
from experiments.sweep import SweepWatch
from tests.helpers import clean_env, run_cli

FAMILIES = sorted(p.stem for p in (CONF_DIR / "arch").glob("*.yaml"))
EXPERIMENTS = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))
DATASETS = sorted(p.stem for p in (CONF_DIR / "dataset").glob("*.yaml"))


def test_help_lists_every_command(workdir):
    result = run_cli("--help", cwd=workdir)
    assert result.returncode == 0
    for command in COMMANDS:
        assert f"\n  {command} " in result.stdout


def test_unknown_command_is_one_line(cli):
    result = cli("fit")
    assert result.status == 2
    assert (
        result.error_line()
        == f"error: unknown command 'fit'; valid: {', '.join(COMMANDS)} (see experiments --help)"
    )


def test_an_unknown_or_incomplete_option_is_one_line(cli, workdir):
    for args, expected in {
        ("--bogus", "arch=resnet20"): "error: unknown option '--bogus'",
        ("--cfg",): "error: argument --cfg/-c: expected one argument",
    }.items():
        result = cli("train", *args)
        assert result.status == 2 and result.out == ""
        assert result.err == f"{expected} (experiments train --help lists the options)\n"
    assert list(workdir.iterdir()) == [workdir / "home"]


def test_help_into_a_closed_pipe_says_nothing(workdir):
    """`experiments train --help | head -1`: the reader goes away, and no error is printed about it."""
    command = [sys.executable, "-m", "experiments", "train", "--help"]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=workdir) as process:
        process.stdout.close()
        assert process.stderr.read() == b"" and process.wait(60) == 141


def test_train_help_and_cfg_are_hydras(cli, workdir):
    helped = cli("train", "--help")
    assert helped.status == 0 and "experiments train" in helped.out and "arch: " in helped.out
    assert "resnet56" in helped.out and "densenet_bc190" in helped.out  # the presets are arch options
    printed = cli("train", "--cfg", "job", "arch=densenet_bc100", "arch.memory_efficient=true")
    assert printed.status == 0, printed.err
    config = OmegaConf.create(printed.out)
    assert config.arch.name == "densenet_bc" and config.arch.depth == 100 and config.arch.memory_efficient
    assert list(workdir.iterdir()) == [workdir / "home"]


@pytest.mark.slow  # seconds each: run by make test-slow
def test_every_preset_is_an_arch_option_that_builds_its_net():
    """One source: `arch=<preset>` composes to the net `create_model(<preset>)` builds (on the meta device,
    datasets' shapes in turn), and so does a family spelt out (`arch=densenet arch.form=imagenet ...`)."""
    shapes = ["digits", "cifar100", "mnist", "synthetic"]
    register_presets()
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        for i, name in enumerate(list(specs.PRESETS)):
            cfg = hydra_compose("train", [f"arch={name}", f"dataset={shapes[i % len(shapes)]}"])
            subject = settings.check(cfg).subject
            datamodule = build_datamodule(subject)
            with torch.device("meta"):
                model = build_model(subject, datamodule)
            expected = specs.resolve(name, image_size=datamodule.image_size)
            assert model.spec == expected and model.blocks()[-1].name in ("fc", "classifier"), name
        spelt_out = hydra_compose("train", ["arch=densenet", "arch.form=imagenet", "arch.depth=121"])
    with torch.device("meta"):
        spelt_out = Subject.of(spelt_out)
        assert build_model(spelt_out, build_datamodule(spelt_out)).spec == specs.resolve("densenet121")


def test_a_run_directory_is_named_as_comet_and_the_report_name_the_run():
    """The directory's name starts with the net's label, also for a family spelt out as another net (a
    resnet without shortcuts is a plain net); a config that cannot run is named as written."""
    named = {
        ("arch=resnet", "arch.shortcut=none"): "plain56",
        ("arch=densenet", "arch.compression=0.5"): "densenet_c40",
        ("arch=densenet_bc", "arch.compression=1"): "densenet_b100",
        ("arch=densenet_bc100",): "densenet_bc100",
        ("arch=resnet20",): "resnet20",
        ("arch=resnet", "arch.depth=57"): "resnet57",
    }
    for overrides, label in named.items():
        cfg = compose("train", [*overrides, "dataset=digits"])
        assert rundir.run_name(_root_=cfg) == f"{label}-digits-s0-{rundir.config_hash(cfg)}", overrides
        if "57" not in label:
            with torch.device("meta"):
                subject = Subject.of(cfg)
                spec = build_model(subject, build_datamodule(subject)).spec
            assert f"{spec.label}{spec.depth}" == label


def test_every_dataset_composes_with_each_family():
    register_presets()
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        for dataset in DATASETS:
            for family in FAMILIES:
                cfg = hydra_compose("train", [f"arch={family}", f"dataset={dataset}"])
                assert cfg.arch.name == family and cfg.dataset.name == dataset


def test_every_experiment_preset_composes_and_builds():
    """A preset composes with the first value of each of its swept keys, passes the checks, and its net
    builds (a preset for the user's own images needs their folder: it composes)."""
    register_presets()
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        for experiment in EXPERIMENTS:
            hydra = OmegaConf.load(CONF_DIR / "experiment" / f"{experiment}.yaml").get("hydra", {})
            params = (hydra.get("sweeper", {}).get("params") or {}).items()
            swept = [f"{key}={str(values).split(',')[0]}" for key, values in params]
            cfg = hydra_compose("train", [f"experiment={experiment}", *swept])
            if cfg.dataset.name == "imagefolder":
                continue
            subject = settings.check(cfg).subject
            with torch.device("meta"):
                model = build_model(subject, build_datamodule(subject))
            assert model.spec.depth == cfg.arch.depth, experiment


def sweep_size(params: dict[str, str], task: list[str]) -> int:
    config = OmegaConf.create(
        {
            "hydra": {"sweeper": {"params": params}, "overrides": {"task": task}, "sweep": {"dir": "unused"}},
            "seed": 0,
        }
    )
    SweepWatch().on_multirun_start(config)
    return SweepWatch.size


def test_sweep_size_counts_runs_as_the_basic_sweeper_makes_them():
    degradation = {"arch": "plain,resnet", "arch.depth": "20,32,44,56,110"}
    assert sweep_size(degradation, ["experiment=degradation"]) == 10
    assert sweep_size(degradation, ["experiment=degradation", "seed=0,1,2"]) == 30
    assert sweep_size(degradation, ["experiment=degradation", "arch=resnet"]) == 5  # replaces the sweep
    assert sweep_size({}, ["arch.depth=20,56", "arch=plain,resnet", "arch.depth=110"]) == 2
    SweepWatch.clean_up()


NO_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message for a missing GPU")
BAD_INPUT = {
    "unknown arch": (["arch=resnet57"], "unknown arch option 'resnet57'; valid: densenet, densenet100, "),
    "unknown dataset": (["dataset=cifar11"], "unknown dataset option 'cifar11'; valid: cifar10, cifar100, "),
    "unknown trainer": (
        ["trainer=tpu"],
        "unknown trainer option 'tpu'; valid: cpu, ddp, debug, default, gpu",
    ),
    "misspelled key": (["arch.dpeth=20"], "unknown config key 'arch.dpeth'; did you mean 'arch.depth'?"),
    "misspelled group": (["archh=resnet"], "unknown config key 'archh'; did you mean 'arch'?"),
    "unknown key": (["zzz=1"], "unknown config key 'zzz': misspelled? (--cfg job lists the keys; +zzz=VALUE"),
    "impossible depth": (["arch=resnet", "arch.depth=21"], "6n+2, got 21; nearest valid: 20, 26"),
    "impossible densenet_bc depth": (["arch=densenet_bc", "arch.depth=101"], "6n+4, got 101"),
    "depth not a number": (
        ["arch.depth=abc"],
        "arch.depth must be a positive integer (weighted layers), got 'abc'",
    ),
    "seed not a number": (["seed=abc"], "seed must be an integer from 0 to 4294967295, got 'abc'"),
    "negative seed": (["seed=-1"], "seed must be an integer from 0 to 4294967295, got -1"),
    "batch size 0": (["dataset.batch_size=0"], "dataset.batch_size must be a positive integer, got 0"),
    "negative batch size": (
        ["dataset.batch_size=-8"],
        "dataset.batch_size must be a positive integer, got -8",
    ),
    "one value per channel": (
        ["dataset=synthetic", "dataset.image_size=1", "dataset.batch_size=1"],
        "dataset.batch_size=1 with 1 px images leaves batch norm one value per channel",
    ),
    "images too small": (
        ["arch=densenet121", "dataset.image_size=4", "dataset=synthetic"],
        "needs images of at least 8 px",
    ),
    "no epochs": (["trainer.max_epochs=0"], "trainer.max_epochs must be an integer >= 1, got 0"),
    "lightning's deterministic flag": (
        ["+trainer.deterministic=true"],
        "trainer.deterministic: set deterministic=True instead (it also keeps the steps eager",
    ),
    "graph-recording compile, deterministic": (
        ["deterministic=true", "compile=reduce-overhead"],
        "compile=reduce-overhead records CUDA graphs, which deterministic=true does not trust",
    ),
    "lr not a number": (["optim.lr=nan"], "optim.lr must be a finite number > 0, got nan"),
    "infinite lr": (["optim.lr=inf"], "optim.lr must be a finite number > 0, got inf"),
    "imagefolder without path": (["dataset=imagefolder"], "dataset.path must be set"),
    "missing imagefolder path": (
        ["dataset=imagefolder", "dataset.path=/no/such"],
        "/no/such/train is not a folder",
    ),
    "unknown accelerator": (["trainer.accelerator=tpu"], "trainer.accelerator must be auto, cpu, gpu, cuda"),
    "gpu that is not there": (["trainer=gpu"], "no CUDA GPU is visible here; use trainer=cpu"),
    "missing checkpoint": (["ckpt_path=/no/such.ckpt"], "ckpt_path: /no/such.ckpt does not exist"),
    "checkpoint a folder": (["ckpt_path=/"], "ckpt_path: / is a folder, not a checkpoint file"),
    "unknown compile mode": (["compile=fastest"], "compile must be false, true or a torch.compile mode"),
    "cuda graph on a cpu": (["cuda_graph=true"], "cuda_graph=true needs a CUDA GPU; on a CPU leave it false"),
    "cuda graph not a bool": (["cuda_graph=maybe"], "cuda_graph must be auto, true or false, got 'maybe'"),
    "unknown precision": (["precision=fp8"], "precision must be one of auto, 32-true"),
    "unknown optimiser": (["optim._target_=torch.optim.Nope"], "optim: Error loading 'torch.optim.Nope'"),
    "api key in the config": (
        ["+logger.api_key=s3cret"],
        "logger.api_key: a secret in the config would be written to disk",
    ),
    "api key as a config key": (["logger.api_key=s3cret"], "logger.api_key: a secret in the config would"),
    "api key in hydra's environment": (
        ["+hydra.job.env_set.COMET_API_KEY=s3cret"],
        "hydra.job.env_set.COMET_API_KEY: a secret in the config would be written to disk",
    ),
    "malformed override": (
        ["arch.depth=[1"],
        "cannot parse override 'arch.depth=[1': no viable alternative at input '[1' (the grammar: https",
    ),
}
CASES = [pytest.param(case, marks=NO_GPU if "gpu" in case or "cuda" in case else ()) for case in BAD_INPUT]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_line_nonzero_and_writes_nothing(case, cli, workdir):
    overrides, expected = BAD_INPUT[case]
    result = cli("train", "dataset=digits", *overrides, "logger=none")
    assert result.status != 0
    assert expected in result.error_line()
    assert sorted(p.name for p in workdir.iterdir()) == ["home"]


def test_a_refused_sweep_writes_nothing(cli, workdir):
    result = cli("train", "-m", "arch=resnet", "arch.depth=21,27", "dataset=digits", "logger=none")
    assert result.status == 1 and result.err.startswith(
        "error: arch: resnet (cifar form, basic blocks) depth"
    )
    assert "error: 2 runs failed:" in result.err
    assert sorted(p.name for p in workdir.iterdir()) == ["home"]
    secret = cli("train", "-m", "seed=0,1", "+logger.api_key=s3cret", "dataset=digits")
    assert "logger.api_key: a secret" in secret.error_line()
    assert sorted(p.name for p in workdir.iterdir()) == ["home"]


@pytest.mark.parametrize(
    ("setting", "expected"),
    [
        ("profile.batch_size=-1", "profile.batch_size must be a positive integer or null, got -1"),
        ("profile.steps=0", "profile.steps must be an integer >= 1, got 0"),
        (
            "profile.batch_size=1 dataset=synthetic dataset.image_size=1",
            "profile.batch_size=1 with 1 px images leaves batch norm one value per channel",
        ),
    ],
)
def test_bad_profile_settings_are_one_line(setting, expected, cli):
    assert expected in cli("profile", "dataset=digits", *setting.split(), "logger=none").error_line()


def test_a_corrupt_checkpoint_is_one_line(cli, workdir):
    corrupt = workdir / "corrupt.ckpt"
    corrupt.write_bytes(b"PK\x03\x04 this is not a checkpoint")
    result = cli("train", "dataset=digits", f"ckpt_path={corrupt}", "logger=none")
    assert result.status == 1
    assert f"ckpt_path: {corrupt} is not a PyTorch checkpoint" in result.error_line()


def test_a_bug_of_ours_without_a_message_is_named_by_its_type(cli, monkeypatch):
    def broken(*args):
        raise NotImplementedError

    monkeypatch.setattr("experiments.app.run_job", broken)
    result = cli("train", "dataset=digits", "logger=none")
    assert result.status == 1
    assert result.error_line() == "error: NotImplementedError (HYDRA_FULL_ERROR=1 shows the traceback)"


def test_a_refusal_comes_within_seconds_without_importing_torch(workdir):
    """The whole command line, as a user types it, in a subprocess: one line on stderr, status 1, and the
    settings checked before torch (or Lightning) is imported."""
    code = (
        "import sys; from experiments.__main__ import main; "
        "status = main(['train', 'arch=resnet', 'arch.depth=21']); "
        "assert 'torch' not in sys.modules and 'pytorch_lightning' not in sys.modules, 'imported'; "
        "sys.exit(status)"
    )
    started = time.perf_counter()
    import subprocess

    result = subprocess.run(
        [sys.executable, "-c", code], cwd=workdir, env=clean_env(workdir), capture_output=True, text=True
    )
    elapsed = time.perf_counter() - started
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip().splitlines() == [
        "error: arch: resnet (cifar form, basic blocks) depth must be 6n+2, got 21; nearest valid: 20, 26"
    ]
    assert elapsed < 5, elapsed  # about a second on a laptop; the bound leaves room for a busy CI machine
    assert sorted(p.name for p in workdir.iterdir()) == ["home"]


def test_dataset_absent_offline_names_the_files_and_the_alternatives(cli, workdir, monkeypatch):
    # A proxy that refuses connections: offline even on a machine with internet access.
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")
    monkeypatch.setenv("https_proxy", "http://127.0.0.1:9")
    result = cli("train", "dataset=cifar10", "trainer.max_epochs=1", "logger=none")
    assert result.status == 1
    line = result.error_line()
    assert "cifar10 is not in" in line and "cifar-10-batches-py" in line
    assert "dataset=digits or dataset=synthetic" in line
