"""Device policy: where a run computes and how fast paths are chosen for it.

On a CPU everything runs as written. On a GPU: bf16 mixed precision where the card has it, channels-last
memory, cuDNN's autotuner, a fused optimiser update, and each training step's forward and backward
captured once as a CUDA graph and replayed (`cuda_graph`). Each rule says why it applies and when not.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import nn

from experiments.errors import UserError
from experiments.settings import check_accelerator


@dataclass(frozen=True)
class Device:
    """Where a run computes and how: resolved from trainer.accelerator, precision and channels_last."""

    cuda: bool
    precision: str  # a Lightning precision: 32-true, bf16-mixed, ...
    channels_last: bool

    @property
    def name(self) -> str:
        return torch.cuda.get_device_name() if self.cuda else "cpu"


# Lightning's short names, as Lightning itself reads them: the record and the checks see only the long ones
LIGHTNING_SHORT_PRECISIONS = {"32": "32-true", "64": "64-true", "16": "16-mixed", "bf16": "bf16-mixed"}


def resolve_device(cfg: DictConfig) -> Device:
    check_accelerator(cfg)
    accelerator = cfg.trainer.get("accelerator", "auto")
    cuda = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    precision = str(cfg.precision)
    precision = LIGHTNING_SHORT_PRECISIONS.get(precision, precision)
    if precision == "auto":
        precision = "bf16-mixed" if cuda and torch.cuda.is_bf16_supported() else "32-true"
    if precision == "16-mixed" and not cuda:  # what Lightning trains in instead: CPUs have no fp16 autocast
        precision = "bf16-mixed"
    channels_last = cuda if cfg.channels_last == "auto" else bool(cfg.channels_last)
    return Device(cuda, precision, channels_last)


def compile_options(setting: Any) -> dict[str, str] | None:
    """torch.compile's arguments for the `compile` setting: false, true, or one of torch.compile's modes
    (`reduce-overhead` and `max-autotune` record CUDA graphs of their own, in place of cuda_graph's)."""
    if setting is False or setting is None:
        return None
    return {} if setting is True else {"mode": setting}


def prepare_model(cfg: DictConfig, model: nn.Module, device: Device) -> nn.Module:
    """`model` laid out and compiled for `device` (the project's path and the speed bench's raw loops)."""
    if device.cuda:  # fixed input shapes: pick the fastest conv kernels once (not the same ones every run)
        torch.backends.cudnn.benchmark = not cfg.get("deterministic", False)
    if device.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if (options := compile_options(cfg.compile)) is not None:
        model.compile(**options)
    return model


def build_optimizer(cfg: DictConfig, device: Device) -> Callable[..., torch.optim.Optimizer]:
    """cfg.optim as a function of the parameters, with a fused update (one kernel for all parameters) on a
    GPU: there a small net's step with CUDA graphs waits on the CPU, and the multi-tensor update was the
    largest CPU cost a setting can remove (docs/performance.md). Not fused where cfg.optim picks the
    implementation (`fused`, `foreach`), or under a GradScaler (precision 16-mixed): Lightning does not
    unscale a fused optimiser's gradients before gradient clipping."""
    try:
        optimizer = instantiate(cfg.optim)
    except InstantiationException as error:
        raise UserError(f"optim: {error.__cause__ or error}") from None
    chosen = {"fused", "foreach"} & set(cfg.optim)
    scaled = device.precision == "16-mixed"
    if device.cuda and not chosen and not scaled and "fused" in inspect.signature(optimizer).parameters:
        return partial(optimizer, fused=True)
    return optimizer


def use_cuda_graph(cfg: DictConfig, device: Device) -> bool:
    """Whether training steps run as CUDA graphs. cuda_graph=auto: on one GPU where no other setting rules
    it out; true: there, else a one-line error saying what rules it out."""
    if cfg.cuda_graph is False:
        return False
    if obstacle := _cuda_graph_obstacle(cfg, device):
        if cfg.cuda_graph is True:
            raise UserError(f"cuda_graph=true {obstacle}")
        return False
    # auto leaves memory-efficient (checkpointed) nets eager: their recomputation saves and restores the
    # RNG state and batch-norm statistics, which is not known to work inside a capture
    return cfg.cuda_graph is True or not cfg.arch.get("memory_efficient", False)


def _cuda_graph_obstacle(cfg: DictConfig, device: Device) -> str | None:
    """What in the config rules out CUDA graphs, in words, or None."""
    trainer = cfg.trainer
    if not device.cuda:
        return "needs a CUDA GPU; on a CPU leave it false"
    if cfg.get("deterministic"):
        return (
            "cannot go with deterministic=true: graph replays are not checked to repeat bit for bit, so "
            "deterministic runs step eagerly"
        )
    if cfg.compile in ("reduce-overhead", "max-autotune"):
        return (
            f"records the whole step as a graph; compile={cfg.compile} records graphs of its own: use "
            "compile=true or compile=false with it"
        )
    if device.precision == "16-mixed":
        return (
            f"works with precision bf16-mixed or 32-true, not {device.precision}: a GradScaler scales the "
            "loss before a backward pass that the graph has already run"
        )
    placement = (trainer.get("devices"), trainer.get("num_nodes", 1), trainer.get("strategy", "auto"))
    if placement != (1, 1, "auto"):
        return "trains on one device (trainer.devices=1, no strategy)"
    if trainer.get("accumulate_grad_batches", 1) != 1:
        return "cannot accumulate gradients (trainer.accumulate_grad_batches)"
    return None


def cluster_plugins() -> list:
    """Under SLURM, Lightning must not requeue the job itself: submitit does (docs/cluster.md)."""
    from lightning_fabric.plugins.environments import SLURMEnvironment

    return [SLURMEnvironment(auto_requeue=False)] if SLURMEnvironment.detect() else []
