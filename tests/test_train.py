"""Real training runs through the CLI (in-process): the run's record, its Comet archive, sweeps, rerunning."""

from __future__ import annotations

import csv
import json
import zipfile
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from experiments.build import build_module, build_trainer
from experiments.config import compose
from experiments.device import Device, resolve_device
from experiments.models import create_model
from experiments.module import Classifier, lr_factor, share_buffers
from experiments.plan import Plan
from experiments.record import RunRecord
from tests.conftest import TINY
from tests.helpers import archive_messages, archive_metrics, archive_params, run_dirs, summary


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def resnet_run(tmp_path_factory, session_cli) -> Path:
    """`train arch=resnet arch.depth=14 dataset=digits trainer.max_epochs=3`, once for the module's tests."""
    root = tmp_path_factory.mktemp("resnet14")
    session_cli(root, ["train", "arch=resnet", "arch.depth=14", "dataset=digits", "trainer.max_epochs=3"])
    (run,) = run_dirs(root / "outputs")
    return run


def test_run_learns_digits_and_writes_its_record(resnet_run):
    record = RunRecord.from_json(summary(resnet_run))
    assert summary(resnet_run).keys() == RunRecord().to_json().keys()
    assert (record.status, record.arch, record.depth, record.dataset, record.seed) == (
        "completed",
        "resnet",
        14,
        "digits",
        0,
    )
    assert record.params == sum(
        p.numel() for p in create_model("resnet", depth=14, in_channels=1).parameters()
    )
    assert record.epochs == 3 and record.test_error < 0.15 and 0 <= record.train_error <= 1
    assert record.cuda_graph_steps == 0 and record.step_timing == "eager"  # CUDA graphs are for GPUs
    assert record.macs_per_image * 2 == record.flops_per_image
    assert record.precision == "32-true" and record.activation_bytes_at_precision == record.activation_bytes
    assert record.val_loss > 0 and record.wall_time_s > 0
    assert (resnet_run / "checkpoints" / "last.ckpt").stat().st_size > 100_000
    assert (resnet_run / ".hydra" / "config.yaml").exists() and (resnet_run / "train.log").stat().st_size > 0
    assert not (resnet_run / ".lock").exists()


def test_metrics_csv_has_one_row_per_epoch(resnet_run):
    rows = read_csv(resnet_run / "metrics.csv")
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2]
    for column in ("train/loss", "train/acc", "val/loss", "val/acc", "lr", "param_grad_norm/stage1"):
        assert all(float(r[column]) >= 0 for r in rows), column
    assert float(rows[0]["lr"]) == pytest.approx(0.1)
    assert float(rows[-1]["train/loss"]) < float(rows[0]["train/loss"])
    assert list(summary(resnet_run)["param_grad_norms"]) == ["stem", "stage1", "stage2", "stage3", "head"]


def test_comet_archive_holds_the_metrics_and_the_config(resnet_run):
    (archive,) = (resnet_run / "comet").glob("*.zip")
    metrics = archive_metrics(archive)
    assert len(metrics["train/loss"]) == 3 and len(metrics["val/acc"]) == 3
    for key in ("train_error", "val_error", "test_error", "params", "test/acc", "macs_per_image"):
        assert key in metrics, key
    params = archive_params(archive)
    assert params["arch.depth"] == 14 and params["dataset.name"] == "digits" and params["optim.lr"] == 0.1
    assert summary(resnet_run)["comet"] == {"mode": "offline", "archive": str(archive)}
    names = [
        m["payload"]["value"]
        for m in archive_messages(archive)
        if m["type"] == "log_other" and m["payload"]["key"] == "Name"
    ]
    assert names == ["resnet14-digits-s0"]


def test_rerunning_a_completed_run_does_nothing(resnet_run, cli, monkeypatch):
    monkeypatch.chdir(resnet_run.parents[1])
    before = (resnet_run / "summary.json").read_text()
    result = cli("train", "arch=resnet", "arch.depth=14", "dataset=digits", "trainer.max_epochs=3")
    assert result.status == 0, result.err
    assert "already holds this run, completed" in result.out
    assert (resnet_run / "summary.json").read_text() == before
    assert len(list((resnet_run / "comet").glob("*.zip"))) == 1


