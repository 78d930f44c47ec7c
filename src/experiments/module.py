"""The LightningModule: cross-entropy classification with the papers' optimiser and step-wise schedule."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from experiments.models.legacy import migrate
from experiments.step_graph import StepGraph


def lr_factor(
    step: int,
    total_steps: int,
    name: str,
    warmup_steps: int = 0,
    milestones: Sequence[float] = (),
    gamma: float = 0.1,
    warming: bool = False,
    **_: Any,
) -> float:
    """The learning rate at `step` as a multiple of the base rate.

    multistep: times `gamma` at each milestone (a fraction of `total_steps`); cosine: decays to 0;
    constant: 1. A tenth of the rate during a warm-up: the first `warmup_steps`, or while `warming` (He et
    al. warm ResNet-110 up at lr 0.01 until its training error is below 80%).
    """
    if warming or step < warmup_steps:
        return 0.1
    if name == "multistep":
        return gamma ** sum(step >= m * total_steps for m in milestones)
    if name == "cosine":
        return 0.5 * (1 + math.cos(math.pi * min(step / max(total_steps, 1), 1.0)))
    return 1.0


class Diverged(Exception):
    """The training loss became NaN or infinite: the run cannot recover."""


# A GPU waits for nothing while it trains; reading the loss makes it wait, so there the loss is checked every
# this many steps (a NaN persists: the next check catches it), and so is a warm-up's training error. On a
# CPU every step is checked.
GPU_CHECK_EVERY = 50
WARMUP_WINDOW = 10  # a warm-up ends when the training error over this many batches is below its threshold


class EpochTotals:
    """One split's loss and correct predictions over an epoch, kept on the device and read once an epoch."""

    def __init__(self) -> None:
        self.steps: list[tuple[torch.Tensor, torch.Tensor, int]] = []

    def add(self, loss: torch.Tensor, correct: torch.Tensor, images: int) -> None:
        self.steps.append((loss.detach(), correct, images))

    def means(self, strategy: Any, device: torch.device) -> dict[str, float]:
        """Mean loss and accuracy over the epoch's images on all ranks (one device sync); then empty."""
        if not self.steps:
            return {}
        losses, corrects, sizes = zip(*self.steps, strict=True)
        self.steps = []
        images = torch.tensor(sizes, dtype=torch.float, device=device)
        totals = torch.stack(
            [(torch.stack(losses).float() * images).sum(), torch.stack(corrects).sum().float(), images.sum()]
        )
        loss_sum, correct, count = strategy.reduce(totals, reduce_op="sum").tolist()
        return {"loss": loss_sum / count, "acc": correct / count}


