"""The Hessian's top eigenvalue and trace against a tiny net's exact Hessian, and `experiments curvature` on a
trained run."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from experiments.measure import curvature as measure
from tests.test_landscape import assert_same_state, files, one_thread, state, tiny_run  # noqa: F401 (fixtures)


def tiny_net() -> nn.Module:
    """A conv, a batch norm (eval mode, statistics other than 0 and 1), a ReLU and a linear head: 49
    parameters, every kind the measurement treats (filters of dim 4 and 2, vectors of dim 1)."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 2, 3, bias=False), nn.BatchNorm2d(2), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 2 * 2, 3)
    )
    net[1].running_mean.uniform_(-0.5, 0.5)
    net[1].running_var.uniform_(0.5, 2.0)
    with torch.no_grad():
        net[1].weight.uniform_(0.5, 1.5)
        net[1].bias.uniform_(-0.5, 0.5)
    return net.eval()


def tiny_batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(0)
    x, y = torch.randn(20, 1, 4, 4, generator=generator), torch.randint(0, 3, (20,), generator=generator)
    return [(x[:12], y[:12]), (x[12:], y[12:])]


def exact_hessian(net: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """The Hessian of the mean loss over `batches` on the flat parameter vector, in float64."""
    net = net.double()
    names = [name for name, _ in net.named_parameters()]
    shapes = [p.shape for p in net.parameters()]
    flat = torch.cat([p.detach().reshape(-1) for p in net.parameters()])
    x, y = torch.cat([b[0] for b in batches]).double(), torch.cat([b[1] for b in batches])

    def loss(vector: torch.Tensor) -> torch.Tensor:
        pieces = vector.split([shape.numel() for shape in shapes])
        parameters = {n: p.view(s) for n, p, s in zip(names, pieces, shapes, strict=True)}
        return F.cross_entropy(functional_call(net, parameters, (x,)), y)

    return torch.autograd.functional.hessian(loss, flat)


@pytest.mark.parametrize("normalised", [False, True], ids=["raw", "normalised"])
def test_top_eigenvalue_and_trace_match_the_exact_hessian(normalised):
    net, batches = tiny_net(), tiny_batches()
    before = state(net)
    h = measure.hessian(net, batches, normalised, lambda: None)
    value, residual, _ = measure.top_eigenvalue(h, iterations=30, seed=0)
    estimate, error = measure.trace(h, samples=30, seed=0)
    scale = measure.filter_norms(list(net.parameters())).double() if normalised else 1
    exact = exact_hessian(tiny_net(), batches)
    exact = exact * scale * (scale.unsqueeze(1) if normalised else 1)  # D H D
    top = torch.linalg.eigvalsh(exact).max().item()
    # a symmetric matrix has an eigenvalue within the Ritz pair's residual of its Ritz value; the fp32
    # Hessian-vector products add rounding of about 1e-6 of the largest entries
    assert abs(value - top) <= residual + 1e-5 * abs(top)
    assert abs(estimate - exact.trace().item()) <= 3 * error  # Hutchinson's estimate, within 3 s.e.
    assert_same_state(before, net)


def test_filter_norms_are_each_entries_filter():
    net = tiny_net()
    scale = measure.filter_norms(list(net.parameters()))
    conv = net[0].weight.detach()
    assert torch.equal(scale[:9], conv[0].norm().expand(9))  # the first filter's 9 weights
    assert torch.equal(scale[9:18], conv[1].norm().expand(9))
    assert torch.equal(scale[18:22], torch.ones(4))  # the batch norm's scale and shift


def test_curvature_command_writes_its_file_and_sidecar(tiny_run: Path, monkeypatch):  # noqa: F811
    from experiments.commands.curvature import main

    monkeypatch.chdir(tiny_run.parent)
    before = files(tiny_run)
    assert main([str(tiny_run), "--iterations", "10", "--images", "32"]) == 0
    assert {k: v for k, v in files(tiny_run).items() if not k.startswith("curvature.")} == before
    with (tiny_run / "curvature.csv").open(newline="") as f:
        rows = {row["quantity"]: row for row in csv.DictReader(f)}
    assert list(rows) == [
        "top_eigenvalue",
        "trace",
        "top_eigenvalue_normalised",
        "trace_normalised",
        "weight_norm",
    ]
    assert float(rows["top_eigenvalue"]["value"]) > 0 and rows["trace"]["images"] == "32"
    sidecar = json.loads((tiny_run / "curvature.json").read_text())
    assert sidecar["options"]["iterations"] == 10 and "environment" in sidecar
    from experiments.report import landscape as figures
    from experiments.report.collect import Run

    table = figures.curvature_table([Run.read(tiny_run)])
    assert table.startswith("| net |") and "resnet-8 on digits | 1 |" in table


def test_init_weights_are_measured_apart(tiny_run: Path, monkeypatch):  # noqa: F811
    from experiments.commands.curvature import main

    monkeypatch.chdir(tiny_run.parent)
    assert main([str(tiny_run), "--init", "--iterations", "5", "--images", "16"]) == 0
    assert json.loads((tiny_run / "curvature_init.json").read_text())["weights"].startswith("initial")