def test_a_sweep_gives_each_run_its_dir_and_comet_experiment(digits_sweep):
    runs = run_dirs(digits_sweep / "multirun")
    assert [r.name.rsplit("-", 1)[0] for r in runs] == [
        "plain14-digits-s0",
        "plain8-digits-s0",
        "resnet14-digits-s0",
        "resnet8-digits-s0",
    ]
    sweep = runs[0].parent
    keys = set()
    for run in runs:
        (archive,) = (run / "comet").glob("*.zip")
        with zipfile.ZipFile(archive) as z:
            experiment = json.loads(z.read("experiment.json"))
        keys.add(experiment["offline_id"])
        assert f"sweep:{sweep.relative_to(digits_sweep)}" in experiment["tags"]
        assert len(archive_metrics(archive)["train/loss"]) == 1
        assert summary(run)["status"] == "completed" and summary(run)["sweep"] == str(
            sweep.relative_to(digits_sweep)
        )
    assert len(keys) == 4


def test_rerunning_a_sweep_in_its_directory_skips_its_completed_runs(digits_sweep, cli, monkeypatch):
    monkeypatch.chdir(digits_sweep)
    sweep = run_dirs(digits_sweep / "multirun")[0].parent
    before = sorted(p.stat().st_mtime_ns for p in sweep.rglob("summary.json"))
    result = cli("train", "-m", "arch=plain,resnet", "arch.depth=8,14", *TINY, f"hydra.sweep.dir={sweep}")
    assert result.status == 0, result.err
    assert [line for line in result.out.splitlines() if line.startswith("run ")] == [
        f"run {k} of 4" for k in range(1, 5)
    ]
    assert result.out.count("already holds this run, completed") == 4
    assert sorted(p.stat().st_mtime_ns for p in sweep.rglob("summary.json")) == before
    assert len(run_dirs(digits_sweep / "multirun")) == 4


def test_other_loggers(cli, workdir):
    assert cli("train", "arch=resnet", "arch.depth=8", *TINY, "logger=csv").status == 0
    (run,) = run_dirs(workdir / "outputs")
    assert (run / "csv" / "metrics.csv").exists() and not (run / "comet").exists()
    assert len(read_csv(run / "metrics.csv")) == 1
    assert summary(run)["comet"] == {"mode": "disabled"}
    assert (
        cli("train", "arch=resnet", "arch.depth=8", *TINY, "logger=none", "hydra.run.dir=quiet").status == 0
    )
    assert sorted(p.name for p in (workdir / "quiet").iterdir()) == [
        ".hydra",
        "checkpoints",
        "metrics.csv",
        "signals.csv",
        "summary.json",
        "train.log",
    ]


def test_training_on_the_whole_training_set_skips_validation(cli, workdir):
    """val_size 0, as Huang et al. train on all 50k CIFAR images: no validation loop, the test at the end."""
    assert (
        cli("train", "arch=densenet_bc", "arch.depth=10", *TINY, "dataset.val_size=0", "logger=none").status
        == 0
    )
    (run,) = run_dirs(workdir / "outputs")
    record = summary(run)
    assert (
        record["status"] == "completed" and record["val_error"] is None and record["test_error"] is not None
    )
    assert "val/acc" not in read_csv(run / "metrics.csv")[0]


@pytest.mark.parametrize(
    "overrides",
    [
        [
            "arch=densenet121",
            "dataset=synthetic",
            "dataset.train_size=32",
            "dataset.val_size=16",
            "dataset.test_size=16",
            "dataset.batch_size=16",
        ],
        pytest.param(["arch=densenet121", "dataset=digits"], marks=pytest.mark.slow),
        pytest.param(
            ["arch=resnet1202", "dataset=synthetic", "dataset.train_size=64", "dataset.batch_size=32"],
            marks=pytest.mark.slow,
        ),
    ],
    ids=["densenet121-small-synthetic", "densenet121-digits", "resnet1202-synthetic"],
)
def test_big_nets_train_for_an_epoch(overrides, cli, workdir):
    result = cli("train", *overrides, "trainer.max_epochs=1", "logger=none")
    assert result.status == 0, result.err
    (run,) = run_dirs(workdir / "outputs")
    assert summary(run)["status"] == "completed" and summary(run)["epochs"] == 1


