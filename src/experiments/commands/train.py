"""`experiments train`: one run, top to bottom: build, fit, test, record."""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import ModelCheckpoint, RichProgressBar
from pytorch_lightning.plugins import TorchCheckpointIO
from pytorch_lightning.utilities import rank_zero_only

from experiments import distributed
from experiments.build import build_datamodule, build_model, build_module, build_trainer, new_record
from experiments.device import Device, cluster_plugins, resolve_device
from experiments.environment import environment
from experiments.errors import RunFailed, UserError, describe, traceback_wanted
from experiments.measure.cost import TrainingCost
from experiments.measure.param_grads import PREFIX as PARAM_GRAD_PREFIX
from experiments.measure.param_grads import ParamGradNorms
from experiments.measure.reuse import write_feature_reuse
from experiments.measure.signals import SignalRecorder
from experiments.models import DenseNet
from experiments.module import Diverged
from experiments.record import RunRecord, read_metrics, replaced_whole, write_record
from experiments.tracking import comet
from experiments.tracking.epochs import EpochRecord
from experiments.tracking.loggers import AppendingCSVLogger

log = logging.getLogger(__name__)
BUILDING = threading.Lock()  # runs packed in one process build their nets in turn


def train(
    cfg: DictConfig, run_dir: Path, sweep: str | None = None, packed_with: list[str] | None = None
) -> RunRecord:
    """Train, test and record one run in `run_dir`, resuming it if it was cut short; returns its record.
    `sweep` is the multirun directory it belongs to; `packed_with`, the runs it shares a process with."""
    started = time.perf_counter()
    run_dir.mkdir(parents=True, exist_ok=True)  # called directly (benchmarks), not through app
    if cfg.get("deterministic"):  # cuBLAS reads it when CUDA starts: before anything touches the GPU
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    with BUILDING:  # the global random generator initialises the net: one run at a time draws from it
        pl.seed_everything(cfg.seed, workers=True, verbose=False)
        device = resolve_device(cfg)
        datamodule = build_datamodule(cfg)
        model = build_model(cfg, datamodule)
    record = new_record("train", cfg, model, datamodule, device, sweep, packed_with)
    resume = Resume.find(cfg, run_dir)
    if resume.path is None and rank_zero_only.rank == 0:
        save_initial_weights(model, run_dir / "checkpoints" / "init.ckpt")
    instruments = Instruments.build(cfg, run_dir, shared_process=bool(packed_with))
    module = build_module(cfg, model, device, eager_steps=instruments.is_signal_step)
    epochs = EpochRecord(
        run_dir / "metrics.csv",
        print_lines=not sys.stdout.isatty(),
        sources=[lambda: module.epoch_metrics("train"), *instruments.epoch_sources],
        prefix=f"{record.label}: " if packed_with else "",
    )
    segments = Segments(resume.environments)
    trainer = _trainer(cfg, run_dir, device, [epochs, *instruments.callbacks, segments])
    # the environment once the Trainer has set the numerical flags (deterministic, cuDNN's autotuner)
    segments.begin(record, device.cuda)
    tracker = _start_tracking(cfg, run_dir, record, resume) if rank_zero_only.rank == 0 else None
    trainer.loggers = _loggers(cfg, run_dir, tracker, resume)
    outcome = fit_and_test(trainer, module, datamodule, resume.path, cfg, run_dir)
    if rank_zero_only.rank != 0:
        return outcome.conclude(record, None)
    _record_results(record, outcome, trainer.current_epoch, run_dir)
    record.update(
        **instruments.summary(), cuda_graph_steps=module.step_graph.replays if module.step_graph else 0
    )
    record.wall_time_s = round(time.perf_counter() - started, 2)
    if outcome.status == "completed" and isinstance(model, DenseNet):
        write_feature_reuse(model, run_dir)
    if tracker:  # the record first, whole: a Ctrl+C may cut Comet's end short
        record.comet = tracker.info
        write_record(run_dir / "summary.json", record)
        record.comet = tracker.finish(record)
    return outcome.conclude(record, run_dir / "summary.json")


