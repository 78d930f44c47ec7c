"""What a training run measures while it trains, built from its `measure` settings: step time and memory,
the per-block signals (signals.csv), each part's parameter-gradient norm."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytorch_lightning as pl

from experiments.measure.cost import TrainingCost
from experiments.measure.param_grads import ParamGradNorms
from experiments.measure.signals import SignalRecorder
from experiments.plan import Measure


@dataclass
class Instruments:
    """A run's instruments (none with measure.enabled=false) as Lightning callbacks; those with an
    `end_epoch` add to each epoch's row (tracking.epochs), the cost's summary to the run's record."""

    cost: TrainingCost | None = None
    signals: SignalRecorder | None = None
    grads: ParamGradNorms | None = None

    @classmethod
    def build(cls, measure: Measure, run_dir: Path, shared_process: bool = False) -> Instruments:
        """`shared_process`: other runs train in this process (packed), so its memory is not this run's."""
        if not measure.enabled:
            return cls()
        every = measure.signals_every
        signals = SignalRecorder(run_dir / "signals.csv", every) if every != 0 else None
        untimed = signals.is_signal_step if signals else _never
        cost = TrainingCost(measure.warmup_steps, untimed=untimed, measure_memory=not shared_process)
        grads = ParamGradNorms(measure.grad_norm_every) if measure.grad_norm_every > 0 else None
        return cls(cost, signals, grads)

    def is_signal_step(self, step: int) -> bool:
        """Signal steps run eagerly (hooks see nothing of a CUDA-graph replay) and are not timed."""
        return self.signals is not None and self.signals.is_signal_step(step)

    @property
    def callbacks(self) -> list[pl.Callback]:
        return [c for c in (self.cost, self.signals, self.grads) if c is not None]

    def summary(self) -> dict:
        return self.cost.summary() if self.cost else {}


def _never(step: int) -> bool:
    return False
