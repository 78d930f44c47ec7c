"""Progress of a multirun: each run says where it stands ("run 3 of 10")."""

from __future__ import annotations

import math
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from omegaconf import DictConfig


class SweepProgress(Callback):
    """A Hydra callback that counts the runs of a sweep before it starts, as the basic sweeper makes them:
    the product of the lengths of its swept values, from hydra.sweeper.params and then the command line."""

    size = 0  # runs in the sweep this process launches; 0 when unknown

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        params = [f"{key}={value}" for key, value in (config.hydra.sweeper.params or {}).items()]
        overrides = OverridesParser.create().parse_overrides([*params, *config.hydra.overrides.task])
        # keyed by name, in order: a later override of a key replaces an earlier sweep of it
        values = {
            o.get_key_element(): len(list(o.sweep_string_iterator())) if o.is_sweep_override() else 1
            for o in overrides
        }
        SweepProgress.size = math.prod(values.values())
