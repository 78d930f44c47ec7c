"""Signal propagation per block: the forward signal, the backward signal and how fast each block learns.

Measured on a step with hooks on each block of `model.blocks()` (index 0 is the stem's output, then each
residual or plain block, dense layer and transition in forward order; the head counts for its weights only):

- response_std: the standard deviation of the block's output over the batch;
- conv_response_std (ResNets and plain nets): that of each 3x3 conv's output after its batch norm, before any
  ReLU or addition, as He et al. 2016 plot in Fig. 7; its `index` counts those convs from the input (1 is the
  stem's), its `block` names the conv;
- grad_norm: for each image, the L2 norm of d(sum of the per-image losses)/d(block output), averaged over the
  batch: the backward signal itself, not a parameter gradient;
- weight_norm and weight_grad_norm: the L2 norms of the block's conv and linear weights and of their
  gradients (batch norm's scales and shifts left out: a conv weight's gradient scales as 1/||W|| under it);
- update_ratio: ||W after the optimiser step - W before|| / ||W before||: how fast the block learns.

All go to signals.csv (step,block,index,quantity,value: one value a row), step 0 being the first step, at
initialisation.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor, nn

from experiments.models.layers import Block
from experiments.record import read_rows, write_rows

DEFAULT_STEPS = 50  # signal steps in a run when measure.signals_every is auto...
SHARE = 10  # ...and at most one step in this many: a short run's signal steps cost it at most a few percent


def signal_steps(total: int, every: int | str) -> set[int]:
    """Which optimiser steps of `total` are measured: `auto`, about DEFAULT_STEPS log-spaced (dense early,
    where a net's fate is decided; thousands of rows for a 64k-step run, not millions), at most one step in
    SHARE; an integer k, every k-th step; 0, none. Step 0, the initialisation, is always among them."""
    if every == 0 or total < 1:
        return set()
    if every != "auto":
        return set(range(0, total, int(every)))
    count = max(2, min(DEFAULT_STEPS, total // SHARE))
    return {0} | {round(math.exp(i * math.log(total) / (count - 1))) - 1 for i in range(count)}


def _weights(model: nn.Module, block: Block) -> list[nn.Parameter]:
    """The conv and linear weights of `block`."""
    return [
        module.weight
        for name in block.weights
        for module in model.get_submodule(name).modules()
        if isinstance(module, (nn.Conv2d, nn.Linear))
    ]


def _norm(tensors: list[Tensor]) -> float:
    return torch.linalg.vector_norm(
        torch.stack([torch.linalg.vector_norm(t.float()) for t in tensors])
    ).item()


def three_by_three_norms(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(conv name, its batch norm) for each 3x3 conv of a ResNet or plain net, from the input on."""
    if not hasattr(model, "layer1"):
        return []
    found = [("conv1", model.bn1)] if model.conv1.kernel_size == (3, 3) else []
    for i, stage in enumerate(model.stages, 1):
        for j, block in enumerate(stage):
            for k in (1, 2, 3):
                conv = getattr(block, f"conv{k}", None)
                if conv is not None and conv.kernel_size == (3, 3):
                    found.append((f"layer{i}.{j}.conv{k}", getattr(block, f"bn{k}")))
    return found


class StepSignals:
    """Hooks on a net for one training step: each block's response and per-image output gradient, each 3x3
    conv's response. `attach()` before the forward pass, `detach()` after the backward pass, then
    `rows(step)`. `loss_scale` undoes a GradScaler's scaling of the backward signal."""

    def __init__(self, model: nn.Module, loss_scale: float = 1.0) -> None:
        self.model, self.loss_scale = model, loss_scale
        self.blocks = [b for b in model.blocks() if b.kind != "head"]
        self.values: list[tuple[str, int, str, Tensor]] = []
        self.handles: list[Any] = []

    def attach(self) -> None:
        for index, block in enumerate(self.blocks):
            module = self.model.get_submodule(block.name)
            self.handles.append(module.register_forward_hook(self._block_hook(index, block.name)))
        for index, (name, norm) in enumerate(three_by_three_norms(self.model), 1):
            self.handles.append(norm.register_forward_hook(self._conv_hook(index, name)))

    def detach(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []

    def _block_hook(self, index: int, name: str) -> Any:
        def hook(module: nn.Module, inputs: Any, output: Tensor) -> None:
            self.values.append((name, index, "response_std", output.detach().float().std()))
            if output.requires_grad:
                output.register_hook(self._grad_hook(index, name))

        return hook

    def _grad_hook(self, index: int, name: str) -> Any:
        def hook(grad: Tensor) -> None:
            # the loss is the batch's mean: its gradient is that of the sum over images divided by their count
            per_image = grad.detach().float().flatten(1).norm(dim=1) * len(grad) / self.loss_scale
            self.values.append((name, index, "grad_norm", per_image.mean()))

        return hook

    def _conv_hook(self, index: int, name: str) -> Any:
        def hook(module: nn.Module, inputs: Any, output: Tensor) -> None:
            self.values.append((name, index, "conv_response_std", output.detach().float().std()))

        return hook

    def rows(self, step: int) -> list[dict[str, Any]]:
        """The rows of this step's hooked values (one device sync for all), in forward order."""
        if not self.values:
            return []
        read = torch.stack([value for *_, value in self.values]).tolist()
        rows = [
            {"step": step, "block": name, "index": index, "quantity": quantity, "value": value}
            for (name, index, quantity, _), value in zip(self.values, read, strict=True)
        ]
        self.values = []
        order = {"response_std": 0, "conv_response_std": 1, "grad_norm": 2}
        return sorted(rows, key=lambda r: (order[r["quantity"]], r["index"]))


class WeightSignals:
    """Each block's weight norm and gradient norm before an optimiser step, and its update ratio after."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.blocks = model.blocks()

    def before_step(self, step: int) -> list[dict[str, Any]]:
        self.step, self.before = step, {}
        rows = []
        for index, block in enumerate(self.blocks):
            weights = [w for w in _weights(self.model, block) if w.requires_grad]
            if not weights:
                continue
            self.before[index] = [w.detach().clone() for w in weights]
            rows.append(self._row(index, block, "weight_norm", _norm(weights)))
            if grads := [w.grad for w in weights if w.grad is not None]:
                rows.append(self._row(index, block, "weight_grad_norm", _norm(grads)))
        return rows

    def after_step(self) -> list[dict[str, Any]]:
        rows = []
        for index, before in self.before.items():
            block = self.blocks[index]
            weights = [w for w in _weights(self.model, block) if w.requires_grad]
            change = _norm([w.detach() - b for w, b in zip(weights, before, strict=True)])
            rows.append(self._row(index, block, "update_ratio", change / max(_norm(before), 1e-30)))
        self.before = {}
        return rows

    def _row(self, index: int, block: Block, quantity: str, value: float) -> dict[str, Any]:
        return {"step": self.step, "block": block.name, "index": index, "quantity": quantity, "value": value}


class SignalRecorder(pl.Callback):
    """signals.csv for a training run: every quantity above at the signal steps (`measure.signals_every`),
    written at each epoch's end; on resume, the rows of steps that run again are dropped. The first and last
    block's gradient norm and response go to the loggers too, as `signals/...` curves over steps."""

    def __init__(self, path: Path, every: int | str = "auto") -> None:
        self.path, self.every = path, every
        self.steps: set[int] = set()
        self.rows: list[dict[str, Any]] = []
        self._step_signals: StepSignals | None = None

    def is_signal_step(self, step: int) -> bool:
        return step in self.steps

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.steps = signal_steps(int(trainer.estimated_stepping_batches), self.every)
        self.rows = [r for r in read_rows(self.path) if int(r["step"]) < trainer.global_step]
        self.weights = WeightSignals(pl_module.model)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *_: Any) -> None:
        if trainer.global_step in self.steps and trainer.is_global_zero:
            scaler = getattr(trainer.precision_plugin, "scaler", None)
            self._step_signals = StepSignals(pl_module.model, scaler.get_scale() if scaler else 1.0)
            self._step_signals.attach()

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any
    ) -> None:
        if self._step_signals is not None:
            self._step_signals.detach()
            step = trainer.global_step
            self.rows += self._step_signals.rows(step) + self.weights.before_step(step)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *_: Any) -> None:
        if self._step_signals is None:
            return
        self.rows += self.weights.after_step()
        self._log(trainer, trainer.global_step - 1)
        self._step_signals = None

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero:
            write_rows(self.path, self.rows)

    def _log(self, trainer: pl.Trainer, step: int) -> None:
        this_step = [
            r for r in self.rows if int(r["step"]) == step and r["quantity"] in ("grad_norm", "response_std")
        ]
        values = {}
        for quantity in ("grad_norm", "response_std"):
            chosen = [r for r in this_step if r["quantity"] == quantity]
            if chosen:
                values[f"signals/{quantity}/first"] = chosen[0]["value"]
                values[f"signals/{quantity}/last"] = chosen[-1]["value"]
        for logger in trainer.loggers:
            logger.log_metrics(values, step=step)
