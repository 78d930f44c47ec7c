"""The LightningModule: cross-entropy classification with the papers' optimiser and step-wise schedule."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import partial

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from experiments.step_graph import GraphedBackward, StepGraph


def lr_factor(
    step: int,
    total_steps: int,
    name: str,
    warmup_steps: int = 0,
    milestones: Sequence[float] = (),
    gamma: float = 0.1,
) -> float:
    """The learning rate at `step` as a multiple of the base rate.

    multistep: times `gamma` at each milestone (a fraction of `total_steps`); cosine: decays to 0;
    constant: 1. The first `warmup_steps` run at a tenth of the rate, as He et al. warm up ResNet-110.
    """
    if step < warmup_steps:
        return 0.1
    if name == "multistep":
        return gamma ** sum(step >= m * total_steps for m in milestones)
    if name == "cosine":
        return 0.5 * (1 + math.cos(math.pi * min(step / max(total_steps, 1), 1.0)))
    return 1.0


class Diverged(Exception):
    """The training loss became NaN or infinite: the run cannot recover."""


# A GPU waits for nothing while it trains; checking the loss makes it wait, so there it happens every
# this many steps (a NaN persists: the next check catches it). On a CPU every step is checked.
GPU_LOSS_CHECK_EVERY = 50


class Classifier(GraphedBackward, pl.LightningModule):
    """Trains `model` with cross-entropy; logs loss and accuracy per split and epoch, and the lr.

    With `cuda_graph`, training steps compute their gradients with a StepGraph (one CUDA graph a step).
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        schedule: dict,
        channels_last: bool = False,
        cuda_graph: bool = False,
    ) -> None:
        super().__init__()
        self.model = model
        self.optimizer = optimizer
        self.schedule = schedule
        self.channels_last = channels_last
        self.cuda_graph = cuda_graph
        # per split, this epoch's steps: mean loss and correct predictions (on the device), and images
        self._steps: dict[str, list[tuple[torch.Tensor, torch.Tensor, int]]] = {}

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return self.model(images)

    def _loss(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch's mean loss and its count of correct predictions."""
        logits = self(images)
        return F.cross_entropy(logits, labels), (logits.argmax(1) == labels).sum()

    def _step(self, batch: tuple[torch.Tensor, torch.Tensor], split: str) -> torch.Tensor:
        images, labels = batch
        if split == "train" and self.step_graph is not None:
            loss, correct = self.step_graph(images, labels)
        else:
            loss, correct = self._loss(images, labels)
        # Kept per step and summed once an epoch (log_epoch), not logged with self.log every step: Lightning's
        # logging costs 2-3 ms of CPU a call, as long as a whole ResNet-56 step on a GPU with CUDA graphs; and
        # every tensor operation here is one more kernel launch per step.
        self._steps.setdefault(split, []).append((loss.detach(), correct, len(labels)))
        return loss

    def log_epoch(self, split: str) -> None:
        """Log `split`'s mean loss and accuracy over this epoch's images on all ranks (one device sync).

        val and test log from their epoch-end hooks; train from EpochRecord, which must see the means:
        Lightning calls callbacks' on_train_epoch_end before the module's.
        """
        if not (steps := self._steps.pop(split, [])):
            return
        losses, corrects, batch_sizes = zip(*steps, strict=True)
        images = torch.tensor(batch_sizes, dtype=torch.float, device=self.device)
        totals = torch.stack(
            [(torch.stack(losses).float() * images).sum(), torch.stack(corrects).sum().float(), images.sum()]
        )
        loss_sum, correct, count = self.trainer.strategy.reduce(totals, reduce_op="sum").tolist()
        self.log_dict({f"{split}/loss": loss_sum / count, f"{split}/acc": correct / count})

    def on_fit_start(self) -> None:
        if self.cuda_graph:
            self.step_graph = StepGraph(self._loss, self.parameters())

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._step(batch, "test")

    def on_train_batch_end(self, outputs: dict[str, torch.Tensor], batch: object, batch_idx: int) -> None:
        step = self.trainer.global_step
        if self.device.type == "cuda" and step % GPU_LOSS_CHECK_EVERY:
            return
        loss = outputs["loss"].detach()
        # all ranks stop together, whichever saw it first
        if self.trainer.strategy.reduce_boolean_decision(not torch.isfinite(loss).item(), all=False):
            raise Diverged(
                f"training loss became {loss.item()} at step {step} (epoch {self.current_epoch}); "
                "try a lower optim.lr or a warm-up (schedule.warmup_steps)"
            )

    def on_validation_epoch_end(self) -> None:
        self.log_epoch("val")

    def on_test_epoch_end(self) -> None:
        self.log_epoch("test")

    def on_train_epoch_start(self) -> None:
        self._steps.pop("train", None)  # left over if nothing logged the last epoch (log_epoch)
        self.log("lr", self.optimizers().param_groups[0]["lr"], on_step=False, on_epoch=True, sync_dist=True)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        # A saved optimiser state carries its update's implementation (fused, foreach), and loading it would
        # override this run's: a run saved on a GPU (fused) could not resume on a CPU as configured, nor
        # obey +optim.foreach=true. Lightning loads the optimiser state after this hook.
        built = self.optimizer.keywords if isinstance(self.optimizer, partial) else {}
        for state in checkpoint.get("optimizer_states", []):
            for group in state["param_groups"]:
                for key in ("fused", "foreach"):
                    if key in group:
                        group[key] = built.get(key)

    def configure_optimizers(self) -> dict:
        optimizer = self.optimizer(self.parameters())
        factor = partial(lr_factor, total_steps=self.trainer.estimated_stepping_batches, **self.schedule)
        scheduler = LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
