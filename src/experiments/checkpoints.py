"""A training run's checkpoints: where it starts from, its initial weights, writes that leave the last good
checkpoint whole, and the environments of the segments that wrote them."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.plugins import TorchCheckpointIO

from experiments.environment import environment
from experiments.errors import UserError
from experiments.record import RunRecord, replaced_whole


@dataclass
class Resume:
    """Where a run starts from: its own last checkpoint (a re-run or requeued job goes on from there), else
    `ckpt_path` if given, else nothing."""

    path: Path | None = None
    epoch: int | None = None  # the epoch the checkpoint ended
    step: int = -1  # its global step
    environments: list[dict[str, Any] | None] = field(default_factory=list)  # of the segments that wrote it

    @classmethod
    def find(cls, ckpt_path: Path | None, run_dir: Path) -> Resume:
        own = run_dir / "checkpoints" / "last.ckpt"
        path = own if own.exists() else ckpt_path
        if path is None:
            return cls()
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
            segments = checkpoint.get(Segments.KEY, [None])  # a checkpoint that does not say: one unknown
            return cls(path, int(checkpoint["epoch"]), int(checkpoint["global_step"]), list(segments))
        except Exception as error:
            raise UserError(
                f"checkpoint {path} is unreadable or not a Lightning checkpoint ({type(error).__name__}); "
                "delete it to start afresh or pass another ckpt_path"
            ) from None


class Segments(pl.Callback):
    """The environment of each segment of a run (one, unless it was resumed): carried in its checkpoints, so
    that a job requeued onto another node still says where its first epochs ran."""

    KEY = "environments"

    def __init__(self) -> None:
        self.environments: list[dict[str, Any] | None] = []

    def begin(self, record: RunRecord, cuda: bool, earlier: list[dict[str, Any] | None]) -> None:
        """This segment's environment after the `earlier` segments' (Resume.environments) into the record:
        `environment` the first, `environments` all of them where there are several (an earlier segment
        whose checkpoint did not say is null)."""
        self.environments = [*earlier, environment(cuda)]
        record.environment = self.environments[0]
        record.environments = self.environments if len(self.environments) > 1 else None

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict
    ) -> None:
        checkpoint[self.KEY] = self.environments


def save_initial_weights(model: torch.nn.Module, path: Path) -> None:
    """checkpoints/init.ckpt: the net's parameters and buffers before its first step, as last.ckpt holds
    them (`state_dict`, keys under `model.`), for the analyses that compare a run's start with its end.
    Written once: a resumed run keeps the one its first segment wrote."""
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {f"model.{key}": value.detach().clone() for key, value in model.state_dict().items()}
    with replaced_whole(path) as file:
        torch.save({"state_dict": state, "global_step": 0, "epoch": 0}, file)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes a checkpoint beside its name, then renames it into place: a full disk or a kill mid-write
    leaves the last good checkpoint whole. (Lightning writes a local file through a temporary one in $TMPDIR
    and moves it, which on another filesystem copies over the checkpoint in place.)"""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with replaced_whole(path) as file:
                torch.save(checkpoint, file)
                file.flush()
                os.fsync(file.fileno())  # on disk before it replaces the last good one
        except (OSError, RuntimeError) as error:
            if isinstance(error, RuntimeError) and "inline_container" not in str(error):
                raise  # not a write torch's archive writer gave up on
            why, kept = self.why_unwritten(path, error), " (the last one is whole)" if path.exists() else ""
            raise UserError(f"could not write checkpoint {path}: {why}{kept}") from None

    @staticmethod
    def why_unwritten(path: Path, error: OSError | RuntimeError) -> str:
        """Why a write stopped part-way, in words: torch's archive writer reports a short write only as an
        `unexpected pos`, so the process's file-size limit and the disk's free space are asked."""
        import errno
        import resource
        import shutil

        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
            return error.strerror
        limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
        if limit != resource.RLIM_INFINITY:
            return f"file too large: this process may write files of at most {limit:,} bytes (ulimit -f)"
        free = shutil.disk_usage(path.parent).free
        if free < 2**26:
            return f"no space left on the device ({free:,} bytes free)"
        return " ".join(f"{type(error).__name__}: {error}".split())


def last_checkpoint(run_dir: Path) -> pl.Callback:
    """checkpoints/last.ckpt, replaced at the end of every epoch (after metrics.csv has its row)."""
    from pytorch_lightning.callbacks import ModelCheckpoint

    return ModelCheckpoint(
        dirpath=run_dir / "checkpoints",
        filename="last",
        save_top_k=1,
        save_on_train_epoch_end=True,
        enable_version_counter=False,
    )
