"""Every known config key checked before torch is imported: one table, one line per mistake.

A refusal names the key, what it got and what is valid, in about a second and before anything is written.
Keys the table does not know (`+trainer.NAME=...`) go to their library, which judges them later.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from experiments import precision, preflight, secret, specs
from experiments.errors import UserError
from experiments.plan import Measure, Plan, ProfileSteps, Subject

ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps")  # Lightning's, less those that need extra packages
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
# pytorch_lightning.Trainer's arguments (a test holds this to the installed Lightning's): a config key under
# trainer/ that is none of these is refused here, not by Lightning after torch is imported
TRAINER_ARGUMENTS = (
    "accelerator",
    "strategy",
    "devices",
    "num_nodes",
    "precision",
    "logger",
    "callbacks",
    "fast_dev_run",
    "max_epochs",
    "min_epochs",
    "max_steps",
    "min_steps",
    "max_time",
    "limit_train_batches",
    "limit_val_batches",
    "limit_test_batches",
    "limit_predict_batches",
    "overfit_batches",
    "val_check_interval",
    "check_val_every_n_epoch",
    "num_sanity_val_steps",
    "log_every_n_steps",
    "enable_checkpointing",
    "enable_progress_bar",
    "enable_model_summary",
    "accumulate_grad_batches",
    "gradient_clip_val",
    "gradient_clip_algorithm",
    "deterministic",
    "benchmark",
    "inference_mode",
    "use_distributed_sampler",
    "profiler",
    "detect_anomaly",
    "barebones",
    "plugins",
    "sync_batchnorm",
    "reload_dataloaders_every_n_epochs",
    "default_root_dir",
    "enable_autolog_hparams",
    "model_registry",
)


def _int(low: int = 0, high: int | None = None) -> Callable[[Any], bool]:
    return lambda v: (
        isinstance(v, int) and not isinstance(v, bool) and v >= low and (high is None or v <= high)
    )


def _number(
    low: float = 0.0, high: float | None = None, low_open: bool = False, high_open: bool = False
) -> Callable[[Any], bool]:
    def ok(v: Any) -> bool:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            return False
        above = v > low if low_open else v >= low
        below = high is None or (v < high if high_open else v <= high)
        return above and below

    return ok


def _one_of(*valid: Any) -> Callable[[Any], bool]:
    return lambda v: any(v == x and type(v) is type(x) for x in valid)


def _fractions(v: Any) -> bool:
    return isinstance(v, list) and all(_number(0, 1, True, True)(x) for x in v) and v == sorted(v)


def _optional(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: v is None or check(v)


_BOOL = _one_of(True, False)
_AUTO_BOOL = _one_of("auto", True, False)
# key: (check, what is valid)
RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "seed": (_int(0, 2**32 - 1), "an integer from 0 to 4294967295"),
    "arch.depth": (_int(1), "a positive integer (weighted layers)"),
    "arch.form": (_one_of(*specs.FORMS), " or ".join(specs.FORMS)),
    "arch.shortcut": (_optional(_one_of(*specs.SHORTCUTS)), "A, B, none or null"),
    "arch.bottleneck": (_optional(_BOOL), "true, false or null"),
    "arch.growth_rate": (_optional(_int(1)), "a positive integer or null"),
    "arch.compression": (_optional(_number(0, 1, low_open=True)), "a number in (0, 1] or null"),
    "arch.drop_rate": (_number(0, 1, high_open=True), "a number in [0, 1)"),
    "arch.zero_init_residual": (_BOOL, "true or false"),
    "arch.memory_efficient": (_BOOL, "true or false"),
    "arch.stem": (_one_of(*specs.STEMS), ", ".join(specs.STEMS)),
    "arch.freeze": (_one_of("none", "backbone"), "none or backbone"),
    "compile": (
        _one_of(False, True, *COMPILE_MODES),
        f"false, true or a torch.compile mode ({', '.join(COMPILE_MODES)})",
    ),
    "cuda_graph": (_AUTO_BOOL, "auto, true or false"),
    "deterministic": (_BOOL, "true or false"),
    "precision": (lambda v: str(v) in precision.SETTINGS, f"one of {', '.join(precision.SETTINGS)}"),
    "channels_last": (_AUTO_BOOL, "auto, true or false"),
    "ckpt_path": (_optional(lambda v: isinstance(v, str) and v != ""), "null or the path of a checkpoint"),
    "dataset.batch_size": (_int(1), "a positive integer"),
    "dataset.val_size": (_int(0), "an integer >= 0 (0: no validation split)"),
    "dataset.crop_padding": (_int(0), "an integer >= 0"),
    "dataset.flip": (_BOOL, "true or false"),
    "dataset.image_size": (_int(1), "a positive integer"),
    "dataset.channels": (_int(1), "a positive integer"),
    "dataset.num_classes": (_int(2), "an integer >= 2"),
    "dataset.train_size": (_int(1), "a positive integer"),
    "dataset.test_size": (_int(1), "a positive integer"),
    "dataset.num_workers": (lambda v: v == "auto" or _int(0)(v), "auto or an integer >= 0"),
    "dataset.path": (lambda v: isinstance(v, str) and v != "", "a folder holding train/ and val/"),
    "trainer.max_epochs": (_int(1), "an integer >= 1"),
    "trainer.accelerator": (_one_of(*ACCELERATORS), ", ".join(ACCELERATORS)),
    "trainer.devices": (
        lambda v: v == "auto" or _int(1)(v) or isinstance(v, (list, str)),
        "a positive integer, a list of device ids or auto",
    ),
    "trainer.num_nodes": (_int(1), "a positive integer"),
    "optim.lr": (_number(0, low_open=True), "a finite number > 0"),
    "optim.momentum": (_number(0, 1, high_open=True), "a number in [0, 1)"),
    "optim.weight_decay": (_number(0), "a finite number >= 0"),
    "optim.nesterov": (_BOOL, "true or false"),
    "optim.betas": (
        lambda v: isinstance(v, list) and len(v) == 2 and all(_number(0, 1, high_open=True)(b) for b in v),
        "two numbers in [0, 1)",
    ),
    "schedule.warmup_steps": (_int(0), "an integer >= 0"),
    "schedule.warmup_until_train_error": (
        _optional(_number(0, 1, True, True)),
        "null or a fraction in (0, 1)",
    ),
    "schedule.milestones": (_fractions, "increasing fractions of training in (0, 1)"),
    "schedule.gamma": (_number(0, 1, low_open=True), "a number in (0, 1]"),
    "logger.online": (_AUTO_BOOL, "auto, true or false"),
    "measure.enabled": (_BOOL, "true or false"),
    "measure.warmup_steps": (_int(0), "an integer >= 0"),
    "measure.grad_norm_every": (_int(0), "an integer >= 0 (0: off)"),
    "measure.signals_every": (
        lambda v: v == "auto" or _int(0)(v),
        "auto (about 50 steps a run, dense early, at most 1 in 10), k (every k-th step) or 0 (off)",
    ),
    "profile.batch_size": (_optional(_int(1)), "a positive integer or null"),
    "profile.warmup_steps": (_int(0), "an integer >= 0"),
    "profile.steps": (_int(1), "an integer >= 1"),
}


def check(cfg: DictConfig) -> Plan:
    """Every setting of `cfg`, then what its plan needs from this machine: the plan, or a one-line UserError
    for the first that cannot run."""
    check_keys(cfg)
    check_trainer_keys(cfg)
    check_own_keys(cfg)
    check_deterministic(cfg)
    plan = Plan.of(cfg)
    spec = check_arch(plan.subject)
    check_shape(plan, spec)
    check_val_size(plan.subject.dataset)
    preflight.check(plan)
    return plan


def check_deterministic(cfg: DictConfig) -> None:
    """deterministic=true steps eagerly: torch.compile's modes that record CUDA graphs of their own are
    refused with it, as cuda_graph=true is."""
    if cfg.get("deterministic") and cfg.get("compile") in ("reduce-overhead", "max-autotune"):
        raise UserError(
            f"compile={cfg.compile} records CUDA graphs, which deterministic=true does not trust to repeat "
            "bit for bit: use compile=true or compile=false with it"
        )


def check_trainer_keys(cfg: DictConfig) -> None:
    """Each trainer/ key must be an argument of Lightning's Trainer: one that is not is named, with the
    nearest that is."""
    for key in cfg.get("trainer") or {}:
        if key == "deterministic":  # the project's setting does more than Lightning's flag
            raise UserError(
                f"trainer.deterministic: set deterministic={cfg.trainer[key]} instead (it also keeps the "
                "steps eager and cuDNN's autotuner off)"
            )
        if key == "accumulate_grad_batches" and cfg.trainer[key] != 1:
            raise UserError(
                "trainer.accumulate_grad_batches: a training step here is one batch and one update; batch "
                "norm normalises each batch alone, so accumulated batches are not a larger one: set "
                "dataset.batch_size instead"
            )
        if str(key).startswith("_") or key in TRAINER_ARGUMENTS:
            continue
        (nearest,) = difflib.get_close_matches(str(key), TRAINER_ARGUMENTS, n=1, cutoff=0) or ("?",)
        raise UserError(
            f"trainer.{key} is not an argument of Lightning's Trainer; the nearest that is: trainer.{nearest}"
        )


def check_own_keys(cfg: DictConfig) -> None:
    """measure/ and profile/ are the project's own settings: a key neither has is named, with the nearest."""
    for group, known in (("measure", Measure), ("profile", ProfileSteps)):
        names = [f.name for f in fields(known)]
        for key in cfg.get(group) or {}:
            if key not in names:
                (nearest,) = difflib.get_close_matches(str(key), names, n=1, cutoff=0)
                raise UserError(f"{group}.{key} is not a setting; the nearest that is: {group}.{nearest}")


