"""From config to objects: the data module, the model, the LightningModule, the Trainer and the run's first
record. `train`, `profile`, `probe` and the benchmarks build through these."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytorch_lightning as pl
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from experiments.device import Device, build_optimizer, prepare_model, use_cuda_graph
from experiments.environment import environment
from experiments.errors import UserError
from experiments.module import Classifier
from experiments.papers import augmented, paper_test_error
from experiments.record import RunRecord


def build_datamodule(cfg: DictConfig) -> pl.LightningDataModule:
    """cfg.dataset: a LightningDataModule with `name`, `num_classes`, `in_channels` and `image_size`."""
    try:
        return instantiate(cfg.dataset, seed=cfg.seed)
    except InstantiationException as error:
        if isinstance(error.__cause__, UserError):
            raise error.__cause__ from None
        raise UserError(f"dataset: {error.__cause__ or error}") from None


def build_model(cfg: DictConfig, datamodule: Any) -> nn.Module:
    """cfg.arch for the datamodule's images and classes; with arch.freeze=backbone only its head trains."""
    from experiments.models import create_model

    kwargs = OmegaConf.to_container(cfg.arch, resolve=True)
    name, freeze = kwargs.pop("name"), kwargs.pop("freeze", "none")
    try:
        model = create_model(
            name,
            num_classes=datamodule.num_classes,
            in_channels=datamodule.in_channels,
            image_size=datamodule.image_size,
            **kwargs,
        )
    except (ValueError, TypeError) as error:
        raise UserError(f"arch: {error}") from None
    if freeze == "backbone":
        head = model.blocks()[-1]
        trained = {id(p) for name in head.weights for p in model.get_submodule(name).parameters()}
        for parameter in model.parameters():
            parameter.requires_grad_(id(parameter) in trained)
    return model


def build_module(
    cfg: DictConfig, model: nn.Module, device: Device, eager_steps: Callable[[int], bool] = lambda step: False
) -> Classifier:
    """The LightningModule around `model`, laid out and compiled for `device`."""
    cuda_graph = use_cuda_graph(cfg, device)
    model = prepare_model(cfg, model, device)
    schedule = OmegaConf.to_container(cfg.schedule, resolve=True)
    return Classifier(
        model,
        build_optimizer(cfg, device),
        schedule,
        channels_last=device.channels_last,
        cuda_graph=cuda_graph,
        eager_steps=eager_steps,
    )


QUIET = {
    "logger": False,
    "enable_checkpointing": False,
    "enable_progress_bar": False,
    "enable_model_summary": False,
}


def build_trainer(cfg: DictConfig | None, **settings: Any) -> pl.Trainer:
    """cfg.trainer (or Lightning's defaults without a config) with `settings` over it: no logger, checkpoints,
    progress bar or model summary unless the settings ask for them. A setting Lightning refuses is the
    user's one-line error."""
    settings = {**QUIET, **settings}
    try:
        return instantiate(cfg.trainer, **settings) if cfg is not None else pl.Trainer(**settings)
    except Exception as error:
        raise UserError(f"trainer: {error}") from None


def new_record(
    command: str,
    cfg: DictConfig,
    model: nn.Module,
    datamodule: Any,
    device: Device,
    sweep: str | None = None,
    packed_with: list[str] | None = None,
) -> RunRecord:
    """A run's record before its first step: what runs, where, and (unless measure.enabled is false for a
    training run) what the model costs in FLOPs and activation memory, counted on tensors without data."""
    from experiments.measure.counts import count_params, flops_per_image

    image = (datamodule.in_channels, datamodule.image_size, datamodule.image_size)
    batch = (datamodule.batch_size, *image)
    counts = command != "train" or cfg.measure.enabled
    flops = flops_per_image(model, image) if counts else None
    fp32_bytes, precision_bytes = (
        _activation_bytes(model, batch, device.precision) if counts else (None, None)
    )
    return RunRecord(
        command=command,
        arch=model.spec.label,
        depth=model.spec.depth,
        dataset=datamodule.name,
        seed=cfg.seed,
        form=model.spec.form,
        stem=model.spec.stem,
        memory_efficient=model.spec.memory_efficient,
        pretrained=cfg.arch.get("pretrained"),
        batch_size=datamodule.batch_size,
        precision=device.precision,
        device=device.name,
        sweep=sweep,
        packed_with=packed_with,
        params=count_params(model),
        flops_per_image=flops,
        macs_per_image=None if flops is None else flops // 2,
        activation_bytes=fp32_bytes,
        activation_bytes_at_precision=precision_bytes,
        paper_test_error=paper_test_error(model.spec, datamodule.name, augmented(cfg.dataset))
        if command == "train"
        else None,
        # a training run's is read once its Trainer has set the numerical flags (commands/train.Segments)
        environment=environment(device.cuda) if command != "train" else None,
    )


def _activation_bytes(model: nn.Module, batch: tuple[int, ...], precision: str) -> tuple[int, int]:
    """Bytes held for backward in fp32 and at `precision`, traced once where the two hold the same dtypes."""
    from experiments.measure.counts import PRECISION_DTYPES, activation_bytes

    fp32 = activation_bytes(model, batch)
    if PRECISION_DTYPES.get(str(precision), PRECISION_DTYPES["32-true"]) == PRECISION_DTYPES["32-true"]:
        return fp32, fp32
    return fp32, activation_bytes(model, batch, precision)
