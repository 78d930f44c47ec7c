"""What a multirun sweep is, seen from the process that launches it: how many runs it makes (each run says
"run 3 of 10") and where it lives (so a refused sweep leaves no directory, and an interrupted one says how
to finish it). Hydra instantiates this callback itself, so what it learns is kept on the class."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from experiments import settings
from experiments.errors import UserError
from experiments.rundir import remove_if_empty


class SweepRefused(BaseException):
    """A sweep none of whose runs could run; a BaseException because Hydra turns a callback's Exception into
    a warning and goes on. Its message is the user's one line."""


class SweepWatch(Callback):
    size = 0  # runs in the sweep this process launches; 0 when unknown
    directory: Path | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Count the runs as the basic sweeper makes them: the product of the lengths of the swept values,
        from hydra.sweeper.params and then the command line; and refuse settings that no run could have
        before the sweep writes anything."""
        params = [f"{key}={value}" for key, value in (config.hydra.sweeper.params or {}).items()]
        overrides = OverridesParser.create().parse_overrides([*params, *config.hydra.overrides.task])
        # keyed by name, in order: a later override of a key replaces an earlier sweep of it
        values = {
            o.get_key_element(): len(list(o.sweep_string_iterator())) if o.is_sweep_override() else 1
            for o in overrides
        }
        SweepWatch.size = math.prod(values.values())
        SweepWatch.directory = None
        try:
            settings.check_keys(config)
        except UserError as error:
            raise SweepRefused(str(error)) from None
        SweepWatch.directory = Path(str(config.hydra.sweep.dir))

    @classmethod
    def clean_up(cls) -> None:
        """Remove this process's sweep directory if no run wrote anything into it (it holds only Hydra's
        multirun.yaml); forget the sweep."""
        directory, cls.directory, cls.size = cls.directory, None, 0
        if directory is None or not directory.is_dir():
            return
        if all(p.name == "multirun.yaml" for p in directory.iterdir()):
            (directory / "multirun.yaml").unlink(missing_ok=True)
            remove_if_empty(
                directory, parents=2
            )  # multirun/<date>/ and multirun/ when they hold nothing else
