"""A run's config as typed objects, made once by the job's guard after every setting was checked: what the
run trains (`Subject`), how (`Recipe`), where it logs (`LoggerSettings`). The layers below take these, not
the config; torch-free.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from experiments import specs

# Lightning's gradient-clipping arguments: the module clips in its own step (Lightning clips only a step it
# runs itself), so the Trainer does not get them
CLIPPING = ("gradient_clip_val", "gradient_clip_algorithm")


@dataclass(frozen=True)
class Subject:
    """What a run trains: the net, the data, the seed."""

    seed: int
    arch: dict[str, Any]  # conf/arch: `name`, the spec's options, `freeze` and `pretrained`
    dataset: dict[str, Any]  # conf/dataset: the data module's class (`_target_`) and its arguments

    @classmethod
    def of(cls, config: DictConfig | dict[str, Any]) -> Subject:
        """The subject of a composed config, or of a run's saved one (.hydra/config.yaml)."""
        arch, dataset = (_plain(config[key]) for key in ("arch", "dataset"))
        return cls(config["seed"], arch, dataset)

    @property
    def data_shape(self) -> tuple[int, int, int]:
        """(classes, channels, image size) of the dataset; 0 classes where only its files can say."""
        name = self.dataset.get("name")
        if name in specs.DATASETS:
            return specs.DATASETS[name]
        return (
            self.dataset.get("num_classes", 0),
            self.dataset.get("channels", 3),
            self.dataset.get("image_size", 32),
        )

    @property
    def net_options(self) -> dict[str, Any]:
        """The arch options that build the net (`freeze` says what trains, not what is built)."""
        return {k: v for k, v in self.arch.items() if k not in ("name", "freeze")}


@dataclass(frozen=True)
class Measure:
    """What a training run measures while it trains (conf/train.yaml's `measure`, where the defaults are)."""

    enabled: bool
    warmup_steps: int  # steps at the start of each fit that are not timed
    grad_norm_every: int  # optimiser steps between parameter-gradient norms; 0: off
    signals_every: int | str  # signals.csv's steps: auto, every k-th, or 0 (off)


@dataclass(frozen=True)
class Recipe:
    """How a run trains: optimiser, schedule, Lightning's Trainer, and the device's settings as set (auto
    included; `device.resolve_device` decides them where torch can see the hardware)."""

    optim: dict[str, Any]  # conf/optim: the optimiser's class (`_target_`, partial) and its arguments
    schedule: dict[str, Any]  # conf/schedule: lr_factor's arguments
    trainer: dict[str, Any]  # conf/trainer: Lightning Trainer's arguments, less gradient clipping
    clip: tuple[float, str] | None  # gradient clipping: (value, norm or value), or None
    precision: str  # auto or a Lightning precision, as set
    channels_last: bool | str  # auto, true or false
    compile: bool | str  # false, true or a torch.compile mode
    cuda_graph: bool | str  # auto, true or false
    deterministic: bool
    memory_efficient: bool  # the net recomputes in backward (arch.memory_efficient)
    measure: Measure
    ckpt_path: Path | None = None  # a checkpoint to start from

    @property
    def accelerator(self) -> str:
        return self.trainer.get("accelerator", "auto")

    @property
    def one_device(self) -> bool:
        """Trains on one device in one process (no DDP)."""
        placement = (self.trainer.get("devices"), self.trainer.get("num_nodes", 1))
        return placement == (1, 1) and self.trainer.get("strategy", "auto") == "auto"


@dataclass(frozen=True)
class ProfileSteps:
    """`profile`'s steps (conf/profile.yaml)."""

    batch_size: int | None
    warmup_steps: int
    steps: int


@dataclass(frozen=True)
class LoggerSettings:
    """`name`: comet, csv or none; for comet, the `project` and `workspace` its experiments go to, and
    `online`: True, False or "auto" (online when an API key is set)."""

    name: str
    project: str | None = None
    workspace: str | None = None
    online: bool | str = "auto"

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> LoggerSettings:
        """From a `logger` config, a DictConfig or a dict: only comet's holds more than `name`."""
        return cls(
            name=config["name"],
            project=config.get("project"),
            workspace=config.get("workspace"),
            online=config.get("online", "auto"),
        )


@functools.cache
def configured_logger(name: str) -> LoggerSettings:
    """conf/logger/<name>.yaml as a run composes it: the conf is the one place its defaults are written
    (Comet's project name among them)."""
    from experiments.config import compose

    return LoggerSettings.from_config(compose("train", [f"logger={name}"]).logger)


@dataclass(frozen=True)
class Plan:
    """One run's config, checked and typed: what it trains, how, where it logs, and the whole config as
    resolved values (the loggers' hyperparameters, and what a DDP rank rebuilds its plan from)."""

    subject: Subject
    recipe: Recipe
    logger: LoggerSettings
    config: dict[str, Any]
    profile: ProfileSteps | None = None

    @classmethod
    def of(cls, cfg: DictConfig | dict[str, Any]) -> Plan:
        """The plan of a composed (and checked: settings.check) config: conf/ gives every key its default."""
        config = _resolved(cfg)
        trainer = {k: v for k, v in config["trainer"].items() if k not in CLIPPING}
        clip = config["trainer"].get("gradient_clip_val")
        arch = config["arch"]
        recipe = Recipe(
            optim=config["optim"],
            schedule=config["schedule"],
            trainer=trainer,
            clip=(float(clip), config["trainer"].get("gradient_clip_algorithm") or "norm") if clip else None,
            precision=str(config["precision"]),
            channels_last=config["channels_last"],
            compile=config["compile"],
            cuda_graph=config["cuda_graph"],
            deterministic=config["deterministic"],
            memory_efficient=arch["memory_efficient"],
            measure=Measure(**config["measure"]),
            ckpt_path=Path(config["ckpt_path"]).expanduser() if config.get("ckpt_path") else None,
        )
        return cls(
            subject=Subject.of(config),
            recipe=recipe,
            logger=LoggerSettings.from_config(config["logger"]),
            config=config,
            profile=ProfileSteps(**config["profile"]) if "profile" in config else None,
        )


def _resolved(cfg: DictConfig | dict[str, Any]) -> dict[str, Any]:
    """The config as plain values, interpolations resolved, without Hydra's own node."""
    if isinstance(cfg, DictConfig):  # without Hydra's node: its run directory's name is made from the rest
        cfg = OmegaConf.masked_copy(cfg, [key for key in cfg if key != "hydra"])
    return {key: _plain(value) for key, value in cfg.items() if key != "hydra"}


def _plain(value: Any) -> Any:
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