def test_learning_rate_schedules():
    he2016 = {"total_steps": 64_000, "name": "multistep", "milestones": [0.5, 0.75]}
    assert [
        lr_factor(step, **he2016) for step in (0, 31_999, 32_000, 47_999, 48_000, 63_999)
    ] == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])
    assert (
        lr_factor(399, warmup_steps=400, **he2016) == 0.1 and lr_factor(400, warmup_steps=400, **he2016) == 1
    )
    assert lr_factor(5000, warming=True, **he2016) == 0.1
    cosine = {"total_steps": 100, "name": "cosine"}
    assert [lr_factor(step, **cosine) for step in (0, 50, 100)] == pytest.approx([1, 0.5, 0])
    assert lr_factor(10, total_steps=100, name="constant") == 1


def test_lightnings_short_precisions_are_recorded_and_counted_by_their_long_names(cli, workdir):
    """precision=bf16 is bf16-mixed (as Lightning reads it): the record says so, and the activations held
    at that precision are counted under its autocast, about half the float32 bytes."""
    for short, long in {"16": "16-mixed", "bf16": "bf16-mixed", "32": "32-true", "64": "64-true"}.items():
        cfg = compose("train", [f"precision={short}", "trainer.accelerator=cpu"])
        on_cpu = "bf16-mixed" if long == "16-mixed" else long  # as Lightning trains it there
        assert resolve_device(Plan.of(cfg).recipe).precision == on_cpu
    result = cli("profile", "arch=resnet", "arch.depth=8", "dataset=digits", "precision=bf16", "logger=none")
    assert result.status == 0, result.err
    (run,) = run_dirs(workdir / "outputs")
    record = summary(run)
    assert record["precision"] == "bf16-mixed"
    assert 0.4 < record["activation_bytes_at_precision"] / record["activation_bytes"] < 0.6


@pytest.mark.parametrize("optim", ["sgd", "adamw"])
def test_optimisers_are_fused_on_a_gpu_unless_the_config_or_a_grad_scaler_says(optim):
    def built(cuda: bool, *overrides: str, precision: str = "bf16-mixed") -> dict:
        cfg = compose("train", [f"optim={optim}", *overrides])
        recipe = Plan.of(cfg).recipe
        module = build_module(recipe, torch.nn.Linear(2, 2), Device(cuda, precision, channels_last=False))
        return module.optimizer(module.parameters()).defaults

    assert built(cuda=True)["fused"] and not built(cuda=False)["fused"]
    assert built(True, "+optim.fused=false")["fused"] is False and built(False, "+optim.fused=true")["fused"]
    multi_tensor = built(True, "+optim.foreach=true")  # the user's pick; fused and foreach would conflict
    assert multi_tensor["foreach"] and not multi_tensor["fused"]
    assert not built(True, precision="16-mixed")["fused"]  # Lightning unscales only unfused optimisers
    assert built(True, precision="16-true")["fused"]  # no GradScaler: nothing to unscale
    if optim == "sgd":  # an optimiser without a fused update builds as configured
        assert "fused" not in built(True, "optim._target_=torch.optim.RMSprop", "~optim.nesterov")


