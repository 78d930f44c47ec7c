"""What a model costs, counted exactly and device-independently on tensors without data.

Fake and meta tensors have shapes and dtypes but no storage, so these counts take no memory and almost no
time even for nets whose training step would not fit the machine, and give the same number on a laptop and
a GPU.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.func import functional_call
from torch.utils.flop_counter import FlopCounterMode

from experiments.precision import DTYPES


def count_params(model: nn.Module) -> int:
    """Trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def flops_per_image(model: nn.Module, image_shape: tuple[int, int, int]) -> int:
    """Forward FLOPs for one image, a multiply-add counting 2 (torch's FlopCounterMode); the papers' "FLOPs"
    are multiply-adds, half of this."""
    counter = FlopCounterMode(display=False)
    meta = copy.deepcopy(model).to("meta").eval()  # eval: batch norm takes a batch of one on 1x1 maps
    with counter, torch.no_grad():
        meta(torch.empty(1, *image_shape, device="meta"))
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


def activation_bytes(model: nn.Module, batch_shape: tuple[int, ...], precision: str = "32-true") -> int:
    """Bytes held for backward in one training step (forward and loss) of `batch_shape` at `precision`.

    This is the memory that grows quadratically with depth in a naive DenseNet and linearly in a
    memory-efficient one; parameters are not counted. Mixed precisions count what autocast keeps (by
    PyTorch's CPU autocast rules, which cast these nets' convolutions as the CUDA rules do).
    """
    autocast, dtype = (
        getattr(torch, name) if name else None for name in DTYPES.get(precision, DTYPES["32-true"])
    )
    with FakeTensorMode(allow_non_fake_inputs=True):
        state = {
            name: torch.empty(
                t.shape, dtype=dtype if t.is_floating_point() else t.dtype, requires_grad=t.requires_grad
            )
            for name, t in [*model.named_parameters(), *model.named_buffers()]
        }
        images = torch.empty(batch_shape, dtype=dtype)
        labels = torch.zeros(batch_shape[0], dtype=torch.long)

        def step() -> torch.Tensor:
            with torch.autocast("cpu", dtype=autocast or torch.bfloat16, enabled=autocast is not None):
                return F.cross_entropy(functional_call(model, state, (images,)), labels)

        was_training = model.training
        try:
            model.train()
            return saved_bytes(step, exclude=[state[name] for name, _ in model.named_parameters()])
        finally:
            model.train(was_training)


def record_counts(model: nn.Module, data: Any, precision: str, flops: bool = True) -> dict[str, int]:
    """A run record's counts of `model` for batches of `data` (its batch_size, in_channels, image_size):
    parameters and, with `flops`, FLOPs and MACs per image and the bytes held for backward in fp32 and at
    `precision` (traced once where the two keep the same dtypes)."""
    if not flops:
        return {"params": count_params(model)}
    batch = (data.batch_size, data.in_channels, data.image_size, data.image_size)
    flops_per = flops_per_image(model, batch[1:])
    fp32 = activation_bytes(model, batch)
    same = DTYPES.get(precision, DTYPES["32-true"]) == DTYPES["32-true"]
    return {
        "params": count_params(model),
        "flops_per_image": flops_per,
        "macs_per_image": flops_per // 2,
        "activation_bytes": fp32,
        "activation_bytes_at_precision": fp32 if same else activation_bytes(model, batch, precision),
    }