@dataclass
class Instruments:
    """What a run measures while it trains (all off with measure.enabled=false): step time and memory,
    the per-block signals (signals.csv), each part's parameter-gradient norm."""

    cost: TrainingCost | None = None
    signals: SignalRecorder | None = None
    grads: ParamGradNorms | None = None

    @classmethod
    def build(cls, cfg: DictConfig, run_dir: Path, shared_process: bool = False) -> Instruments:
        """`shared_process`: other runs train in this process (packed), so its memory is not this run's."""
        if not cfg.measure.enabled:
            return cls()
        every = cfg.measure.signals_every
        signals = SignalRecorder(run_dir / "signals.csv", every) if every != 0 else None
        untimed = signals.is_signal_step if signals else _never
        cost = TrainingCost(cfg.measure.warmup_steps, untimed=untimed, measure_memory=not shared_process)
        grads = ParamGradNorms(cfg.measure.grad_norm_every) if cfg.measure.grad_norm_every > 0 else None
        return cls(cost, signals, grads)

    def is_signal_step(self, step: int) -> bool:
        """Signal steps run eagerly (hooks see nothing of a CUDA-graph replay) and are not timed."""
        return self.signals is not None and self.signals.is_signal_step(step)

    @property
    def callbacks(self) -> list[pl.Callback]:
        return [c for c in (self.cost, self.signals, self.grads) if c is not None]

    @property
    def epoch_sources(self) -> list[Callable[[], dict[str, float]]]:
        return [c.end_epoch for c in (self.cost, self.grads) if c is not None]

    def summary(self) -> dict:
        return self.cost.summary() if self.cost else {}


def _never(step: int) -> bool:
    return False


def _record_results(record: RunRecord, outcome: Outcome, epochs: int, run_dir: Path) -> None:
    """The run's end and its final epoch's figures (metrics.csv's last row) into its record."""
    rows = read_metrics(run_dir / "metrics.csv")
    final = rows[-1] if rows else {}
    record.update(
        status=outcome.status,
        error=outcome.message,
        test_error=outcome.test_error,
        epochs=epochs,
        train_error=_error(final.get("train/acc")),
        val_error=_error(final.get("val/acc")),
        train_loss=final.get("train/loss"),
        val_loss=final.get("val/loss"),
        param_grad_norms=_param_grad_norms(rows, ["stem", *_stages(rows), "head"]),
    )


@dataclass
class Resume:
    """Where a run starts from: its own last checkpoint (a re-run or requeued job goes on from there), else
    `ckpt_path` if given, else nothing."""

    path: Path | None = None
    epoch: int | None = None  # the epoch the checkpoint ended
    step: int = -1  # its global step
    environments: list[dict[str, Any] | None] = field(default_factory=list)  # of the segments that wrote it

    @classmethod
    def find(cls, cfg: DictConfig, run_dir: Path) -> Resume:
        own = run_dir / "checkpoints" / "last.ckpt"
        path = own if own.exists() else Path(cfg.ckpt_path).expanduser() if cfg.ckpt_path else None
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

    def __init__(self, earlier: list[dict[str, Any] | None]) -> None:
        self.environments = list(earlier)

    def begin(self, record: RunRecord, cuda: bool) -> None:
        """This segment's environment into the record: `environment` the first, `environments` all of them
        where there are several (an earlier segment whose checkpoint did not say is null)."""
        self.environments.append(environment(cuda))
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


def _trainer(cfg: DictConfig, run_dir: Path, device: Device, callbacks: list[pl.Callback]) -> pl.Trainer:
    tty = sys.stdout.isatty()
    # checkpoints/last.ckpt, replaced at the end of every epoch (after metrics.csv has its row)
    checkpoint = ModelCheckpoint(
        dirpath=run_dir / "checkpoints",
        filename="last",
        save_top_k=1,
        save_on_train_epoch_end=True,
        enable_version_counter=False,
    )
    return build_trainer(
        cfg,
        default_root_dir=run_dir,
        callbacks=[*callbacks, checkpoint, *([RichProgressBar()] if tty else [])],
        precision=device.precision,
        deterministic=bool(cfg.get("deterministic", False)),  # always said: the flag is process-wide
        enable_checkpointing=True,
        enable_progress_bar=tty,
        plugins=[AtomicCheckpointIO(), *cluster_plugins()],
    )


