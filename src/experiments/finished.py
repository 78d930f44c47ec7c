"""Finished runs read back: their config, their trained net, their data (lesion, reuse, probe from a
checkpoint). Nothing here writes into a run's directory. Importing this module imports no torch:
`finished_record` tells in a moment whether a directory is a finished run at all."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import OmegaConf

from experiments.errors import UserError
from experiments.plan import Subject
from experiments.record import RunRecord, read_record

if TYPE_CHECKING:
    import torch
    from torch import nn

    from experiments.models import DenseNet, ResNet


def load_weights(model: ResNet | DenseNet, checkpoint: Path) -> None:
    """The net's weights from a Lightning checkpoint of a run (its LightningModule holds it as `model`); a
    one-line UserError when the checkpoint is of another net."""
    import torch

    from experiments.models.legacy import migrate
    from experiments.models.registry import misfit

    try:
        saved = torch.load(checkpoint, map_location="cpu", weights_only=False, mmap=True)["state_dict"]
    except Exception as error:
        raise UserError(
            f"{checkpoint} is unreadable or not a Lightning checkpoint ({type(error).__name__})"
        ) from None
    state = {
        k.removeprefix("model."): v
        for k, v in migrate(saved, prefix="model.").items()
        if k.startswith("model.")
    }
    state = {k.replace("_orig_mod.", ""): v for k, v in state.items()}
    if problem := misfit(model.state_dict(), state):
        raise UserError(f"{checkpoint} does not fit {model.spec.label}{model.spec.depth}: {problem}")
    model.load_state_dict(state)


def finished_record(path: Path) -> RunRecord:
    """The record of the completed training run at `path`, holding its last checkpoint; else a one-line
    UserError saying what the directory is instead. Reads only small files: no torch, under a second."""
    from experiments.rundir import LOCK_NAME, Holder

    lock = path / LOCK_NAME
    try:
        holder = Holder(**json.loads(lock.read_text()))
    except (OSError, ValueError, TypeError):  # no lock, or one being written: the record says the rest
        holder = None
    if holder is not None and not holder.gone(lock):
        raise UserError(f"{path} is still training ({holder.describe()}); wait for it to end")
    try:
        record = read_record(path / "summary.json")
    except ValueError as error:
        raise UserError(f"{path}: summary.json is unreadable ({error})") from None
    if record is None:
        raise UserError(f"{path} is not a finished run: it has no summary.json (still training, or killed)")
    if record.command != "train" or record.status != "completed":
        raise UserError(
            f"{path} is a {record.command} run that ended {record.status}: nothing trained to read"
        )
    if not (path / "checkpoints" / "last.ckpt").is_file():
        raise UserError(f"{path} has no checkpoints/last.ckpt")
    return record


@dataclass
class FinishedRun:
    """A completed training run: where it is, its record, what it trained, its net with the trained weights
    and its data module (not yet set up)."""

    path: Path
    record: RunRecord
    subject: Subject
    model: nn.Module
    datamodule: Any

    @classmethod
    def open(cls, path: Path) -> FinishedRun:
        """The run at `path`, or a one-line UserError saying why it cannot be read as a finished run."""
        from experiments.build import build_datamodule, build_model

        record = finished_record(path)
        subject = Subject.of(OmegaConf.load(path / ".hydra" / "config.yaml"))
        datamodule = build_datamodule(subject)
        model = build_model(subject, datamodule, pretrained=False)  # the checkpoint's weights replace them
        load_weights(model, path / "checkpoints" / "last.ckpt")
        return cls(path, record, subject, model.eval(), datamodule)

    def test_batches(self, images: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The test split's first `images` images (or all, where it holds fewer), in batches, on the CPU."""
        import torch

        self.datamodule.prepare_data()
        self.datamodule.setup("test")
        loader = (
            self.datamodule.batches("test", torch.device("cpu"))
            if hasattr(self.datamodule, "batches")
            else self.datamodule.test_dataloader()
        )
        batches, count = [], 0
        for x, y in loader:
            keep = min(len(y), images - count)
            batches.append((x[:keep], y[:keep]))
            count += keep
            if count >= images:
                break
        return batches


def check_checkpoint_fits(subject: Subject, checkpoint: Path) -> None:
    """A ckpt_path given must hold the subject's net's weights: checked before the run's directory is made
    (the one check of a job that imports torch, and only when a ckpt_path is given)."""
    from experiments.models import create_model

    classes, channels, size = subject.data_shape
    if not classes and subject.dataset.get("path"):  # an image folder: a class per folder of train/
        train = Path(subject.dataset["path"]).expanduser() / "train"
        classes = sum(1 for folder in train.iterdir() if folder.is_dir()) if train.is_dir() else 0
    if classes < 2:
        return  # the data's own check refuses it, with its own line
    options = {**subject.net_options, "pretrained": None}  # the checkpoint's weights replace any others
    model = create_model(
        subject.arch["name"], num_classes=classes, in_channels=channels, image_size=size, **options
    )
    try:
        load_weights(model, checkpoint)
    except UserError as error:
        raise UserError(f"ckpt_path: {error}") from None
