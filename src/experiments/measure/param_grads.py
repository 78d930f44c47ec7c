"""Parameter-gradient norms by part of the net (stem, stage1.., head), every few optimiser steps.

These are the L2 norms of each part's *parameter* gradients. Under batch norm a weight's gradient scales
as 1/||W||, and parts of different sizes do not compare, so they say little about whether the signal
vanishes or explodes: the per-block signals (measure/signals.py, signals.csv) measure that. They stay as a
cheap health check of a run.
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn

PREFIX = "param_grad_norm/"


def part_parameters(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """Each part's parameters, in the net's order (`model.blocks()` says which module is in which part)."""
    parts: dict[str, list[nn.Parameter]] = {}
    for block in model.blocks():
        for name in block.weights:
            parts.setdefault(block.part, []).extend(model.get_submodule(name).parameters())
    return parts


def part_norms(model: nn.Module) -> dict[str, torch.Tensor]:
    """The L2 norm of each part's parameter gradients, as tensors on the model's device (a few multi-tensor
    kernels per part, not one per parameter)."""
    norms = {}
    for part, params in part_parameters(model).items():
        if grads := [p.grad for p in params if p.grad is not None]:
            norms[part] = torch.nn.utils.get_total_norm(grads)
    return norms


class ParamGradNorms(pl.Callback):
    """Every `every` optimiser steps: each part's parameter-gradient norm to the loggers (as
    `param_grad_norm/<part>` curves over steps); their per-epoch means go to metrics.csv."""

    def __init__(self, every: int) -> None:
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
        if trainer.loggers and trainer.is_global_zero and norms:
            read = torch.stack(list(norms.values())).tolist()  # one device sync for all parts
            values = {f"{PREFIX}{name}": value for name, value in zip(norms, read, strict=True)}
            for logger in trainer.loggers:
                logger.log_metrics(values, step=trainer.global_step)

    def end_epoch(self) -> dict[str, float]:
        """This epoch's mean norm per part (one device sync per epoch)."""
        means = {name: (total / self._count).item() for name, total in self._sums.items()}
        self._sums, self._count = {}, 0
        return {f"{PREFIX}{name}": mean for name, mean in means.items()}


def per_epoch(rows: list[dict]) -> dict[str, list[float | None]] | None:
    """Each part's mean norm in each epoch, from metrics.csv's rows (the columns `end_epoch` names), in the
    net's order: stem, stage1, stage2, ..., head; None where no row has any."""
    stages = sorted(
        int(key.removeprefix(f"{PREFIX}stage"))
        for key in {k for row in rows for k in row}
        if key.startswith(f"{PREFIX}stage")
    )
    parts = ["stem", *(f"stage{i}" for i in stages), "head"]
    norms = {part: [row.get(f"{PREFIX}{part}") for row in rows] for part in parts}
    return {part: values for part, values in norms.items() if any(v is not None for v in values)} or None