def _start_tracking(
    cfg: DictConfig, run_dir: Path, record: RunRecord, resume: Resume
) -> comet.CometRun | None:
    log.info(f"{record.label}: {record.params:,} parameters, {record.stem} stem, run dir {run_dir}")
    if resume.path:
        log.info(f"resuming from {resume.path}, saved at the end of epoch {resume.epoch + 1}")
    return comet.start(cfg.logger, run_dir, record.label, comet.run_tags(record), resume.epoch, record=record)


def _loggers(cfg: DictConfig, run_dir: Path, tracker: comet.CometRun | None, resume: Resume) -> list:
    loggers = [tracker.logger] if tracker is not None and tracker.experiment is not None else []
    if cfg.logger.name == "csv":
        loggers.append(AppendingCSVLogger(str(run_dir), resume_step=resume.step))
    for logger in loggers:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    return loggers


@dataclass
class Outcome:
    """How fit and test ended: the run's status, and the error that ended it otherwise."""

    status: str
    test_error: float | None = None
    error: BaseException | None = None

    @property
    def message(self) -> str | None:
        if self.error is None:
            return None
        if self.status == "interrupted":
            return type(self.error).__name__
        return str(self.error) if self.status == "diverged" else describe(self.error)

    def conclude(self, record: RunRecord, path: Path | None) -> RunRecord:
        """Write the record (rank 0), then return it if the run completed, or stop: an interrupt stops a
        sweep too; any other end is a RunFailed with its one line (or the traceback, if asked for)."""
        if path is not None:
            write_record(path, record)
        if self.status == "completed":
            if path is not None:
                errors = ", ".join(
                    f"{s} error {_fraction(getattr(record, f'{s}_error'))}" for s in ("train", "val", "test")
                )
                log.info(
                    f"{record.label}: {errors} after {record.epochs} epochs ({record.wall_time_s:.0f}s); "
                    f"summary: {path}"
                )
            return record
        if self.status == "interrupted":
            if threading.current_thread() is threading.main_thread():
                signal.signal(signal.SIGINT, signal.default_int_handler)  # the next Ctrl+C works again
            raise KeyboardInterrupt
        if traceback_wanted() and self.error is not None and not isinstance(self.error, UserError):
            raise self.error
        where = f" (record: {path})" if path else ""
        raise RunFailed(f"run {self.status}: {self.message}{where}")


def fit_and_test(
    trainer: pl.Trainer,
    module: pl.LightningModule,
    datamodule: pl.LightningDataModule,
    ckpt_path: Path | None,
    cfg: DictConfig,
    run_dir: Path,
) -> Outcome:
    """Fit (resuming from `ckpt_path`), then test; every way this can end turned into an Outcome here."""
    try:
        with distributed.worker_env(cfg, run_dir):
            trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
        (test,) = trainer.test(module, datamodule=datamodule, verbose=False)
        return Outcome("completed", test_error=1 - test["test/acc"])
    except Diverged as error:
        return Outcome("diverged", error=error)
    except (KeyboardInterrupt, SystemExit) as error:  # Lightning turns Ctrl+C into SystemExit
        return Outcome("interrupted", error=error)
    except Exception as error:
        return Outcome("failed", error=error)


def _fraction(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _error(accuracy: float | None) -> float | None:
    return None if accuracy is None else 1 - accuracy


def _stages(rows: list[dict]) -> list[str]:
    """stage1, stage2, ...: the parts of the net between stem and head that metrics.csv has norms of."""
    prefix = f"{PARAM_GRAD_PREFIX}stage"
    found = {int(k.removeprefix(prefix)) for row in rows for k in row if k.startswith(prefix)}
    return [f"stage{i}" for i in sorted(found)]


def _param_grad_norms(rows: list[dict], parts: list[str]) -> dict[str, list[float | None]] | None:
    """Per part of the net (in `parts`' order), its mean parameter-gradient norm in each epoch, from
    metrics.csv's columns."""
    norms = {part: [row.get(f"{PARAM_GRAD_PREFIX}{part}") for row in rows] for part in parts}
    return {part: values for part, values in norms.items() if any(v is not None for v in values)} or None


def run_worker() -> int:
    """Entry point of a DDP rank started by Lightning (experiments.distributed): train the parent's run; rank
    0 records it."""
    from experiments.tracking.noise import silence_library_noise

    silence_library_noise()
    spec = json.loads(os.environ[distributed.WORKER_ENV])
    train(OmegaConf.create(spec["config"]), Path(spec["run_dir"]))
    return 0
