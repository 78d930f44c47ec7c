"""Feature reuse in a trained DenseNet, as Huang et al. 2017 draw it in Fig. 5.

Within dense block b, layer l reads the block's input (source 0) and the k maps of each earlier layer
(sources 1..l-1). Cell (s, l) is the L1 norm of the weights of layer l's first conv that read source s's
channels, divided by the number of those channels: how much layer l leans on what source s made. The
transition after a block and, after the last block, the classifier read every source of the block too and
get rows of their own (`target` transition or classifier).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from experiments.record import write_rows


def _sources(in_channels: int, growth_rate: int, count: int) -> list[tuple[int, int]]:
    """(first channel, channel count) of sources 0..count-1 in a dense block's concatenation."""
    return [(0, in_channels)] + [(in_channels + (s - 1) * growth_rate, growth_rate) for s in range(1, count)]


def _cells(
    block: int, target: Any, weight: torch.Tensor, sources: list[tuple[int, int]]
) -> list[dict[str, Any]]:
    """One row per source of what `weight` (out, in, ...) reads from it."""
    magnitude = weight.detach().abs().float().transpose(0, 1).flatten(1).sum(1)  # per input channel
    return [
        {
            "block": block,
            "target": target,
            "source": s,
            "value": (magnitude[start : start + n].sum() / n).item(),
        }
        for s, (start, n) in enumerate(sources)
    ]


def feature_reuse(model: nn.Module) -> list[dict[str, Any]]:
    """The feature-reuse map of a DenseNet (`experiments.models.DenseNet`), row by row."""
    rows: list[dict[str, Any]] = []
    k = model.spec.growth_rate
    blocks = [m for name, m in model.features.named_children() if name.startswith("denseblock")]
    for b, block in enumerate(blocks, 1):
        layers = list(block.values())
        in_channels = layers[0].norm1.num_features
        for target, layer in enumerate(layers, 1):
            rows += _cells(b, target, layer.conv1.weight, _sources(in_channels, k, target))
        everything = _sources(in_channels, k, len(layers) + 1)
        if b < len(blocks):
            rows += _cells(
                b, "transition", model.features.get_submodule(f"transition{b}").conv.weight, everything
            )
        else:
            rows += _cells(b, "classifier", model.classifier.weight[:, :, None, None], everything)
    return rows


def write_feature_reuse(model: nn.Module, run_dir: Path) -> Path:
    """feature_reuse.csv in `run_dir`: the trained DenseNet's map."""
    rows = feature_reuse(model)
    write_rows(run_dir / "feature_reuse.csv", rows)
    return run_dir / "feature_reuse.csv"
