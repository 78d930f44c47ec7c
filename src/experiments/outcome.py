"""How a training run ends: fit and test, every way that can end turned into an Outcome, and the one line
(or the stop) that the end becomes."""

from __future__ import annotations

import logging
import signal
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytorch_lightning as pl

from experiments import distributed
from experiments.errors import RunFailed, UserError, describe, traceback_wanted
from experiments.module import Diverged
from experiments.plan import Plan
from experiments.record import RunRecord, write_record

log = logging.getLogger(__name__)


@dataclass
class Outcome:
    """How fit and test ended: the run's status, and the error that ended it otherwise."""

    status: str
    epochs: int  # the epochs it completed
    test_error: float | None = None
    error: BaseException | None = None

    @property
    def fields(self) -> dict[str, Any]:
        """The run record's fields that say how it ended."""
        return {
            "status": self.status,
            "error": self.message,
            "test_error": self.test_error,
            "epochs": self.epochs,
        }

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
                    f"{record.name}: {errors} after {record.epochs} epochs ({record.wall_time_s:.0f}s); "
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
    plan: Plan,
    run_dir: Path,
) -> Outcome:
    """Fit (resuming from `ckpt_path`), then test; every way this can end turned into an Outcome here."""
    try:
        with distributed.worker_env(plan, run_dir):
            trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
        (test,) = trainer.test(module, datamodule=datamodule, verbose=False)
        return Outcome("completed", trainer.current_epoch, test_error=1 - test["test/acc"])
    except Diverged as error:
        return Outcome("diverged", trainer.current_epoch, error=error)
    except (KeyboardInterrupt, SystemExit) as error:  # Lightning turns Ctrl+C into SystemExit
        return Outcome("interrupted", trainer.current_epoch, error=error)
    except Exception as error:
        return Outcome("failed", trainer.current_epoch, error=error)


def _fraction(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"
