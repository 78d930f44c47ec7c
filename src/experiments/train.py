"""One training run: data, model, trainer and loggers from the config; fit, test, and the run's record."""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import ModelCheckpoint, RichProgressBar
from pytorch_lightning.loggers import CSVLogger
from pytorch_lightning.utilities import rank_zero_only

from experiments import distributed
from experiments.build import (
    build_datamodule,
    build_model,
    build_module,
    build_trainer,
    cluster_plugins,
    new_summary,
    resolve_device,
)
from experiments.errors import RunFailed, UserError
from experiments.logging import comet
from experiments.logging.record import EpochRecord, write_json
from experiments.measure.cost import TrainingCost
from experiments.measure.gradflow import GradientFlow
from experiments.module import Diverged

log = logging.getLogger(__name__)


def _checkpoint(cfg: DictConfig, run_dir: Path) -> tuple[Path | None, int | None]:
    """The checkpoint to resume from and its epoch: this run's own last.ckpt if it has one (a re-run or
    requeued job goes on from there), else `ckpt_path` if given."""
    own = run_dir / "checkpoints" / "last.ckpt"
    path = own if own.exists() else Path(cfg.ckpt_path) if cfg.ckpt_path else None
    if path is None:
        return None, None
    if not path.exists():
        raise UserError(f"ckpt_path: {path} does not exist")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
        return path, int(checkpoint["epoch"])
    except Exception as error:
        raise UserError(
            f"checkpoint {path} is unreadable or not a Lightning checkpoint ({type(error).__name__}); "
            "delete it to start afresh or pass another ckpt_path"
        ) from None


def _loggers(cfg: DictConfig, run_dir: Path, comet_run: comet.CometRun | None) -> list[pl.loggers.Logger]:
    loggers: list[pl.loggers.Logger] = []
    if comet_run is not None:
        loggers.append(comet_run.logger)
    if cfg.logger.name == "csv":
        loggers.append(CSVLogger(run_dir, name="csv", version=""))
    for logger in loggers:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    return loggers


def _completed_before(summary_path: Path) -> dict[str, Any] | None:
    if summary_path.exists():
        previous = json.loads(summary_path.read_text())
        if previous.get("status") == "completed":
            return previous
    return None


