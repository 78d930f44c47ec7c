"""Measurement: counters against hand-computed cases, the DenseNet memory trade-off, costs in real runs."""

from __future__ import annotations

import json
import re
import time
import weakref

import pytest
import pytorch_lightning as pl
import torch
from torch import nn

from experiments.build import build_trainer
from experiments.data import Synthetic
from experiments.measure.cost import TrainingCost, percentile
from experiments.measure.counts import activation_bytes, count_params, flops_per_image, saved_bytes
from experiments.measure.memory import PeakMemory
from experiments.measure.param_grads import part_norms
from experiments.models import create_model
from experiments.module import Classifier
from experiments.report.plots import exponent
from tests.helpers import archive_metrics, run_dirs, summary


def test_parameter_count_of_a_tiny_mlp():
    mlp = nn.Sequential(nn.Linear(10, 20), nn.ReLU(), nn.Linear(20, 5))
    assert count_params(mlp) == 10 * 20 + 20 + 20 * 5 + 5
    mlp[0].weight.requires_grad_(False)
    assert count_params(mlp) == 20 + 20 * 5 + 5


def test_flops_of_a_single_conv():
    conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
    # one multiply-add (2 FLOPs) per output pixel, output channel and 3x3x3 input window
    assert flops_per_image(conv, (3, 32, 32)) == 2 * (8 * 32 * 32) * (3 * 3 * 3)


def test_multiply_adds_are_the_papers_flops():
    """He et al. count ResNet-56 at 125M and ResNet-110 at 253M "FLOPs": multiply-adds; DenseNet-BC-100
    (k=12) is about 0.29G; ResNet-50 in torchvision's layout (stride on the 3x3) 4.09G."""
    macs = {
        name: flops_per_image(create_model(name, **kw), shape) // 2
        for name, kw, shape in [
            ("resnet56", {}, (3, 32, 32)),
            ("resnet110", {}, (3, 32, 32)),
            ("densenet_bc100", {}, (3, 32, 32)),
            ("resnet50", {"image_size": 224, "num_classes": 1000}, (3, 224, 224)),
        ]
    }
    assert macs == {
        "resnet56": 125_485_696,
        "resnet110": 252_887_680,
        "densenet_bc100": 287_929_692,
        "resnet50": 4_089_184_256,
    }


def test_activation_bytes_at_the_runs_precision():
    """Under bf16 autocast the convolutions keep half-size activations: about half the float32 bytes."""
    model = create_model("resnet20")
    fp32, bf16 = (
        activation_bytes(model, (64, 3, 32, 32)),
        activation_bytes(model, (64, 3, 32, 32), "bf16-mixed"),
    )
    assert fp32 == activation_bytes(model, (64, 3, 32, 32), "32-true") and 0.45 < bf16 / fp32 < 0.55
    assert activation_bytes(model, (64, 3, 32, 32), "bf16-true") == pytest.approx(fp32 / 2, rel=0.01)


def test_saved_bytes_of_a_single_conv():
    conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
    x = torch.randn(4, 3, 32, 32)
    # the weight's gradient needs the input; the weight itself is a parameter, not counted
    assert saved_bytes(lambda: conv(x), exclude=conv.parameters()) == 4 * 3 * 32 * 32 * 4


def test_saved_bytes_count_a_storage_once():
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(8, 8, 3, padding=1))
    x = torch.randn(2, 3, 16, 16)
    # conv1 saves x; ReLU saves its output, in place in conv1's output; conv2 saves the same storage again
    assert saved_bytes(lambda: net(x), exclude=net.parameters()) == 4 * 2 * 16 * 16 * (3 + 8)


def test_activation_bytes_are_the_same_on_meta_and_on_cpu():
    model = create_model("densenet_bc", depth=40, memory_efficient=True)
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    on_cpu = saved_bytes(lambda: nn.functional.cross_entropy(model(x), y), exclude=model.parameters())
    assert activation_bytes(model, (8, 3, 32, 32)) == on_cpu


