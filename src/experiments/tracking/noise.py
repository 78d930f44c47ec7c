"""Library messages that say nothing about the run, filtered so the lines that matter stand out."""

from __future__ import annotations

import functools
import logging
import warnings


def _drop(logger: str, *starts: str) -> None:
    logging.getLogger(logger).addFilter(lambda record: not record.getMessage().startswith(starts))


def silence_library_noise() -> None:
    _quiet_loggers()
    # Small datasets (digits) have fewer batches per epoch than the step-logging interval: nothing is lost,
    # epoch metrics are logged at the end of each epoch.
    warnings.filterwarnings("ignore", message="The number of training batches .* is smaller than the logging")
    # Resuming a run writes its next checkpoint where the last one is: that is the point.
    warnings.filterwarnings("ignore", message="Checkpoint directory .* exists and is not empty")
    # A run resumed in a copy of its directory (or from ckpt_path) keeps its own checkpoint callback's state.
    warnings.filterwarnings("ignore", message="The dirpath has changed from")
    # Lightning suggests srun wherever srun is installed; under SLURM, our launcher starts the run.
    warnings.filterwarnings(
        "ignore", message="The `srun` command is available on your system but is not used"
    )
    # A run without a validation split (dataset.val_size=0) has, by design, no validation batches.
    warnings.filterwarnings("ignore", message="Total length of `list` across ranks is zero")
    # pytorch-lightning 2.6 calls a torch.utils._pytree API that newer torch deprecates.
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")


@functools.cache  # once per process: logging filters added twice would stack (warning filters do not)
def _quiet_loggers() -> None:
    # An advert printed by every Trainer without Lightning's own cloud logger, and a note on how the
    # schedule's length is found.
    _drop("pytorch_lightning.utilities.rank_zero", "💡 Tip", "Loading `train_dataloader` to estimate")
    # matplotlib announces building its font cache (on first use in a new home directory).
    logging.getLogger("matplotlib").setLevel(logging.WARNING)
