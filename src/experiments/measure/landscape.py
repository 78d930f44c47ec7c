"""The loss landscape around a trained net (Li et al. 2018, "Visualizing the Loss Landscape of Neural Nets"),
and along the line from its initial weights to its final ones (Goodfellow et al. 2015).

The loss is measured at w + x d1 (+ y d2), w the trained weights and d1, d2 random Gaussian directions drawn
on the CPU from a seeded generator (the same directions on a CPU and a GPU). Each direction is normalised
filter by filter to the weights' filter norms (each conv output filter, each linear output neuron:
d_f <- d_f ||w_f|| / ||d_f||): a net under batch norm computes the same function at any scale of a filter,
so only a step relative to each filter's own scale means the same thing in every net. Biases and batch norm
parameters (tensors of dim <= 1) get a zero direction, as in Li et al.

Each point is a forward pass only, in fp32, batch norm in eval mode with the trained running statistics,
over a fixed image set: the mean cross-entropy and the fraction wrong. The weights are copied into a deep
copy of the net, never into the caller's.

On the interpolation w(t) = (1 - t) w_init + t w_final, parameters and batch norm buffers are interpolated;
by default the batch norm statistics are then recomputed over the image set at each point, since the
initial running statistics (0 and 1) are not statistics of anything and their average means nothing.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Batches = list[tuple[Tensor, Tensor]]
Progress = Callable[[], None]
BN_MODES = ("recompute", "interpolate")


def filter_normalised_direction(model: nn.Module, generator: torch.Generator) -> dict[str, Tensor]:
    """A Gaussian direction in `model`'s parameter space, per parameter name, each filter (first index of a
    tensor of dim >= 2) scaled to that filter's norm in the weights; zero for tensors of dim <= 1. Drawn on
    the CPU in float32 from `generator`, in the order of `named_parameters`."""
    direction = {}
    for name, weight in model.named_parameters():
        weight = weight.detach().float().cpu()
        draw = torch.randn(weight.shape, generator=generator, dtype=torch.float32)
        if weight.dim() <= 1:
            direction[name] = torch.zeros_like(weight)
            continue
        filters, drawn = weight.flatten(1), draw.flatten(1)
        scale = filters.norm(dim=1) / drawn.norm(dim=1).clamp_min(1e-12)
        direction[name] = (drawn * scale[:, None]).view_as(weight)
    return direction


@torch.no_grad()
def loss_and_error(net: nn.Module, batches: Batches) -> tuple[float, float]:
    """Mean cross-entropy and fraction wrong of `net` as it is (mode and weights) over `batches`."""
    device = next(net.parameters()).device
    loss, wrong, total = 0.0, 0, 0
    for images, labels in batches:
        images, labels = images.to(device, torch.float32), labels.to(device)
        logits = net(images).float()
        loss += F.cross_entropy(logits, labels, reduction="sum").item()
        wrong += (logits.argmax(1) != labels).sum().item()
        total += len(labels)
    return loss / total, wrong / total


def working_copy(model: nn.Module, device: torch.device) -> nn.Module:
    """A deep copy of `model` in fp32 on `device`, in eval mode: what the measurements change."""
    return copy.deepcopy(model).float().to(device).eval()


@contextmanager
def moved(
    net: nn.Module, origin: dict[str, Tensor], steps: list[tuple[float, dict[str, Tensor]]]
) -> Iterator[None]:
    """`net`'s parameters at origin + sum of step * direction for the block, then back at `origin`."""
    parameters = dict(net.named_parameters())
    with torch.no_grad():
        for name, parameter in parameters.items():
            value = origin[name].clone()
            for step, direction in steps:
                value.add_(direction[name].to(value.device), alpha=step)
            parameter.copy_(value)
    try:
        yield
    finally:
        with torch.no_grad():
            for name, parameter in parameters.items():
                parameter.copy_(origin[name])


def grid(points: int, span: float) -> list[float]:
    """`points` evenly spaced steps over [-span, span], 0 among them when `points` is odd."""
    if points == 1:
        return [0.0]
    return [span * (2 * i / (points - 1) - 1) for i in range(points)]  # the middle one exactly 0


def slice_rows(
    net: nn.Module,
    batches: Batches,
    directions: list[dict[str, Tensor]],
    steps: list[float],
    progress: Progress,
) -> list[dict[str, Any]]:
    """landscape.csv's slice_1d rows: the loss along each direction, one row per step."""
    origin = {name: p.detach().clone() for name, p in net.named_parameters()}
    rows = []
    for index, direction in enumerate(directions):
        for x in steps:
            with moved(net, origin, [(x, direction)]):
                loss, error = loss_and_error(net, batches)
            rows.append(_row("slice_1d", index, x, "", loss, error))
            progress()
    return rows


def surface_rows(
    net: nn.Module,
    batches: Batches,
    directions: tuple[dict[str, Tensor], dict[str, Tensor]],
    steps: list[float],
    progress: Progress,
) -> list[dict[str, Any]]:
    """landscape.csv's surface_2d rows: the loss on the grid `steps` x `steps` over two directions."""
    origin = {name: p.detach().clone() for name, p in net.named_parameters()}
    rows = []
    for x in steps:
        for y in steps:
            with moved(net, origin, [(x, directions[0]), (y, directions[1])]):
                loss, error = loss_and_error(net, batches)
            rows.append(_row("surface_2d", 0, x, y, loss, error))
            progress()
    return rows


def _row(kind: str, direction: int, x: float, y: float | str, loss: float, error: float) -> dict[str, Any]:
    return {"kind": kind, "direction": direction, "x": x, "y": y, "loss": loss, "error": error}


def _norms(net: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@torch.no_grad()
def recompute_statistics(net: nn.Module, batches: Batches) -> None:
    """Replace `net`'s batch norm running statistics by those of `batches` (the average of the batches'
    means and variances, as momentum None gives), leaving `net` in eval mode."""
    device = next(net.parameters()).device
    norms = _norms(net)
    momenta = [norm.momentum for norm in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None
        norm.train()
    for images, _ in batches:
        net(images.to(device, torch.float32))
    for norm, momentum in zip(norms, momenta, strict=True):
        norm.momentum = momentum
    net.eval()


def interpolation_rows(
    net: nn.Module,
    initial: dict[str, Tensor],
    batches: Batches,
    steps: list[float],
    bn_mode: str,
    progress: Progress,
) -> list[dict[str, Any]]:
    """landscape.csv's interpolation rows: the loss at (1 - t) initial + t final for each t in `steps`,
    `net` holding the final weights and `initial` the initial state dict. Floating-point parameters and
    buffers are interpolated (counters such as num_batches_tracked keep their final value); with `bn_mode`
    "recompute" the running statistics are then measured again over `batches`."""
    final = {name: value.detach().clone() for name, value in net.state_dict().items()}
    rows = []
    for t in steps:
        state = {
            name: torch.lerp(initial[name].to(value), value, t) if value.is_floating_point() else value
            for name, value in final.items()
        }
        net.load_state_dict(state)
        if bn_mode == "recompute":
            recompute_statistics(net, batches)
        loss, error = loss_and_error(net, batches)
        rows.append(_row("interpolation", 0, t, "", loss, error))
        progress()
    net.load_state_dict(final)
    return rows
