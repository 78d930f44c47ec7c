"""DDP's extra ranks: Lightning starts them by re-running our command line, and they join the parent's run.

Re-running the command would make Hydra compose the config again and create a run directory per rank (in
a multirun, even a whole new sweep). Instead the parent hands each rank its resolved config and run
directory through the environment, and the rank trains with exactly those.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from experiments.plan import Plan

WORKER_ENV = "EXPERIMENTS_DDP_RUN"


@contextmanager
def worker_env(plan: Plan, run_dir: Path) -> Iterator[None]:
    """While fitting on several devices, child processes find this run's config and directory in the
    environment (on one device there are none: runs packed in one process must not share the variable)."""
    trainer = plan.recipe.trainer
    if trainer.get("devices", 1) == 1 and trainer.get("num_nodes", 1) == 1:
        yield
        return
    os.environ[WORKER_ENV] = json.dumps({"run_dir": str(run_dir.resolve()), "config": plan.config})
    try:
        yield
    finally:
        del os.environ[WORKER_ENV]