def test_a_run_records_the_environment_that_computed_it(resnet_run):
    record = RunRecord.from_json(summary(resnet_run))
    env = record.environment
    assert record.environments is None  # one segment
    assert env["torch"] == str(torch.__version__) and env["threads"] == torch.get_num_threads()
    assert env["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert (env["cuda"], env["cudnn"], env["driver"], env["gpu"]) == (None, None, None, None)  # a CPU run
    assert isinstance(env["blas"], str) and isinstance(env["cpu"], str) and isinstance(env["host"], str)
    assert env["deterministic"] is False and env["matmul_precision"] == "highest"
    assert set(env["thread_env"]) == {"OMP_NUM_THREADS", "MKL_NUM_THREADS"}
    assert env["commit"] is None or len(env["commit"].removesuffix("+dirty")) == 40


def test_a_run_keeps_its_initial_weights(resnet_run):
    """checkpoints/init.ckpt: the net before its first step, readable as last.ckpt is."""
    from experiments.finished import load_weights

    saved = create_model("resnet", depth=14, in_channels=1, image_size=8)
    load_weights(saved, resnet_run / "checkpoints" / "init.ckpt")
    torch.manual_seed(0)  # the run's seed: the same draws initialise the same net
    fresh = create_model("resnet", depth=14, in_channels=1, image_size=8)
    for key, value in fresh.state_dict().items():
        assert torch.equal(saved.state_dict()[key], value), key
    trained = create_model("resnet", depth=14, in_channels=1, image_size=8)
    load_weights(trained, resnet_run / "checkpoints" / "last.ckpt")
    assert not torch.equal(trained.state_dict()["conv1.weight"], fresh.state_dict()["conv1.weight"])


def test_a_resumed_run_records_each_segments_environment(cli, workdir, monkeypatch):
    base = ["train", "arch=resnet", "arch.depth=8", "dataset=digits", "logger=none"]
    threads = torch.get_num_threads()
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)  # the first segment "ran" on one thread
    assert cli(*base, "trainer.max_epochs=1", "hydra.run.dir=first").status == 0
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads + 1)
    ckpt = f"ckpt_path={workdir}/first/checkpoints/last.ckpt"
    assert cli(*base, "trainer.max_epochs=2", ckpt, "hydra.run.dir=second").status == 0
    record = RunRecord.from_json(summary(workdir / "second"))
    assert [env["threads"] for env in record.environments] == [1, threads + 1]
    assert record.environment == record.environments[0]
    assert not (workdir / "second" / "checkpoints" / "init.ckpt").exists()  # it did not start at step 0
    resumed = torch.load(workdir / "second" / "checkpoints" / "last.ckpt", weights_only=True)
    assert resumed["environments"] == record.environments


def test_deterministic_is_a_setting_that_names_no_new_run_directory(cli, workdir):
    from experiments.rundir import config_hash

    plain = compose("train", ["arch=resnet", "arch.depth=8", "dataset=digits"])
    said = compose("train", ["arch=resnet", "arch.depth=8", "dataset=digits", "deterministic=false"])
    asked = compose("train", ["arch=resnet", "arch.depth=8", "dataset=digits", "deterministic=true"])
    assert config_hash(plain) == config_hash(said) != config_hash(asked)
    run = ["train", "arch=resnet", "arch.depth=8", "dataset=digits", "logger=none", "deterministic=true"]
    assert cli(*run, "trainer.max_epochs=1", "hydra.run.dir=a").status == 0
    assert summary(workdir / "a")["environment"]["deterministic"] is True
    assert cli("train", "deterministic=maybe", "dataset=digits").error_line() == (
        "error: deterministic must be true or false, got 'maybe'"
    )


@pytest.mark.gpu
def test_deterministic_runs_repeat_bit_for_bit_on_a_gpu(cli, workdir):
    """The same command twice on one GPU with deterministic=true: the same metrics.csv, byte for byte (cuDNN's
    autotuner off, deterministic kernels, eager steps)."""
    run = ["train", "arch=resnet", "arch.depth=20", "dataset=digits", "logger=none", "trainer=gpu"]
    for where in ("a", "b"):
        assert cli(*run, "deterministic=true", "trainer.max_epochs=2", f"hydra.run.dir={where}").status == 0
    assert (workdir / "a" / "metrics.csv").read_text() == (workdir / "b" / "metrics.csv").read_text()
    env = summary(workdir / "a")["environment"]
    assert env["deterministic"] is True and env["cudnn_benchmark"] is False
    assert summary(workdir / "a")["cuda_graph_steps"] == 0