@pytest.mark.slow  # seconds each: run by make test-slow
def test_densenet_memory_is_quadratic_naive_and_linear_efficient():
    depths = [40, 100, 190]

    def counts(efficient: bool) -> list[int]:
        return [
            activation_bytes(
                create_model("densenet_bc", depth=d, memory_efficient=efficient), (64, 3, 32, 32)
            )
            for d in depths
        ]

    naive, efficient = counts(False), counts(True)
    assert exponent(depths, naive) >= 1.5
    assert exponent(depths, efficient) <= 1.25
    assert efficient[1] <= 0.6 * naive[1]  # DenseNet-BC-100: at least 40% fewer bytes
    resnets = [activation_bytes(create_model("resnet", depth=d), (64, 3, 32, 32)) for d in (20, 56, 110)]
    assert 0.9 <= exponent([20, 56, 110], resnets) <= 1.1


def test_part_norms_are_the_norms_of_each_parts_parameter_gradients():
    model = create_model("resnet20")
    nn.functional.cross_entropy(model(torch.randn(2, 3, 32, 32)), torch.tensor([1, 2])).backward()
    norms = part_norms(model)
    assert list(norms) == ["stem", "stage1", "stage2", "stage3", "head"]
    expected = torch.cat([p.grad.flatten() for p in model.layer2.parameters()]).norm()
    torch.testing.assert_close(norms["stage2"], expected)


def test_percentile():
    assert percentile([5.0, 1.0, 3.0, 2.0, 4.0], 0.5) == 3.0
    assert percentile(list(map(float, range(1, 11))), 0.9) == 9.0


def assert_peak_memory_measured(record: dict) -> None:
    """Training steps allocate: the peak RSS grows (this machine's /proc lets the peak be reset per run)."""
    assert record["peak_memory_source"] == "cpu peak RSS growth" and record["peak_memory_bytes"] > 0


def test_peak_memory_starts_after_an_earlier_runs_garbage_is_freed():
    """Lightning's trainer and module refer to each other, so a finished run's tensors wait for the garbage
    collector; the next run's peak (of a multirun, in one process) would count them. (On a GPU the same
    start also resets the CUDA allocator's peak: tests/test_gpu.py.)"""

    class Run:
        def __init__(self) -> None:
            self.activations = torch.empty(1 << 20)
            self.me = self  # a reference cycle: reference counting alone never frees it

    leftover = Run()
    gone = weakref.ref(leftover.activations)
    del leftover
    assert gone() is not None
    PeakMemory(torch.device("cpu")).start()
    assert gone() is None


def test_training_cost_times_the_steps_after_warmup(tmp_path):
    data = Synthetic(
        "synthetic", image_size=8, channels=1, train_size=8 * 16, val_size=8, test_size=8, batch_size=16
    )
    untimed = (3, 5, 9)  # the first step after warm-up, one between timed steps, the fit's last step

    class SlowUntimedSteps(pl.Callback):
        """Untimed steps take long, and so does what follows them, as with signal steps (the recorder's
        reductions run after the cost's clock stops): cut from the span or outside it, never timed."""

        def on_train_batch_start(self, trainer: pl.Trainer, *_: object) -> None:
            if trainer.global_step in untimed:
                time.sleep(0.3)

        def on_train_batch_end(self, trainer: pl.Trainer, *_: object) -> None:
            if trainer.global_step - 1 in untimed:  # the step counter has moved on
                time.sleep(0.3)

    cost = TrainingCost(warmup_steps=3, untimed=lambda step: step in untimed)
    trainer = build_trainer(
        None,
        accelerator="cpu",
        max_steps=10,
        limit_val_batches=0,
        callbacks=[cost, SlowUntimedSteps()],
        default_root_dir=tmp_path,
    )
    model = create_model("resnet20", in_channels=1, image_size=8)
    trainer.fit(
        Classifier(model, lambda p: torch.optim.SGD(p, lr=0.1), {"name": "constant"}), datamodule=data
    )
    summary = cost.summary()
    assert summary["timed_steps"] == 4 and summary["step_timing"] == "eager"  # steps 4, 6, 7, 8
    assert 0 < summary["step_time_ms"] <= summary["step_time_p90_ms"] < 300
    # throughput is over the timed span, which holds the timed steps and the data waits between them
    steps_only = 4 * 16 / (sum(cost.step_ms) / 1000)
    assert 0.5 * steps_only < summary["throughput"] <= steps_only
    assert 0 <= summary["data_wait_fraction"] < 0.5
    assert_peak_memory_measured(summary)


