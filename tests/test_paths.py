"""Gradient by path length (Veit et al. 2016): the path terms sum to the gradient, the skip-only path is the
product of the ReLU masks, and `experiments paths` on a trained run."""

from __future__ import annotations

import csv
import itertools
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from experiments.measure import paths as measure
from experiments.models import ResNet
from experiments.specs import ResNetSpec
from tests.test_landscape import assert_same_state, files, one_thread, state, tiny_run  # noqa: F401 (fixtures)


def three_blocks(shortcut: str = "A", stages: tuple[int, ...] = (3,)) -> ResNet:
    """A ResNet of three basic blocks: one stage of them (every skip the identity), or one per stage."""
    spec = ResNetSpec(
        family="resnet",
        depth=2 * sum(stages) + 2,
        form="cifar",
        stages=stages,
        bottleneck=False,
        shortcut=shortcut,
        stem="cifar",
        zero_init_residual=False,
        memory_efficient=False,
    )
    torch.manual_seed(0)
    model = ResNet(spec, num_classes=3, in_channels=1)
    for norm in model.modules():
        if isinstance(norm, torch.nn.BatchNorm2d):
            norm.running_mean.uniform_(-0.3, 0.3)  # masks that cut some units, not all or none
            norm.running_var.uniform_(0.5, 2.0)
    return model.eval()


def images(count: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(count, 1, 8, 8, generator=generator), torch.randint(
        0, 3, (count,), generator=generator
    )


def full_gradient(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """d(summed loss)/d(stem output) of the intact net."""
    held = []
    hook = net.maxpool.register_forward_hook(lambda m, i, output: held.append(output.requires_grad_()))
    loss = F.cross_entropy(net(x.double()), y, reduction="sum")
    hook.remove()
    return torch.autograd.grad(loss, held[0])[0]


@pytest.mark.parametrize(
    ("shortcut", "stages"), [("A", (3,)), ("A", (1, 1, 1)), ("B", (1, 1, 1))], ids=["identity", "A", "B"]
)
def test_the_paths_sum_to_the_gradient(shortcut, stages):
    model, (x, y) = three_blocks(shortcut, stages), images()
    before = state(model)
    net = measure.path_net(model)
    terms = [
        measure.path_gradient(net, x, y, set(chosen))
        for k in range(4)
        for chosen in itertools.combinations(range(3), k)
    ]
    assert len(terms) == 8
    # float64: the 8 terms and the full product differ by rounding of sums of a few hundred terms
    torch.testing.assert_close(sum(terms), full_gradient(net, x, y), rtol=1e-10, atol=1e-12)
    assert_same_state(before, model)


def test_the_skip_only_path_is_the_product_of_the_relu_masks():
    model, (x, y) = three_blocks(), images()
    net = measure.path_net(model)
    outputs = []
    stem = net.maxpool.register_forward_hook(lambda m, i, output: output.requires_grad_())
    hooks = [stem] + [
        block.register_forward_hook(lambda m, i, out: outputs.append(out))
        for block in measure.residual_blocks(net)
    ]
    logits = net(x.double())
    for hook in hooks:
        hook.remove()
    last = outputs[-1]
    # the gradient at the last block's output (the head's input), then back through three identity skips:
    # each passes it where its ReLU was on
    (at_last,) = torch.autograd.grad(F.cross_entropy(logits, y, reduction="sum"), last)
    masks = [(out > 0).double() for out in outputs]
    by_hand = at_last * masks[0] * masks[1] * masks[2]
    assert 0 < masks[0].mean() < 1  # the masks do cut something
    # both sides computed here, in float64, from the same gradient times 0/1 masks: equal to the bit
    torch.testing.assert_close(measure.path_gradient(net, x, y, set()), by_hand, rtol=0, atol=0)


def test_rows_count_the_paths_and_leave_the_model():
    model, (x, y) = three_blocks(), images()
    before = state(model)
    rows = measure.path_rows(model, x, y, samples=2, seed=0, progress=lambda: None)
    assert_same_state(before, model)
    assert [row["k"] for row in rows] == [0, 1, 2, 3]
    assert [row["paths"] for row in rows] == [1, 3, 3, 1]
    assert [row["samples"] for row in rows] == [1, 2, 2, 1]
    for row in rows:
        assert row["contribution"] == pytest.approx(row["paths"] * row["grad_norm_mean"], rel=1e-15)
    assert not measure.residual_blocks(three_blocks("none"))  # a plain net has no paths


def test_effective_range_is_the_shortest_holding_ninety_percent():
    rows = [{"k": k, "contribution": c} for k, c in enumerate([1, 2, 40, 49, 6, 2])]
    assert measure.effective_range(rows) == (2, 4, 3)  # 95 of 100 in k = 2..4; k = 2..3 holds 89
    rows[3]["contribution"] = 60
    assert measure.effective_range(rows) == (2, 3, 3)  # 100 of 111 in k = 2..3


def test_paths_command_writes_its_file_and_sidecar(tiny_run: Path, monkeypatch):  # noqa: F811
    from experiments.commands.paths import main

    monkeypatch.chdir(tiny_run.parent)
    before = files(tiny_run)
    assert main([str(tiny_run), "--samples", "2", "--images", "16"]) == 0
    assert {k: v for k, v in files(tiny_run).items() if not k.startswith("paths.")} == before
    with (tiny_run / "paths.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["k", "samples", "grad_norm_mean", "grad_norm_std", "paths", "contribution"]
    assert [int(row["paths"]) for row in rows] == [math.comb(3, k) for k in range(4)]
    assert all(float(row["grad_norm_mean"]) > 0 for row in rows)
    sidecar = json.loads((tiny_run / "paths.json").read_text())
    assert sidecar["options"]["samples"] == 2 and sidecar["precision"] == "fp64"
    from experiments.report import landscape as figures
    from experiments.report.collect import Run

    ((_, figure),) = figures.paths([Run.read(tiny_run)], tiny_run.parent)
    assert figure.name == "paths.png" and figure.stat().st_size > 0