@pytest.mark.filterwarnings("ignore:You defined a `validation_step` but have no `val_dataloader`")
def test_the_step_clips_gradients_as_lightnings_trainer_argument_says(tmp_path):
    """The written-out step clips with trainer.gradient_clip_val (which the Trainer itself does not get): one
    plain SGD step at lr 1 moves the weights by the clipped norm exactly, and by far more without it."""
    plan = Plan.of(
        compose("train", ["arch=resnet", "arch.depth=8", *TINY, "+trainer.gradient_clip_val=0.01"])
    )
    assert plan.recipe.clip == (0.01, "norm") and "gradient_clip_val" not in plan.recipe.trainer

    def moved(clip: tuple[float, str] | None) -> float:
        torch.manual_seed(0)
        model = create_model("resnet", depth=8, num_classes=10, in_channels=1, image_size=8)
        before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
        module = Classifier(model, lambda p: torch.optim.SGD(p, lr=1.0), {"name": "constant"}, clip=clip)
        trainer = build_trainer(
            None, accelerator="cpu", max_steps=1, limit_val_batches=0, default_root_dir=tmp_path
        )
        images, labels = torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,))
        trainer.fit(module, torch.utils.data.DataLoader(torch.utils.data.TensorDataset(images, labels), 16))
        return (torch.cat([p.detach().flatten() for p in model.parameters()]) - before).norm().item()

    assert moved(plan.recipe.clip) == pytest.approx(0.01, rel=1e-3)
    assert moved(None) > 0.1


def _shared_buffers_of_rank(rank: int, store: str, out: str) -> None:
    """One rank of two: its net's batch-norm statistics made its own, then shared from rank 0."""
    torch.distributed.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    model = create_model("resnet", depth=8, num_classes=10, in_channels=1, image_size=8)
    for buffer in model.buffers():
        buffer.fill_(rank + 1)
    share_buffers(model, world_size=2)
    torch.save([b.clone() for b in model.buffers()], f"{out}.{rank}")
    torch.distributed.destroy_process_group()


def test_ddp_ranks_train_with_rank_0s_batch_norm_statistics(tmp_path):
    """Under manual optimisation Lightning keeps DDP from sharing buffers before each forward: the module
    shares them itself, so that every rank's batch norm holds rank 0's running statistics."""
    out = str(tmp_path / "buffers")
    torch.multiprocessing.spawn(_shared_buffers_of_rank, args=(str(tmp_path / "store"), out), nprocs=2)
    zero, one = torch.load(f"{out}.0"), torch.load(f"{out}.1")
    assert len(zero) > 3 and all(
        torch.equal(a, b) and bool((a == 1).all()) for a, b in zip(zero, one, strict=True)
    )


class LearningRates(pl.Callback):
    def __init__(self) -> None:
        self.seen: list[float] = []

    def on_train_batch_start(self, trainer: pl.Trainer, *_: object) -> None:
        self.seen.append(trainer.optimizers[0].param_groups[0]["lr"])


@pytest.mark.filterwarnings("ignore:You defined a `validation_step` but have no `val_dataloader`")
def test_the_step_after_a_warm_up_ends_still_runs_at_a_tenth_of_the_rate(tmp_path):
    """He et al.'s rule: the check that ends the warm-up runs after the step's schedule, so the rate rises
    one step after the training error fell below the threshold (an error under 0.99: after the window of
    ten batches)."""
    model = create_model("resnet", depth=8, num_classes=10, in_channels=1, image_size=8)
    schedule = {"name": "constant", "warmup_until_train_error": 0.99}
    module = Classifier(model, lambda p: torch.optim.SGD(p, lr=1.0), schedule)
    rates = LearningRates()
    trainer = build_trainer(
        None, accelerator="cpu", max_steps=14, callbacks=[rates], default_root_dir=tmp_path
    )
    images, labels = torch.randn(14 * 4, 1, 8, 8), torch.randint(0, 10, (14 * 4,))
    trainer.fit(module, torch.utils.data.DataLoader(torch.utils.data.TensorDataset(images, labels), 4))
    assert module.warmed_up_at == 10
    assert rates.seen == pytest.approx([0.1] * 11 + [1.0] * 3)