def test_a_train_run_records_and_logs_its_measurements(cli, workdir):
    result = cli(
        "train",
        "arch=plain",
        "arch.depth=8",
        "dataset=digits",
        "trainer.max_epochs=2",
        "measure.grad_norm_every=5",
    )
    assert result.status == 0, result.err
    (run,) = run_dirs(workdir / "outputs")
    record = summary(run)
    model = create_model("plain", depth=8, in_channels=1, image_size=8)
    assert record["flops_per_image"] == flops_per_image(model, (1, 8, 8))
    assert record["activation_bytes"] == activation_bytes(model, (64, 1, 8, 8))
    assert record["step_time_ms"] > 0 and record["throughput"] > 0
    assert_peak_memory_measured(record)
    assert list(record["param_grad_norms"]) == ["stem", "stage1", "stage2", "stage3", "head"]
    assert all(len(v) == 2 and all(x > 0 for x in v) for v in record["param_grad_norms"].values())
    (archive,) = (run / "comet").glob("*.zip")
    metrics = archive_metrics(archive)
    for key in ("flops_per_image", "macs_per_image", "activation_bytes", "throughput", "peak_memory_bytes"):
        assert metrics[key] == [pytest.approx(record[key])], key
    assert len(metrics["step_time_ms"]) == 3  # each epoch's median, then the run's
    assert metrics["step_time_ms"][-1] == pytest.approx(record["step_time_ms"])
    assert len(metrics["param_grad_norm/stage1"]) == 9  # steps 0, 5, ..., 40 of 2 x 22 steps


def test_profile_writes_the_costs_and_one_line(cli, workdir):
    result = cli("profile", "arch=resnet20", "dataset=digits", "logger=none")
    assert result.status == 0, result.err
    (run,) = run_dirs(workdir / "outputs" / "profile")
    record = summary(run)
    assert record["command"] == "profile" and record["status"] == "completed"
    assert record["batch_size"] == 64 and record["timed_steps"] == 2 and record["step_timing"] == "eager"
    for key in (
        "params",
        "flops_per_image",
        "macs_per_image",
        "activation_bytes",
        "peak_memory_bytes",
        "step_time_ms",
        "throughput",
    ):
        assert record[key] > 0, key
    for key in ("epochs", "train_error", "val_error", "test_error", "train_loss", "val_loss"):
        assert record[key] is None, key
    assert re.search(
        r"resnet20 +batch 64 +params +0.27M +MACs +0.003G/img .* \(p90 \d+, eager\) +\d+ img/s", result.out
    )
    assert not (workdir / "data").exists()


def test_profile_sweep_with_an_impossible_depth_runs_the_rest(cli, workdir):
    result = cli("profile", "-m", "arch=resnet", "arch.depth=8,9", "dataset=digits", "logger=none")
    assert result.status == 1
    assert "Traceback" not in result.err
    errors = [line for line in result.err.splitlines() if line.startswith("error:")]
    assert errors == [
        "error: arch: resnet (cifar form, basic blocks) depth must be 6n+2, got 9; nearest valid: 8, 14"
    ]
    records = [json.loads(p.read_text()) for p in (workdir / "multirun").rglob("summary.json")]
    assert [(r["depth"], r["status"]) for r in records] == [(8, "completed")]
    assert len(run_dirs(workdir / "multirun")) == 1  # the refused run left no directory