class Classifier(pl.LightningModule):
    """Trains `model` with cross-entropy: one optimiser step a batch, the whole of it in `training_step`.

    `compile`: torch.compile's arguments, the model compiled once when fitting begins (counted uncompiled).
    With `cuda_graph`, a step's forward, loss and backward run as a StepGraph (one CUDA graph a step),
    except on the steps `eager_steps` names (instruments that hook into the forward and backward pass).
    `clip`: Lightning's gradient clipping (value, algorithm), applied after a GradScaler unscales.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        schedule: dict[str, Any],
        channels_last: bool = False,
        cuda_graph: bool = False,
        eager_steps: Callable[[int], bool] = lambda step: False,
        clip: tuple[float, str] | None = None,
        compile: dict[str, str] | None = None,
    ) -> None:
        super().__init__()
        self.automatic_optimization = False  # training_step is the whole step: Lightning runs none of it
        self.model, self.optimizer, self.schedule, self.clip = model, optimizer, schedule, clip
        self.compile_options = compile
        self.channels_last, self.cuda_graph, self.eager_steps = channels_last, cuda_graph, eager_steps
        self.step_graph: StepGraph | None = None
        self.totals = {split: EpochTotals() for split in ("train", "val", "test")}
        self.val_metrics: dict[str, float] = {}  # the last validation's, for the epoch's row
        self.epoch_lr: float | None = None
        # He et al.'s warm-up rule: the step at which the training error fell below the threshold
        self.warmup_threshold: float | None = schedule.get("warmup_until_train_error")
        self.warmed_up_at: int | None = None
        self._recent_errors: list[torch.Tensor] = []

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return self.model(images)

    def compute_loss(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch's mean loss and its count of correct predictions. With cuda_graph, this is what the
        graph captures: a training step's gradients are those of this loss, and of nothing else."""
        logits = self(images)
        return F.cross_entropy(logits, labels), (logits.argmax(1) == labels).sum()

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        images, labels = batch
        optimizer, schedule = self.optimizers(), self.lr_schedulers()
        share_buffers(self.model, self.trainer.world_size)  # DDP: rank 0's batch-norm statistics
        if self.step_graph is not None:  # forward, loss and backward: one CUDA graph replay
            loss, correct = self.step_graph(images, labels, eager=self.eager_steps(self.global_step))
        else:
            loss, correct = self.compute_loss(images, labels)  # forward and loss
            optimizer.zero_grad()  # here, as in a hand-written loop: the last gradients outlive the forward
            self.manual_backward(loss)  # backward (scaled first under a GradScaler)
        optimizer.step()  # the hooks before the update (gradient norms, signals, clipping), then the update
        schedule.step()  # the next step's learning rate: a warm-up the check below ends still holds for it
        # Kept per step and summed once an epoch, not logged with self.log every step: Lightning's logging
        # costs 2-3 ms of CPU a call, as long as a whole ResNet-56 step on a GPU with CUDA graphs.
        self.totals["train"].add(loss, correct, len(labels))
        self.check(loss, correct, len(labels))
        return loss

    def check(self, loss: torch.Tensor, correct: torch.Tensor, images: int) -> None:
        """Stop a run whose training loss is no longer finite (Diverged); end a warm-up once the training
        error over its window is below the threshold. All ranks decide together."""
        warming = self.warmup_threshold is not None and self.warmed_up_at is None
        if warming:
            self._recent_errors.append(1 - correct / images)
        step = self.global_step
        if self.device.type == "cuda" and step % GPU_CHECK_EVERY and len(self._recent_errors) < WARMUP_WINDOW:
            return
        if self.trainer.strategy.reduce_boolean_decision(not torch.isfinite(loss).item(), all=False):
            raise Diverged(
                f"training loss became {loss.item()} at step {step} (epoch {self.current_epoch}); "
                "try a lower optim.lr or a warm-up (schedule.warmup_steps)"
            )
        if len(self._recent_errors) >= WARMUP_WINDOW:
            window = torch.stack(self._recent_errors[-WARMUP_WINDOW:]).mean()
            self._recent_errors = []
            if self.trainer.strategy.reduce(window, reduce_op="mean").item() < self.warmup_threshold:
                self.warmed_up_at = step

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        if self.clip is not None:  # here: after a GradScaler has unscaled the gradients
            self.clip_gradients(optimizer, *self.clip)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        loss, correct = self.compute_loss(*batch)
        self.totals["val"].add(loss, correct, len(batch[1]))

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        loss, correct = self.compute_loss(*batch)
        self.totals["test"].add(loss, correct, len(batch[1]))

    def split_metrics(self, split: str) -> dict[str, float]:
        """`split`'s mean loss and accuracy since it was last asked, as `train/loss`, `train/acc`."""
        means = self.totals[split].means(self.trainer.strategy, self.device)
        return {f"{split}/{key}": value for key, value in means.items()}

    def epoch_metrics(self) -> dict[str, float]:
        """The epoch's row of the module's own figures: train and val loss and accuracy, and the learning
        rate the epoch began with (all of metrics.csv's that the module computes; every rank calls it)."""
        metrics = {**self.split_metrics("train"), **self.val_metrics}
        self.val_metrics = {}
        return metrics if self.epoch_lr is None else {**metrics, "lr": self.epoch_lr}

    def on_train_epoch_start(self) -> None:
        self.epoch_lr = self.optimizers().param_groups[0]["lr"]

    def on_validation_epoch_start(self) -> None:
        share_buffers(self.model, self.trainer.world_size)

    def on_test_epoch_start(self) -> None:
        share_buffers(self.model, self.trainer.world_size)

    def on_validation_epoch_end(self) -> None:
        val = self.split_metrics("val")
        if not self.trainer.sanity_checking:  # the look at a few batches before training is no epoch's
            self.val_metrics = val

    def on_test_epoch_end(self) -> None:
        self.log_dict(self.split_metrics("test"))  # to the loggers, and what trainer.test returns

    def configure_model(self) -> None:
        if self.compile_options is not None:
            self.model.compile(**self.compile_options)
            self.compile_options = None  # once: testing after fitting runs the compiled model

    def on_fit_start(self) -> None:
        if self.cuda_graph:
            self.step_graph = StepGraph(self.compute_loss, self.parameters())

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["warmed_up_at"] = self.warmed_up_at

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["state_dict"] = migrate(checkpoint["state_dict"], prefix="model.")
        self.warmed_up_at = checkpoint.get("warmed_up_at", self.warmed_up_at)
        _count_steps_as_written_out(checkpoint)
        # A saved optimiser state carries its update's implementation (fused, foreach), and loading it would
        # override this run's: a run saved on a GPU (fused) could not resume on a CPU as configured.
        # Lightning loads the optimiser state after this hook.
        built = self.optimizer.keywords if isinstance(self.optimizer, partial) else {}
        for state in checkpoint.get("optimizer_states", []):
            for group in state["param_groups"]:
                for key in ("fused", "foreach"):
                    if key in group:
                        group[key] = built.get(key)

    def _lr_factor(self, step: int) -> float:
        warming = self.warmup_threshold is not None and self.warmed_up_at is None
        return lr_factor(step, self._total_steps, warming=warming, **self.schedule)

    def configure_optimizers(self) -> dict:
        self._total_steps = self.trainer.estimated_stepping_batches
        optimizer = self.optimizer(p for p in self.parameters() if p.requires_grad)
        return {"optimizer": optimizer, "lr_scheduler": LambdaLR(optimizer, self._lr_factor)}


def share_buffers(model: nn.Module, world_size: int) -> None:
    """Rank 0's buffers (batch norm's running statistics) on every rank, one broadcast per dtype. DDP shares
    them before each forward it runs itself; under manual optimisation Lightning turns that off."""
    if world_size < 2:
        return
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for buffer in model.buffers():
        by_dtype.setdefault(buffer.dtype, []).append(buffer)
    for buffers in by_dtype.values():
        flat = torch.cat([b.reshape(-1) for b in buffers])
        torch.distributed.broadcast(flat, src=0)
        for buffer, value in zip(buffers, flat.split([b.numel() for b in buffers]), strict=True):
            buffer.copy_(value.view_as(buffer))


def _count_steps_as_written_out(checkpoint: dict) -> None:
    """A checkpoint written while Lightning ran the optimiser step itself counts its steps there: they are
    carried over to the count of a written-out step, so that the resumed run goes on at its global step."""
    loop = checkpoint.get("loops", {}).get("fit_loop", {})
    automatic = loop.get("epoch_loop.automatic_optimization.optim_progress", {}).get("optimizer", {})
    manual = loop.get("epoch_loop.manual_optimization.optim_step_progress")
    if automatic.get("step") and manual is not None and not manual["total"]["completed"]:
        loop["epoch_loop.manual_optimization.optim_step_progress"] = automatic["step"]
