"""Lesion study (Veit et al. 2016): a trained net's test error with blocks deleted at test time.

Deleting a residual block keeps its shortcut only: y = relu(shortcut(x)), which for an identity shortcut is
y = x (x is already a ReLU's output), and for a downsampling block the zero-padded or projected identity. A
plain block that keeps its input's shape is replaced by the identity; one that changes it cannot be deleted.
A dense layer is deleted by zeroing the weights of every later layer, transition and classifier that read its
maps, so that nothing downstream sees them. The stem, transitions and the head are never deleted.

Blocks are numbered as in signals.csv (`model.blocks()`: 0 is the stem).
"""

from __future__ import annotations

import copy
import random
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from experiments.models.layers import Block

UNDELETABLE = {
    "plain": "a plain block that changes the maps' size or count has no shortcut to fall back on: kept",
    "transition": "a transition changes the maps' size and count: kept",
}


def deletable(block: Block) -> bool:
    return block.kind in ("residual", "dense_layer") or (block.kind == "plain" and not block.downsamples)


def lesion_targets(model: nn.Module) -> list[tuple[int, Block]]:
    """(index, block) of every block a lesion study reports on: all but the stem and the head."""
    return [(i, b) for i, b in enumerate(model.blocks()) if b.kind not in ("stem", "head")]


def _skip_hook(block: nn.Module) -> Any:
    """A forward hook that replaces a residual or plain block's output by what its shortcut passes."""

    def hook(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> Tensor:
        (x,) = inputs
        if not getattr(block, "residual", False):
            return x
        return F.relu(x if block.downsample is None else block.downsample(x))

    return hook


def _dense_layer_channels(model: nn.Module, name: str) -> tuple[str, int, int]:
    """(dense block name, first channel, count) of the maps dense layer `name` adds to its block."""
    block_name, layer = name.rsplit(".", 1)
    block = model.get_submodule(block_name)
    position = list(block.keys()).index(layer)
    start = next(iter(block.values())).norm1.num_features + position * model.spec.growth_rate
    return block_name, start, model.spec.growth_rate


def _readers(model: nn.Module, block_name: str) -> list[nn.Module]:
    """The layers that read a dense block's maps directly: its own layers, then the transition after it or
    (after the last block) the classifier."""
    block = model.get_submodule(block_name)
    transition = block_name.replace("denseblock", "transition")
    readers = [layer.conv1 for layer in block.values()]
    try:
        readers.append(model.get_submodule(transition).conv)
    except AttributeError:
        readers.append(model.classifier)
    return readers


@contextmanager
def deleted(model: nn.Module, indices: list[int]) -> Iterator[nn.Module]:
    """`model` with the blocks at `indices` deleted, for the block; the original is left as it was."""
    blocks = model.blocks()
    dense = [blocks[i].name for i in indices if blocks[i].kind == "dense_layer"]
    net = copy.deepcopy(model) if dense else model
    with torch.no_grad():
        for name in dense:
            block_name, start, count = _dense_layer_channels(net, name)
            for reader in _readers(net, block_name):
                if reader.weight.shape[1] > start:
                    reader.weight[:, start : start + count] = 0
    handles = [
        net.get_submodule(blocks[i].name).register_forward_hook(_skip_hook(net.get_submodule(blocks[i].name)))
        for i in indices
        if blocks[i].kind != "dense_layer"
    ]
    try:
        yield net
    finally:
        for handle in handles:
            handle.remove()


@torch.no_grad()
def test_error(model: nn.Module, batches: list[tuple[Tensor, Tensor]]) -> float:
    """The error of `model` (in eval mode) on `batches`."""
    model.eval()
    wrong = total = 0
    for images, labels in batches:
        wrong += (model(images).argmax(1) != labels).sum().item()
        total += len(labels)
    return wrong / total


def lesion_rows(
    model: nn.Module, batches: list[tuple[Tensor, Tensor]], draws: int, seed: int, max_k: int | None
) -> list[dict[str, Any]]:
    """lesion.csv's rows: the intact error, each block deleted alone (undeletable ones with the reason and
    no error), then k random deletable blocks for k from 1 to half of them (or `max_k`), `draws` seeded
    draws each."""
    rows = [{"kind": "intact", "k": 0, "blocks": "", "test_error": test_error(model, batches), "note": ""}]
    targets = lesion_targets(model)
    for index, block in targets:
        if not deletable(block):
            rows.append(
                {
                    "kind": "single",
                    "k": 1,
                    "blocks": str(index),
                    "test_error": "",
                    "note": UNDELETABLE[block.kind],
                }
            )
            continue
        with deleted(model, [index]) as net:
            rows.append(
                {
                    "kind": "single",
                    "k": 1,
                    "blocks": str(index),
                    "test_error": test_error(net, batches),
                    "note": "",
                }
            )
    candidates = [index for index, block in targets if deletable(block)]
    draw = random.Random(seed)
    for k in range(1, min(len(candidates) // 2, max_k or len(candidates)) + 1):
        for _ in range(draws):
            chosen = sorted(draw.sample(candidates, k))
            with deleted(model, chosen) as net:
                error = test_error(net, batches)
            rows.append(
                {
                    "kind": "random",
                    "k": k,
                    "blocks": ";".join(map(str, chosen)),
                    "test_error": error,
                    "note": "",
                }
            )
    return rows
