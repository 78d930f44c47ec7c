"""Pieces both families share: initialised convs and heads, recomputation in backward, the block list."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint


def conv(in_channels: int, out_channels: int, kernel: int, stride: int = 1) -> nn.Conv2d:
    """A bias-free conv with He et al.'s initialisation (normal, fan-out), as the papers' Torch code."""
    layer = nn.Conv2d(in_channels, out_channels, kernel, stride, padding=kernel // 2, bias=False)
    if not layer.weight.is_meta:  # a net on the meta device (measured, not run) has no values to draw
        nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")
    return layer


def classifier(in_features: int, num_classes: int) -> nn.Linear:
    """The final FC layer: PyTorch's default weights, a zero bias."""
    layer = nn.Linear(in_features, num_classes)
    nn.init.zeros_(layer.bias)
    return layer


@dataclass(frozen=True)
class Block:
    """One step of a net's forward path, named as its state dict names it.

    The signal, lesion and feature-reuse instruments share this vocabulary: a net's `blocks()` lists the
    stem, then each residual or plain block, dense layer and transition in forward order, then the head.
    """

    name: str  # the module whose output is the block's output: "layer2.0", "features.denseblock1.denselayer3"
    kind: str  # stem | residual | plain | dense_layer | transition | head
    stage: int  # 0 for the stem, 1.. for the stages (a transition belongs to the dense block before it)
    weights: tuple[str, ...]  # the modules holding its parameters
    downsamples: bool = False  # changes the feature maps' size or count (a plain one cannot be deleted)

    @property
    def part(self) -> str:
        """stem, stage1, ..., head: the coarse part of the net the block is in."""
        return self.kind if self.kind in ("stem", "head") else f"stage{self.stage}"


@contextlib.contextmanager
def kept_statistics(norms: Iterable[nn.BatchNorm2d]) -> Iterator[None]:
    """Batch norms' running statistics as they were on entering: a recomputation in backward runs batch norm
    in training mode again, which would count the batch twice in them."""
    norms = [n for n in norms if n.track_running_stats and n.running_mean is not None]
    saved = [(n.running_mean.clone(), n.running_var.clone(), n.num_batches_tracked.clone()) for n in norms]
    try:
        yield
    finally:
        with torch.no_grad():
            for norm, (mean, var, count) in zip(norms, saved, strict=True):
                norm.running_mean.copy_(mean)
                norm.running_var.copy_(var)
                norm.num_batches_tracked.copy_(count)


def recomputed(function: Callable[..., Tensor], module: nn.Module, *inputs: Tensor) -> Tensor:
    """`function(*inputs)`, keeping only `inputs` for backward and recomputing the rest there (activation
    checkpointing); the batch norms of `module` update their running statistics once, as without it."""
    norms = [m for m in module.modules() if isinstance(m, nn.BatchNorm2d)]
    contexts = lambda: (contextlib.nullcontext(), kept_statistics(norms))  # noqa: E731  (forward, recompute)
    return checkpoint(function, *inputs, use_reentrant=False, context_fn=contexts)


def wants_recompute(module: nn.Module, *inputs: Tensor) -> bool:
    """Whether recomputing in backward saves anything: training, with gradients flowing into the inputs."""
    return module.training and torch.is_grad_enabled() and any(x.requires_grad for x in inputs)
