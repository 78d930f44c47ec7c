"""From config to objects: the data module, the model and the device settings that train and profile share."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from experiments.errors import UserError


def build_datamodule(
    cfg: DictConfig,
):  # -> a LightningDataModule with name, num_classes, in_channels, image_size
    try:
        return instantiate(cfg.dataset, seed=cfg.seed)
    except InstantiationException as error:
        if isinstance(error.__cause__, UserError):
            raise error.__cause__ from None
        raise UserError(f"dataset: {error.__cause__ or error}") from None


def build_model(cfg: DictConfig, datamodule) -> nn.Module:
    from experiments.models import create_model

    kwargs = OmegaConf.to_container(cfg.arch, resolve=True)
    name = kwargs.pop("name")
    try:
        return create_model(
            name,
            num_classes=datamodule.num_classes,
            in_channels=datamodule.in_channels,
            image_size=datamodule.image_size,
            **kwargs,
        )
    except (ValueError, TypeError) as error:
        raise UserError(f"arch: {error}") from None


COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def compile_options(setting: Any) -> dict[str, str] | None:
    """torch.compile's arguments for the `compile` setting: false, true, or one of torch.compile's modes
    (`reduce-overhead` and `max-autotune` record CUDA graphs of their own, in place of cuda_graph's)."""
    if setting is False or setting is None:
        return None
    if setting is True:
        return {}
    if setting in COMPILE_MODES:
        return {"mode": setting}
    raise UserError(
        f"compile must be false, true or a torch.compile mode ({', '.join(COMPILE_MODES)}), got {setting!r}"
    )


def prepare_model(cfg: DictConfig, model: nn.Module, device: Device) -> nn.Module:
    """`model` laid out and compiled for `device` (the project's path and the speed bench's raw loops)."""
    if device.cuda:
        torch.backends.cudnn.benchmark = True  # fixed input shapes: pick the fastest conv kernels once
    if device.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if (options := compile_options(cfg.compile)) is not None:
        model.compile(**options)
    return model


def build_optimizer(cfg: DictConfig, device: Device) -> Callable[..., torch.optim.Optimizer]:
    """cfg.optim as a function of the parameters, with a fused update (one kernel for all parameters) on a
    GPU: there a small net's step with CUDA graphs waits on the CPU, and the multi-tensor update was the
    largest CPU cost a setting can remove (docs/performance.md). Not fused where cfg.optim picks the
    implementation (`fused`, `foreach`), or under a GradScaler (precision 16): Lightning does not unscale
    a fused optimiser's gradients before gradient clipping and the gradient-norm hook."""
    try:
        optimizer = instantiate(cfg.optim)
    except InstantiationException as error:
        raise UserError(f"optim: {error.__cause__ or error}") from None
    chosen = {"fused", "foreach"} & set(cfg.optim)
    scaled = device.precision.startswith("16")
    if device.cuda and not chosen and not scaled and "fused" in inspect.signature(optimizer).parameters:
        return partial(optimizer, fused=True)
    return optimizer


def use_cuda_graph(cfg: DictConfig, device: Device) -> bool:
    """Whether training steps run as CUDA graphs. cuda_graph=auto: on one GPU where no other setting rules
    it out; true: there, else a one-line error saying what rules it out."""
    if not (isinstance(cfg.cuda_graph, bool) or cfg.cuda_graph == "auto"):
        raise UserError(f"cuda_graph must be auto, true or false, got {cfg.cuda_graph!r}")
    if cfg.cuda_graph is False:
        return False
    if obstacle := _cuda_graph_obstacle(cfg, device):
        if cfg.cuda_graph is True:
            raise UserError(f"cuda_graph=true {obstacle}")
        return False
    # auto leaves memory-efficient (checkpointed) nets eager: their checkpoints save and restore the RNG
    # state, which is not known to work inside a capture
    return cfg.cuda_graph is True or not cfg.arch.get("memory_efficient", False)


def _cuda_graph_obstacle(cfg: DictConfig, device: Device) -> str | None:
    """What in the config rules out CUDA graphs, in words, or None."""
    trainer = cfg.trainer
    if not device.cuda:
        return "needs a CUDA GPU; on a CPU leave it false"
    if cfg.compile in ("reduce-overhead", "max-autotune"):
        return (
            f"records the whole step as a graph; compile={cfg.compile} records graphs of its own: use "
            "compile=true or compile=false with it"
        )
    if device.precision in ("16", "16-mixed"):
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


def build_module(cfg: DictConfig, model: nn.Module, device: Device):  # -> Classifier
    """The LightningModule around `model`, laid out and compiled for `device`."""
    from experiments.module import Classifier

    cuda_graph = use_cuda_graph(cfg, device)
    model = prepare_model(cfg, model, device)
    schedule = OmegaConf.to_container(cfg.schedule, resolve=True)
    optimizer = build_optimizer(cfg, device)
    return Classifier(model, optimizer, schedule, channels_last=device.channels_last, cuda_graph=cuda_graph)


def _sweep_dir() -> str | None:
    """The directory of the multirun sweep this run belongs to, if any."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        return str(HydraConfig.get().sweep.dir)
    return None


def new_summary(
    command: str, cfg: DictConfig, model: nn.Module, datamodule, device: Device, counts: bool
) -> dict[str, Any]:
    """A run's summary.json before its first step: what runs, where, (with `counts`) what the model costs
    in FLOPs and activation memory, and every key still to be measured set to null."""
    from experiments.logging.record import TRAINING_KEYS
    from experiments.measure.cost import COST_KEYS
    from experiments.measure.counts import activation_bytes, count_params, flops_per_image

    image = (datamodule.in_channels, datamodule.image_size, datamodule.image_size)
    return {
        "command": command,
        "status": "failed",  # until the run says otherwise
        "arch": model.arch,
        "depth": model.depth,
        "dataset": datamodule.name,
        "seed": cfg.seed,
        "form": model.form,
        "stem": model.stem_type,
        "memory_efficient": bool(cfg.arch.get("memory_efficient", False)),
        "sweep": _sweep_dir(),
        "batch_size": datamodule.batch_size,
        "params": count_params(model),
        "flops_per_image": flops_per_image(model, image) if counts else None,
        "activation_bytes": activation_bytes(model, (datamodule.batch_size, *image)) if counts else None,
        "device": device.name,
        "precision": device.precision,
        **dict.fromkeys(TRAINING_KEYS + COST_KEYS),
    }


def build_trainer(cfg: DictConfig, **settings: Any):  # -> a Lightning Trainer
    """cfg.trainer with `settings` over it; a setting Lightning refuses is the user's one-line error."""
    try:
        return instantiate(cfg.trainer, **settings)
    except Exception as error:
        raise UserError(f"trainer: {error}") from None


@dataclass
class Device:
    """Where a run computes and how: resolved from trainer.accelerator, precision and channels_last."""

    cuda: bool
    precision: str
    channels_last: bool

    @property
    def name(self) -> str:
        return torch.cuda.get_device_name() if self.cuda else "cpu"


def cluster_plugins() -> list:
    """Under SLURM, Lightning must not requeue the job itself: submitit does (docs/cluster.md)."""
    from lightning_fabric.plugins.environments import SLURMEnvironment

    return [SLURMEnvironment(auto_requeue=False)] if SLURMEnvironment.detect() else []


def resolve_device(cfg: DictConfig) -> Device:
    accelerator = cfg.trainer.get("accelerator", "auto")
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise UserError(
            f"trainer.accelerator={accelerator} but no CUDA GPU is visible here; "
            "use trainer=cpu or trainer=default"
        )
    cuda = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    precision = str(cfg.precision)
    if precision == "auto":
        precision = "bf16-mixed" if cuda and torch.cuda.is_bf16_supported() else "32-true"
    channels_last = cuda if cfg.channels_last == "auto" else bool(cfg.channels_last)
    return Device(cuda, precision, channels_last)
