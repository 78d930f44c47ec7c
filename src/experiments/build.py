"""From a run's plan to objects: the data module, the model, the LightningModule, the Trainer and the run's
first record. `train`, `profile`, `probe` and the benchmarks build through these."""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from pytorch_lightning.callbacks import RichProgressBar
from pytorch_lightning.utilities import rank_zero_only
from torch import nn

from experiments.checkpoints import (
    AtomicCheckpointIO,
    Resume,
    Segments,
    last_checkpoint,
    save_initial_weights,
)
from experiments.device import Device, build_optimizer, cluster_plugins, compile_options, prepare_model
from experiments.environment import environment
from experiments.errors import UserError
from experiments.measure.counts import record_counts
from experiments.measure.instruments import Instruments
from experiments.module import Classifier
from experiments.papers import augmented, paper_test_error
from experiments.plan import Plan, Recipe, Subject
from experiments.record import RunRecord


def build_datamodule(subject: Subject) -> pl.LightningDataModule:
    """The subject's dataset: a LightningDataModule with `name`, `num_classes`, `in_channels` and
    `image_size`."""
    try:
        return instantiate(subject.dataset, seed=subject.seed)
    except InstantiationException as error:
        if isinstance(error.__cause__, UserError):
            raise error.__cause__ from None
        raise UserError(f"dataset: {error.__cause__ or error}") from None


def build_model(subject: Subject, datamodule: Any, pretrained: bool = True) -> nn.Module:
    """The subject's net for the datamodule's images and classes; with arch.freeze=backbone only its head
    trains. `pretrained=False` leaves out arch.pretrained's weights (a checkpoint's replace them)."""
    from experiments.models import create_model

    options = subject.net_options if pretrained else {**subject.net_options, "pretrained": None}
    try:
        model = create_model(
            subject.arch["name"],
            num_classes=datamodule.num_classes,
            in_channels=datamodule.in_channels,
            image_size=datamodule.image_size,
            **options,
        )
    except (ValueError, TypeError) as error:
        raise UserError(f"arch: {error}") from None
    if subject.arch.get("freeze", "none") == "backbone":
        head = model.blocks()[-1]
        trained = {id(p) for name in head.weights for p in model.get_submodule(name).parameters()}
        for parameter in model.parameters():
            parameter.requires_grad_(id(parameter) in trained)
    return model


def build_module(
    recipe: Recipe, model: nn.Module, device: Device, eager_steps: Callable[[int], bool] = lambda step: False
) -> Classifier:
    """The LightningModule around `model`, laid out for `device` (and compiled when it fits)."""
    return Classifier(
        prepare_model(recipe, model, device),
        build_optimizer(recipe.optim, device),
        recipe.schedule,
        compile=compile_options(recipe.compile),
        channels_last=device.channels_last,
        cuda_graph=device.cuda_graph,
        eager_steps=eager_steps,
        clip=recipe.clip,
    )


QUIET = {
    "logger": False,
    "enable_checkpointing": False,
    "enable_progress_bar": False,
    "enable_model_summary": False,
}


def build_trainer(recipe: Recipe | None, **settings: Any) -> pl.Trainer:
    """The recipe's Trainer (or Lightning's defaults without one) with `settings` over it: no logger,
    checkpoints, progress bar or model summary unless the settings ask for them. A setting Lightning refuses
    is the user's one-line error."""
    settings = {**QUIET, **settings}
    try:
        return instantiate(recipe.trainer, **settings) if recipe is not None else pl.Trainer(**settings)
    except Exception as error:
        raise UserError(f"trainer: {error}") from None


def new_record(
    command: str,
    plan: Plan,
    model: nn.Module,
    datamodule: Any,
    device: Device,
    sweep: str | None = None,
    packed_with: list[str] | None = None,
) -> RunRecord:
    """A run's record before its first step: what runs, where, and (unless measure.enabled is false for a
    training run) what the model costs in FLOPs and activation memory, counted on tensors without data. A
    training run's environment is read once its Trainer has set the numerical flags (checkpoints.Segments)."""
    spec, training = model.spec, command == "train"
    counted = not training or plan.recipe.measure.enabled
    return RunRecord(
        command=command,
        arch=spec.label,
        depth=spec.depth,
        dataset=datamodule.name,
        seed=plan.subject.seed,
        form=spec.form,
        stem=spec.stem,
        memory_efficient=spec.memory_efficient,
        pretrained=plan.subject.arch.get("pretrained"),
        batch_size=datamodule.batch_size,
        precision=device.precision,
        device=device.name,
        sweep=sweep,
        packed_with=packed_with,
        **record_counts(model, datamodule, device.precision, flops=counted),
        paper_test_error=paper_test_error(spec, datamodule.name, augmented(plan.subject.dataset))
        if training
        else None,
        environment=None if training else environment(device.cuda),
    )


@dataclass
class Training:
    """A training run's parts, built from its plan: data, net, LightningModule, Trainer, record, and the
    checkpoint it starts from."""

    datamodule: pl.LightningDataModule
    model: nn.Module
    module: Classifier
    trainer: pl.Trainer
    record: RunRecord
    resume: Resume


BUILDING = threading.Lock()  # runs packed in one process build their nets in turn


def build_training(
    plan: Plan,
    device: Device,
    instruments: Instruments,
    run_dir: Path,
    callbacks: list[pl.Callback],
    **run: Any,
) -> Training:
    """A training run's parts for `device` with its `instruments` and other `callbacks`; `run` is the
    record's sweep and packed_with. The net's initial weights are kept (checkpoints/init.ckpt) when the run
    starts afresh; the record has its first segment's environment once the Trainer set the flags."""
    with BUILDING:  # the global random generator initialises the net: one run at a time draws from it
        pl.seed_everything(plan.subject.seed, workers=True, verbose=False)
        datamodule = build_datamodule(plan.subject)
        model = build_model(plan.subject, datamodule)
    record = new_record("train", plan, model, datamodule, device, **run)
    tty = sys.stdout.isatty()
    trainer = build_trainer(
        plan.recipe,
        default_root_dir=run_dir,
        callbacks=[*callbacks, *instruments.callbacks, segments := Segments(), last_checkpoint(run_dir)]
        + ([RichProgressBar()] if tty else []),
        precision=device.precision,
        deterministic=plan.recipe.deterministic,  # always said: the flag is process-wide
        enable_checkpointing=True,
        enable_progress_bar=tty,
        plugins=[AtomicCheckpointIO(), *cluster_plugins()],
    )
    module = build_module(plan.recipe, model, device, eager_steps=instruments.is_signal_step)
    resume = Resume.find(plan.recipe.ckpt_path, run_dir)
    if resume.path is None and rank_zero_only.rank == 0:
        save_initial_weights(model, run_dir / "checkpoints" / "init.ckpt")
    segments.begin(record, device.cuda, earlier=resume.environments)
    return Training(datamodule, model, module, trainer, record, resume)