def train(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Train, test and record one run in `run_dir`; resume it if it was cut short. Returns the summary."""
    rank_zero = rank_zero_only.rank == 0
    summary_path = run_dir / "summary.json"
    if previous := _completed_before(summary_path):  # every rank: all tasks of a SLURM job stop here
        if rank_zero:
            log.info(f"{run_dir} already holds this run, completed: nothing to do ({summary_path})")
        return previous
    if not isinstance(cfg.trainer.max_epochs, int) or cfg.trainer.max_epochs < 1:
        raise UserError(f"trainer.max_epochs must be an integer >= 1, got {cfg.trainer.max_epochs!r}")
    started = time.perf_counter()
    run_dir.mkdir(parents=True, exist_ok=True)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    device = resolve_device(cfg)
    datamodule = build_datamodule(cfg)
    model = build_model(cfg, datamodule)
    summary = new_summary("train", cfg, model, datamodule, device, counts=cfg.measure.enabled)
    module = build_module(cfg, model, device)
    ckpt_path, resume_epoch = _checkpoint(cfg, run_dir)

    tty = sys.stdout.isatty()
    measures = [TrainingCost(cfg.measure.warmup_steps)] if cfg.measure.enabled else []
    if cfg.measure.enabled and cfg.measure.grad_norm_every > 0:
        measures.append(GradientFlow(cfg.measure.grad_norm_every))
    record = EpochRecord(run_dir / "metrics.csv", print_lines=not tty, extras=measures)
    # checkpoints/last.ckpt, replaced at the end of every epoch (after metrics.csv has its row)
    checkpoint = ModelCheckpoint(
        dirpath=run_dir / "checkpoints",
        filename="last",
        save_top_k=1,
        save_on_train_epoch_end=True,
        enable_version_counter=False,
    )
    trainer = build_trainer(
        cfg,
        default_root_dir=run_dir,
        logger=False,  # the loggers join below, once the trainer is known to be valid
        callbacks=[record, *measures, checkpoint, *([RichProgressBar()] if tty else [])],
        precision=device.precision,
        enable_progress_bar=tty,
        enable_model_summary=False,  # one line of our own says what the model is
        plugins=cluster_plugins(),
    )

    name = comet.run_label(summary)
    comet_run = None
    if rank_zero:
        log.info(f"{name}: {summary['params']:,} parameters, run dir {run_dir}")
        if ckpt_path:
            log.info(f"resuming from {ckpt_path}, saved at the end of epoch {resume_epoch + 1}")
        comet_run = comet.start(cfg.logger, run_dir, name, comet.run_tags(summary), resume_epoch)
    summary["comet"] = comet_run.info if comet_run else {"mode": "disabled"}
    trainer.loggers = _loggers(cfg, run_dir, comet_run)

    failure: BaseException | None = None
    try:
        with distributed.worker_env(cfg, run_dir):
            trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
        (test,) = trainer.test(module, datamodule=datamodule, verbose=False)
        summary.update(status="completed", test_error=1 - test["test/acc"])
    except Diverged as error:
        summary.update(status="diverged", error=str(error))
    except (KeyboardInterrupt, SystemExit) as error:  # Lightning turns Ctrl+C into SystemExit
        summary.update(status="interrupted", error=type(error).__name__)
        failure = error
    except Exception as error:
        summary["error"] = str(error) if isinstance(error, UserError) else f"{type(error).__name__}: {error}"
        failure = error
    if not rank_zero:
        if failure:
            raise failure
        return summary

    final = record.rows[-1] if record.rows else {}
    summary.update(
        epochs=trainer.current_epoch,
        train_error=_error(final.get("train/acc")),
        val_error=_error(final.get("val/acc")),
        train_loss=_float(final.get("train/loss")),
        val_loss=_float(final.get("val/loss")),
        **(measures[0].summary() if measures else {}),
        grad_norms=_grad_norms(record.rows, [name for name, _ in model.named_children()]),
        cuda_graph_steps=module.step_graph.replays if module.step_graph else 0,
        wall_time_s=round(time.perf_counter() - started, 2),
    )
    if comet_run:
        summary["comet"] = comet_run.finish(summary)
    write_json(summary_path, summary)
    if summary["status"] == "interrupted":  # stop a sweep too, and let the next Ctrl+C work again
        signal.signal(signal.SIGINT, signal.default_int_handler)
        raise KeyboardInterrupt
    if summary["status"] != "completed":
        if os.environ.get("EXPERIMENTS_FULL_ERROR") and failure and not isinstance(failure, UserError):
            raise failure
        raise RunFailed(f"run {summary['status']}: {summary.get('error', '')} (record: {summary_path})")
    errors = ", ".join(
        f"{split} error {_fraction(summary[f'{split}_error'])}" for split in ("train", "val", "test")
    )
    epochs = f"{summary['epochs']} epochs ({summary['wall_time_s']:.0f}s)"
    log.info(f"{name}: {errors} after {epochs}; summary: {summary_path}")
    return summary


def _fraction(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _float(value: Any) -> float | None:
    return None if value in (None, "") else float(value)


def _error(accuracy: Any) -> float | None:
    return None if accuracy in (None, "") else 1 - float(accuracy)


def _grad_norms(rows: list[dict[str, Any]], parts: list[str]) -> dict[str, list[float | None]]:
    """Per part of the net (in the net's order), its mean gradient norm in each epoch, from metrics.csv's
    grad_norm/ columns (None for an epoch without a sample)."""
    measured = {k.removeprefix("grad_norm/") for row in rows for k in row if k.startswith("grad_norm/")}
    return {
        part: [_float(row.get(f"grad_norm/{part}")) for row in rows] for part in parts if part in measured
    }
