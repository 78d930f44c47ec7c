"""What training steps cost in time and memory, measured during the run without slowing it down.

A step is timed from `on_train_batch_start` to `on_train_batch_end` (forward, backward, optimiser). On a
GPU the clock is a pair of CUDA events per step, read once per epoch, so no step waits for the device.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import pytorch_lightning as pl
import torch

from experiments.measure.memory import PeakMemory


class _Clock:
    """Timestamps that cost nothing to take: perf_counter on a CPU, recorded CUDA events on a GPU."""

    def __init__(self, cuda: bool) -> None:
        self.cuda = cuda

    def now(self) -> Any:
        if not self.cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def ms(self, start: Any, end: Any) -> float:
        return start.elapsed_time(end) if self.cuda else (end - start) * 1000


# what summary() returns: the DESIGN.md cost keys and their companions
COST_KEYS = (
    "step_time_ms",
    "step_time_p90_ms",
    "throughput",
    "data_wait_fraction",
    "timed_steps",
    "peak_memory_bytes",
    "peak_memory_source",
    "peak_memory_reserved_bytes",
    "first_step_unix_time",
)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


class TrainingCost(pl.Callback):
    """Step time (median, p90), throughput, time waiting for data, and peak memory of the training steps.

    The first `warmup_steps` steps of a fit (allocator warm-up, cudnn autotuning, compilation) are not
    timed. Throughput counts the images of all ranks over the timed spans, data waits included.
    `data_wait_fraction` is the host's time between steps (fetching the next batch) over the timed span:
    on a GPU the device may still be computing meanwhile, so there it bounds the starvation from above.
    """

    def __init__(self, warmup_steps: int = 5) -> None:
        self.warmup_steps = warmup_steps
        self.step_ms: list[float] = []
        self.span_ms = self.data_wait_s = 0.0
        self.images = 0
        self.peak_bytes: int | None = None
        self.first_step_unix_time: float | None = None  # shows how long the command took to start
        self._pending: list[tuple[Any, Any]] = []
        self._seen = 0

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        device = trainer.strategy.root_device
        self.clock = _Clock(device.type == "cuda")
        self.memory = PeakMemory(device)
        self.memory.start()

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._last_end: float | None = None

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, *_: Any
    ) -> None:
        self.first_step_unix_time = self.first_step_unix_time or time.time()
        self._timed = self._seen >= self.warmup_steps
        if self._timed:
            if self._last_end is not None:
                self.data_wait_s += time.perf_counter() - self._last_end
            self._start = self.clock.now()

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, *_: Any
    ) -> None:
        self._seen += 1
        if self._timed:
            self._pending.append((self._start, self.clock.now()))
            self.images += len(batch[1]) * trainer.world_size
            self._last_end = time.perf_counter()

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.peak_bytes = self.memory.stop()

    def end_epoch(self) -> dict[str, float]:
        """Read this epoch's clocks (one device sync) and return its median step time."""
        if not self._pending:
            return {}
        if self.clock.cuda:
            self._pending[-1][1].synchronize()
        steps = [self.clock.ms(start, end) for start, end in self._pending]
        self.step_ms += steps
        self.span_ms += self.clock.ms(self._pending[0][0], self._pending[-1][1])
        self._pending = []
        return {"step_time_ms": statistics.median(steps)}

    def summary(self) -> dict[str, Any]:
        """The DESIGN.md cost keys for summary.json (None where nothing was timed)."""
        self.end_epoch()
        timed = bool(self.step_ms)
        return {
            "step_time_ms": statistics.median(self.step_ms) if timed else None,
            "step_time_p90_ms": percentile(self.step_ms, 0.9) if timed else None,
            "throughput": self.images / (self.span_ms / 1000) if timed and self.span_ms > 0 else None,
            "data_wait_fraction": self.data_wait_s * 1000 / self.span_ms
            if timed and self.span_ms > 0
            else None,
            "timed_steps": len(self.step_ms),
            "peak_memory_bytes": self.peak_bytes,
            "peak_memory_source": self.memory.source if self.peak_bytes is not None else None,
            "peak_memory_reserved_bytes": self.memory.reserved_bytes if self.peak_bytes is not None else None,
            "first_step_unix_time": self.first_step_unix_time,
        }
