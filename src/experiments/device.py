"""Device policy: where a run computes and how fast paths are chosen for it.

On a CPU everything runs as written. On a GPU: bf16 mixed precision where the card has it, channels-last
memory, cuDNN's autotuner, a fused optimiser update, and each training step's forward and backward
captured once as a CUDA graph and replayed (`cuda_graph`). Each rule says why it applies and when not.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from torch import nn

from experiments.errors import UserError
from experiments.plan import Recipe
from experiments.precision import long_name


@dataclass(frozen=True)
class Device:
    """Where a run computes and how: the recipe's trainer.accelerator, precision, channels_last and
    cuda_graph, with `auto` decided for the hardware here (resolve_device, once a run)."""

    cuda: bool
    precision: str  # a Lightning precision: 32-true, bf16-mixed, ...
    channels_last: bool
    cuda_graph: bool = False  # each training step's forward and backward replayed as one CUDA graph

    @property
    def name(self) -> str:
        return torch.cuda.get_device_name() if self.cuda else "cpu"


def resolve_device(recipe: Recipe) -> Device:
    """The recipe's device on this machine (the guard checked that a GPU asked for is here)."""
    accelerator = recipe.accelerator
    cuda = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    precision = long_name(recipe.precision)
    if precision == "auto":
        precision = "bf16-mixed" if cuda and torch.cuda.is_bf16_supported() else "32-true"
    if precision == "16-mixed" and not cuda:  # what Lightning trains in instead: CPUs have no fp16 autocast
        precision = "bf16-mixed"
    channels_last = cuda if recipe.channels_last == "auto" else bool(recipe.channels_last)
    device = Device(cuda, precision, channels_last)
    return replace(device, cuda_graph=use_cuda_graph(recipe, device))


def compile_options(setting: Any) -> dict[str, str] | None:
    """torch.compile's arguments for the `compile` setting: false, true, or one of torch.compile's modes
    (`reduce-overhead` and `max-autotune` record CUDA graphs of their own, in place of cuda_graph's)."""
    if setting is False or setting is None:
        return None
    return {} if setting is True else {"mode": setting}


def prepare_model(recipe: Recipe, model: nn.Module, device: Device) -> nn.Module:
    """`model` laid out for `device` (the project's path and the speed bench's raw loops); compiled apart
    (compile_options), once the run has been counted and is about to fit."""
    if device.cuda:  # fixed input shapes: pick the fastest conv kernels once (not the same ones every run)
        torch.backends.cudnn.benchmark = not recipe.deterministic
    if device.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def build_optimizer(optim: dict[str, Any], device: Device) -> Callable[..., torch.optim.Optimizer]:
    """conf/optim's optimiser as a function of the parameters, with a fused update (one kernel for all
    parameters) on a GPU: there a small net's step with CUDA graphs waits on the CPU, and the multi-tensor
    update was the largest CPU cost a setting can remove (docs/performance.md). Not fused where the optim
    config picks the implementation (`fused`, `foreach`), or under a GradScaler (precision 16-mixed):
    Lightning does not unscale a fused optimiser's gradients before gradient clipping."""
    try:
        optimizer = instantiate(optim)
    except InstantiationException as error:
        raise UserError(f"optim: {error.__cause__ or error}") from None
    chosen = {"fused", "foreach"} & set(optim)
    scaled = device.precision == "16-mixed"
    if device.cuda and not chosen and not scaled and "fused" in inspect.signature(optimizer).parameters:
        return partial(optimizer, fused=True)
    return optimizer


def use_cuda_graph(recipe: Recipe, device: Device) -> bool:
    """Whether training steps run as CUDA graphs. cuda_graph=auto: on one GPU where no other setting rules
    it out; true: there, else a one-line error saying what rules it out."""
    if recipe.cuda_graph is False:
        return False
    if obstacle := _cuda_graph_obstacle(recipe, device):
        if recipe.cuda_graph is True:
            raise UserError(f"cuda_graph=true {obstacle}")
        return False
    # auto leaves memory-efficient (checkpointed) nets eager: their recomputation saves and restores the
    # RNG state and batch-norm statistics, which is not known to work inside a capture
    return recipe.cuda_graph is True or not recipe.memory_efficient


def _cuda_graph_obstacle(recipe: Recipe, device: Device) -> str | None:
    """What in the recipe rules out CUDA graphs, in words, or None."""
    if not device.cuda:
        return "needs a CUDA GPU; on a CPU leave it false"
    if recipe.deterministic:
        return (
            "cannot go with deterministic=true: graph replays are not checked to repeat bit for bit, so "
            "deterministic runs step eagerly"
        )
    if recipe.compile in ("reduce-overhead", "max-autotune"):
        return (
            f"records the whole step as a graph; compile={recipe.compile} records graphs of its own: use "
            "compile=true or compile=false with it"
        )
    if device.precision == "16-mixed":
        return (
            f"works with precision bf16-mixed or 32-true, not {device.precision}: a GradScaler scales the "
            "loss before a backward pass that the graph has already run"
        )
    if not recipe.one_device:
        return "trains on one device (trainer.devices=1, no strategy)"
    return None


def cluster_plugins() -> list:
    """Under SLURM, Lightning must not requeue the job itself: submitit does (docs/cluster.md)."""
    from lightning_fabric.plugins.environments import SLURMEnvironment

    return [SLURMEnvironment(auto_requeue=False)] if SLURMEnvironment.detect() else []