def check_val_size(dataset: dict[str, Any]) -> None:
    """A validation split must leave training images, where the dataset's size is known before loading."""
    name, val_size = dataset["name"], dataset.get("val_size")
    images = specs.TRAIN_IMAGES.get(name)
    if images is None or not isinstance(val_size, int) or val_size < images:
        return
    raise UserError(
        f"dataset.val_size={val_size} leaves no training images: {name} has {images:,} for training and "
        f"validation together; use at most {images - 1:,}"
    )


def check_keys(cfg: DictConfig) -> None:
    """The secrets rule, then each key of the table on its own (a sweep's shared config is checked so)."""
    _check_secrets(OmegaConf.to_container(cfg, resolve=False))
    cfg = OmegaConf.masked_copy(cfg, [key for key in cfg if key != "hydra"])
    if missing := sorted(OmegaConf.missing_keys(cfg)):
        raise UserError(f"{missing[0]} must be set: add {missing[0]}=VALUE to the command")
    for key, (ok, valid) in RULES.items():
        value = OmegaConf.select(cfg, key, default=_ABSENT)
        if value is _ABSENT:
            continue
        if OmegaConf.is_config(value):
            value = OmegaConf.to_container(value, resolve=True)
        if not ok(value):
            raise UserError(f"{key} must be {valid}, got {_shown(value)}")


