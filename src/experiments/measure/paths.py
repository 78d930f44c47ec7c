"""Gradient by path length in a residual net (Veit et al. 2016, "Residual Networks Behave Like Ensembles of
Relatively Shallow Networks", Fig. 6).

A residual block computes y = relu(F(x) + skip(x)), so its Jacobian is M (J_F + J_skip), M the mask of its
ReLU; the gradient at the stem's output is the product of the blocks' Jacobians, which expands into 2^n
terms, one per path: a path of length k goes through k blocks' residual branches and the other n - k
blocks' skips. The term of one set of blocks is measured by a backward pass in which each chosen block
passes the gradient through F only and every other block through its skip only:

    through F:     y = relu(F(x) + skip(x.detach()))
    through skip:  y = relu(F(x.detach()) + skip(x))

The forward values are those of the intact net, so the ReLU masks are the forward's own; the 2^n terms sum
to the full gradient. The skip is
  - the identity where the block keeps its input's shape;
  - option A (He et al. 2016) where it does not: the identity subsampled at stride 2 and zero-padded with
    the missing channels, so the padded channels pass no gradient back;
  - option B: a 1x1 conv and batch norm projection, whose Jacobian the skip path carries.

For k = 0..n, `samples` random sets of k blocks are drawn (every set where there are no more than that),
each measured as the L2 norm of d(sum of the per-image losses)/d(stem output) divided by the images; the
number of paths of length k is C(n, k), and their total contribution C(n, k) times the mean norm. All in
float64 on a deep copy of the net, batch norm in eval mode: at k = n the gradient is the product of n
branch Jacobians, small enough to underflow float32 in a deep net.
"""

from __future__ import annotations

import copy
import itertools
import math
import random
import statistics
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Progress = Callable[[], None]


def residual_blocks(model: nn.Module) -> list[nn.Module]:
    """The residual blocks of `model` in forward order; none in a plain net or a DenseNet."""
    names = [block.name for block in model.blocks() if block.kind == "residual"]
    return [model.get_submodule(name) for name in names]


def _routed_forward(block: nn.Module, through_branch: bool) -> Callable[[Tensor], Tensor]:
    """The block's forward, its gradient passed through the residual branch or through the skip only."""

    def forward(x: Tensor) -> Tensor:
        branch_input, skip_input = (x, x.detach()) if through_branch else (x.detach(), x)
        skip = skip_input if block.downsample is None else block.downsample(skip_input)
        return F.relu(block.branch(branch_input) + skip)

    return forward


def path_net(model: nn.Module) -> nn.Module:
    """A float64 deep copy of `model` in eval mode, without parameter gradients (only the stem's output
    gradient is measured): the net `path_gradient` routes."""
    net = copy.deepcopy(model).double().eval()
    for parameter in net.parameters():
        parameter.requires_grad_(False)
    return net


def path_gradient(net: nn.Module, images: Tensor, labels: Tensor, through_branch: set[int]) -> Tensor:
    """d(sum of the per-image losses)/d(stem output) of `net` (from `path_net`) with the residual blocks
    at the positions `through_branch` passing the gradient through their branch, the others their skip."""
    blocks = residual_blocks(net)
    stem = net.get_submodule(net.blocks()[0].name)
    held: list[Tensor] = []
    hook = stem.register_forward_hook(lambda module, inputs, output: held.append(output.requires_grad_()))
    for position, block in enumerate(blocks):
        block.forward = _routed_forward(block, position in through_branch)
    try:
        loss = F.cross_entropy(net(images.double()), labels, reduction="sum")
        (gradient,) = torch.autograd.grad(loss, held[0])
    finally:
        hook.remove()
        for block in blocks:
            del block.forward  # back to the class's forward
    return gradient


def _draws(n: int, k: int, samples: int, draw: random.Random) -> list[tuple[int, ...]]:
    """The sets of k of n blocks to measure: all of them where there are at most `samples`, else
    `samples` random ones."""
    if math.comb(n, k) <= samples:
        return list(itertools.combinations(range(n), k))
    return [tuple(sorted(draw.sample(range(n), k))) for _ in range(samples)]


def path_rows(
    model: nn.Module, images: Tensor, labels: Tensor, samples: int, seed: int, progress: Progress
) -> list[dict[str, Any]]:
    """paths.csv's rows, k = 0..n (n the residual blocks of `model`, which is left unchanged)."""
    net = path_net(model)
    n = len(residual_blocks(net))
    draw = random.Random(seed)
    rows = []
    for k in range(n + 1):
        norms = []
        for chosen in _draws(n, k, samples, draw):
            norms.append(path_gradient(net, images, labels, set(chosen)).norm().item() / len(labels))
            progress()
        mean = statistics.mean(norms)
        rows.append(
            {
                "k": k,
                "samples": len(norms),
                "grad_norm_mean": mean,
                "grad_norm_std": statistics.stdev(norms) if len(norms) > 1 else 0.0,
                "paths": math.comb(n, k),
                "contribution": math.comb(n, k) * mean,
            }
        )
    return rows


def passes(n: int, samples: int) -> int:
    """Backward passes `path_rows` makes for n blocks."""
    return sum(min(math.comb(n, k), samples) for k in range(n + 1))


def effective_range(rows: list[dict[str, Any]], share: float = 0.9) -> tuple[int, int, int]:
    """(first k, last k, peak k): the shortest range of path lengths holding `share` of the total
    contribution (of equally short ones, the one holding most), and the length contributing most."""
    contributions = [row["contribution"] for row in rows]
    total = sum(contributions)
    best: tuple[int, float, int, int] | None = None
    for first in range(len(rows)):
        for last in range(first, len(rows)):
            held = sum(contributions[first : last + 1])
            if held >= share * total:
                candidate = (last - first, -held, first, last)
                best = candidate if best is None or candidate < best else best
                break
    peak = max(range(len(rows)), key=contributions.__getitem__)
    assert best is not None  # the whole range holds all of it
    return rows[best[2]]["k"], rows[best[3]]["k"], rows[peak]["k"]
