"""Where the Hydra configs live, the arch presets as Hydra options, and composing a config in-process."""

from __future__ import annotations

import functools
import sys
from pathlib import Path

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from experiments.specs import DEFAULT_DEPTHS, PRESETS

# conf/ beside src/ in a checkout (an editable install), else where `pip install .` put it
CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
if not CONF_DIR.is_dir():
    CONF_DIR = Path(sys.prefix) / "share" / "experiments" / "conf"


def register_presets() -> None:
    """Every preset of `experiments.specs` as an option of the `arch` group (`arch=resnet56`): its family's
    config (conf/arch/<family>.yaml) with the preset's values over it. Presets have no YAML of their own, and
    a family's YAML takes its depth from the config `arch_depth_<family>` stored here, so the zoo and the
    config cannot disagree."""
    store = ConfigStore.instance()
    for family, depth in DEFAULT_DEPTHS.items():  # outside any group: no option of its own in --help
        store.store(name=f"arch_depth_{family}", node={"depth": depth})
    for name, preset in PRESETS.items():
        values = {key: value for key, value in preset.items() if key != "family"}
        store.store(group="arch", name=name, node={"defaults": [preset["family"], "_self_"], **values})


def compose(command: str, overrides: list[str] = ()) -> DictConfig:
    """The config of `experiments COMMAND OVERRIDES`, composed as Hydra composes it for a run (tests
    and benchmarks use it)."""
    register_presets()
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return hydra_compose(command, list(overrides))


def he2016_warmup(family: str, depth: int) -> float | None:
    """The `he2016_warmup` resolver: the training error under which He et al.'s warm-up ends (lr / 10
    until then), for the one net of their CIFAR-10 sweep they warmed up, ResNet-110; None for the others."""
    net, until = _he2016_warmed_up()
    return until if (family, depth) == net else None


@functools.cache
def _he2016_warmed_up() -> tuple[tuple[str, int], float]:
    """The (family, depth) of the net experiment=he2016_resnet110 trains, and the training error its warm-up
    ends at: that experiment holds the paper's warm-up, and the sweeps that include the net take it from
    there. (Its literal value stays in the file: a run's hash reads configs as written.)"""
    experiment = OmegaConf.load(CONF_DIR / "experiment" / "he2016_resnet110.yaml")
    (preset,) = [
        entry["override /arch"]
        for entry in experiment.defaults
        if isinstance(entry, DictConfig) and "override /arch" in entry
    ]
    net = PRESETS[preset]
    return (net["family"], net["depth"]), experiment.schedule.warmup_until_train_error


register_presets()
OmegaConf.register_new_resolver("he2016_warmup", he2016_warmup, replace=True)
