"""What a model costs, counted exactly and device-independently on a copy of it on the meta device.

A meta tensor has a shape and a dtype but no data, so these counts take no memory and almost no time even
for nets whose training step would not fit the machine, and give the same number on a laptop and a GPU.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_params(model: nn.Module) -> int:
    """Trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _on_meta(model: nn.Module) -> nn.Module:
    return copy.deepcopy(model).to("meta").train()


def flops_per_image(model: nn.Module, image_shape: tuple[int, int, int]) -> int:
    """Forward FLOPs for one image (a multiply-add counts as 2), by torch's FlopCounterMode."""
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():  # eval mode: batch norm takes a batch of one even on 1x1 feature maps
        _on_meta(model).eval()(torch.empty(1, *image_shape, device="meta"))
    return counter.get_total_flops()


def saved_bytes(compute: Callable[[], object], exclude: Iterable[torch.Tensor] = ()) -> int:
    """Bytes autograd saves for backward while `compute()` runs, each storage counted once.

    Every saved tensor passes a saved-tensors hook; an in-place ReLU saves the very storage the layer
    before it saved, so storages, not tensors, are counted. Tensors sharing storage with `exclude`
    (parameters) are not counted.
    """
    excluded = {t.untyped_storage()._cdata for t in exclude}
    held: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage._cdata not in excluded:
            held[storage._cdata] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        compute()
    return sum(held.values())


def activation_bytes(model: nn.Module, batch_shape: tuple[int, int, int, int]) -> int:
    """Bytes held for backward in one float32 training step (forward and loss) of `batch_shape`.

    This is the memory that grows quadratically with depth in a naive DenseNet and linearly in a
    memory-efficient one; parameters are not counted.
    """
    meta = _on_meta(model)
    images = torch.empty(batch_shape, device="meta")
    labels = torch.zeros(batch_shape[0], dtype=torch.long, device="meta")
    return saved_bytes(lambda: F.cross_entropy(meta(images), labels), exclude=meta.parameters())
