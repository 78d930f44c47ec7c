"""One training run: data, model, trainer and loggers from the config; fit, test, and the run's record."""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import ModelCheckpoint, RichProgressBar
from pytorch_lightning.loggers import CSVLogger
from pytorch_lightning.utilities import rank_zero_only

from experiments import distributed
from experiments.build import build_datamodule, build_model, count_params, resolve_device
from experiments.errors import RunFailed, UserError
from experiments.logging import comet
from experiments.logging.record import EpochRecord, write_json
from experiments.module import Classifier

log = logging.getLogger(__name__)


def _checkpoint(cfg: DictConfig, run_dir: Path) -> Path | None:
    """The checkpoint to resume from: `ckpt_path` if given, else this run's last.ckpt if there is one."""
    path = Path(cfg.ckpt_path) if cfg.ckpt_path else run_dir / "checkpoints" / "last.ckpt"
    if not path.exists():
        if cfg.ckpt_path:
            raise UserError(f"ckpt_path: {path} does not exist")
        return None
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
        assert isinstance(checkpoint, dict) and "state_dict" in checkpoint
    except Exception as error:
        raise UserError(
            f"checkpoint {path} is unreadable or not a Lightning checkpoint ({type(error).__name__}); "
            "delete it to start afresh or pass another ckpt_path"
        ) from None
    return path


def _sweep_tag() -> list[str]:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hydra_cfg = HydraConfig.get()
    return [f"sweep:{hydra_cfg.sweep.dir}"] if hydra_cfg.mode == RunMode.MULTIRUN else []


def train(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Train, test and record one run in `run_dir`; resume it if it was cut short. Returns the summary."""
    rank_zero = rank_zero_only.rank == 0
    summary_path = run_dir / "summary.json"
    if rank_zero and summary_path.exists() and not cfg.ckpt_path:
        previous = json.loads(summary_path.read_text())
        if previous.get("status") == "completed":
            log.info(f"{run_dir} already holds this run, completed: nothing to do ({summary_path})")
            return previous
    if not isinstance(cfg.trainer.max_epochs, int) or cfg.trainer.max_epochs < 1:
        raise UserError(f"trainer.max_epochs must be an integer >= 1, got {cfg.trainer.max_epochs!r}")
    started = time.perf_counter()
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    device = resolve_device(cfg)
    datamodule = build_datamodule(cfg)
    model = build_model(cfg, datamodule)
    if device.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if cfg.compile:
        model.compile()
    module = Classifier(
        model,
        instantiate(cfg.optim),
        OmegaConf.to_container(cfg.schedule, resolve=True),
        channels_last=device.channels_last,
    )
    ckpt_path = _checkpoint(cfg, run_dir)
    name = f"{model.arch}{model.depth}-{datamodule.name}-s{cfg.seed}"
    summary: dict[str, Any] = {
        "status": "failed",
        "arch": model.arch,
        "depth": model.depth,
        "dataset": datamodule.name,
        "seed": cfg.seed,
        "form": model.form,
        "stem": model.stem_type,
        "params": count_params(model),
        "flops_per_image": None,
        "activation_bytes": None,
        "peak_memory_bytes": None,
        "step_time_ms": None,
        "throughput": None,
        "device": device.name,
        "precision": device.precision,
        "comet": {"mode": "disabled"},
    }
    if rank_zero:
        log.info(f"{name}: {summary['params']:,} parameters, run dir {run_dir}")

    loggers: list[pl.loggers.Logger] = []
    experiment = None
    if rank_zero and cfg.logger.name == "comet":
        try:
            tags = [f"arch:{model.arch}", f"depth:{model.depth}", f"dataset:{datamodule.name}", *_sweep_tag()]
            experiment, mode = comet.start_experiment(
                run_dir, name, tags, cfg.logger.project, cfg.logger.workspace, cfg.logger.online
            )
            summary["comet"] = {"mode": mode}
            loggers.append(comet.CometLogger(experiment))
        except UserError:
            raise
        except Exception as error:  # Comet must never fail a run
            log.warning(f"Comet could not start ({error}); continuing without it")
    elif cfg.logger.name == "csv":
        loggers.append(CSVLogger(run_dir, name="csv", version=""))
    for logger in loggers:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))

    tty = sys.stdout.isatty()
    record = EpochRecord(run_dir / "metrics.csv", print_lines=not tty)
    callbacks: list[pl.Callback] = [
        record,
        ModelCheckpoint(
            dirpath=run_dir / "checkpoints",
            save_last=True,
            save_top_k=0,
            save_on_train_epoch_end=True,
            enable_version_counter=False,
        ),
    ]
    if tty:
        callbacks.append(RichProgressBar())
    try:
        trainer = instantiate(
            cfg.trainer,
            default_root_dir=run_dir,
            logger=loggers or False,
            callbacks=callbacks,
            precision=device.precision,
            enable_progress_bar=tty,
        )
    except Exception as error:
        raise UserError(f"trainer: {error}") from None

    try:
        with distributed.worker_env(cfg, run_dir):
            trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
        (test,) = trainer.test(module, datamodule=datamodule, verbose=False)
        summary["status"] = "completed"
    except (KeyboardInterrupt, SystemExit) as error:
        summary["status"] = "interrupted"
        summary["error"] = f"{type(error).__name__}"
    except Exception as error:
        summary["error"] = str(error) if isinstance(error, UserError) else f"{type(error).__name__}: {error}"
        if not rank_zero:
            raise
    if not rank_zero:
        return summary

    final = record.rows[-1] if record.rows else {}
    summary.update(
        epochs=trainer.current_epoch,
        train_error=_error(final.get("train/acc")),
        val_error=_error(final.get("val/acc")),
        test_error=_error(test["test/acc"]) if summary["status"] == "completed" else None,
        train_loss=_float(final.get("train/loss")),
        val_loss=_float(final.get("val/loss")),
        wall_time_s=round(time.perf_counter() - started, 2),
    )
    if experiment is not None:
        experiment.log_metrics({k: v for k, v in summary.items() if isinstance(v, (int, float))})
        summary["comet"] = comet.end_experiment(experiment, summary["comet"]["mode"], run_dir)
    write_json(summary_path, summary)
    if summary["status"] != "completed":
        raise RunFailed(f"run {summary['status']}: {summary.get('error', '')} (record: {summary_path})")
    log.info(
        f"{name}: train error {summary['train_error']:.4f}, val error {summary['val_error']:.4f}, "
        f"test error {summary['test_error']:.4f} after {summary['epochs']} epochs "
        f"({summary['wall_time_s']:.0f}s); summary: {summary_path}"
    )
    return summary


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


def _error(accuracy: Any) -> float | None:
    return None if accuracy is None else 1 - float(accuracy)