_ABSENT = object()


def _shown(value: Any) -> str:
    return (
        repr(value)
        if isinstance(value, str)
        else str(value).replace("True", "true").replace("False", "false")
    )


def check_arch(subject: Subject) -> specs.Spec:
    """The subject's arch as the spec it builds, or a one-line UserError naming what is wrong."""
    options = dict(subject.net_options)
    pretrained = options.pop("pretrained", None)
    image_size = subject.data_shape[2]
    try:
        spec = specs.resolve(
            subject.arch["name"], image_size=image_size, pretrained=bool(pretrained), **options
        )
    except ValueError as error:
        raise UserError(f"arch: {error}") from None
    if pretrained not in (None, "torchvision"):
        path = Path(specs.weights_path(str(pretrained), spec)).expanduser()
        if not path.is_file():
            raise UserError(f"arch.pretrained must be torchvision or a state-dict file: {path} is not a file")
    return spec


def check_shape(plan: Plan, spec: specs.Spec) -> None:
    """Refuse images too small for the net: its pools would shrink them to nothing, or batch norm would get a
    single value per channel in training."""
    size = plan.subject.data_shape[2]
    smallest = specs.min_image_size(spec)
    if size < smallest:
        raise UserError(
            f"{spec.label}{spec.depth} needs images of at least {smallest} px ({spec.form} form, {spec.stem} "
            f"stem); the dataset's are {size} px"
        )
    key, batch = "dataset.batch_size", plan.subject.dataset["batch_size"]
    if plan.profile and plan.profile.batch_size:  # profile's steps take its own batch
        key, batch = "profile.batch_size", plan.profile.batch_size
    if batch * specs.final_map_size(spec, size) ** 2 < 2:
        raise UserError(
            f"{key}={batch} with {size} px images leaves batch norm one value per channel at the last "
            "stage; use a batch of 2 or more"
        )


def check_hydra_secrets(hydra_cfg: DictConfig) -> None:
    """Hydra's own settings of a job go to .hydra/hydra.yaml: no secret there either (hydra.job.env_set)."""
    _check_secrets(OmegaConf.to_container(hydra_cfg, resolve=False), "hydra.")


def _check_secrets(config: Any, path: str = "") -> None:
    if key := secret.find(config, path):
        raise UserError(secret.refused(key))
