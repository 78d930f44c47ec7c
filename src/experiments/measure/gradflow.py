"""Gradient flow: the gradient norm of each part of the net (stem, stage1.., head), every few steps.

He et al. (2016, sec. 4.1) argue that deep plain nets with batch norm degrade although their gradients
keep healthy norms; these curves let a user check that claim for any net and depth.
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch


def part_norms(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The L2 norm of the gradients of each top-level child of `model`, as tensors on its device (a few
    multi-tensor kernels per part, not one per parameter)."""
    norms = {}
    for name, part in model.named_children():
        grads = [p.grad for p in part.parameters() if p.grad is not None]
        if grads:
            norms[name] = torch.nn.utils.get_total_norm(grads)
    return norms


class GradientFlow(pl.Callback):
    """Every `every` optimiser steps: the per-part gradient norms to the loggers (as `grad_norm/<part>`
    curves over steps); their per-epoch means go to metrics.csv (see EpochRecord)."""

    def __init__(self, every: int = 50) -> None:
        self.every = every
        self._sums: dict[str, torch.Tensor] = {}
        self._count = 0

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any
    ) -> None:
        if trainer.global_step % self.every:
            return
        norms = part_norms(pl_module.model)
        for name, norm in norms.items():
            self._sums[name] = self._sums.get(name, 0) + norm.detach()
        self._count += 1
        if trainer.loggers and trainer.is_global_zero:
            read = torch.stack(list(norms.values())).tolist()  # one device sync for all parts
            values = {f"grad_norm/{name}": value for name, value in zip(norms, read, strict=True)}
            for logger in trainer.loggers:
                logger.log_metrics(values, step=trainer.global_step)

    def end_epoch(self) -> dict[str, float]:
        """This epoch's mean norm per part (one device sync per epoch)."""
        means = {name: (total / self._count).item() for name, total in self._sums.items()}
        self._sums, self._count = {}, 0
        return {f"grad_norm/{name}": mean for name, mean in means.items()}
