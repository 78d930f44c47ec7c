"""What training steps cost in time and memory, measured during the run without slowing it down.

A step is timed from `on_train_batch_start` to `on_train_batch_end` (forward, backward, optimiser). On a
GPU the clock is a pair of CUDA events per step, read once per epoch, so no step waits for the device.
Steps that instruments slow down on purpose (signal steps: hooks, an eager step outside the CUDA graph)
are left out, like the warm-up steps.
"""

from __future__ import annotations

import itertools
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
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


@dataclass
class _Step:
    start: Any  # the clock's timestamps
    end: Any
    timed: bool  # False for a step slowed down on purpose (a signal step)
    wait_s: float  # host time since the previous step's end: fetching this step's batch


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

    def __init__(
        self,
        warmup_steps: int = 5,
        untimed: Callable[[int], bool] = lambda step: False,
        measure_memory: bool = True,
    ) -> None:
        self.warmup_steps, self.untimed, self.measure_memory = warmup_steps, untimed, measure_memory
        self.graphed: list[bool] = []  # per timed step: whether it was a CUDA-graph replay
        self.step_ms: list[float] = []
        self.span_ms = self.data_wait_s = 0.0
        self.images = 0
        self.peak_bytes: int | None = None
        self.first_step_unix_time: float | None = None  # shows how long the command took to start
        self._pending: list[_Step] = []  # this epoch's steps after warm-up, read at its end
        self._seen = 0

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        device = trainer.strategy.root_device
        self.clock = _Clock(device.type == "cuda")
        self.memory = PeakMemory(device)
        if self.measure_memory:
            self.memory.start()

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._last_end: float | None = None

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, *_: Any
    ) -> None:
        self.first_step_unix_time = self.first_step_unix_time or time.time()
        self._counted = self._seen >= self.warmup_steps  # within the timed span
        self._this_untimed = self.untimed(trainer.global_step)
        graph = getattr(pl_module, "step_graph", None)
        self._replays = graph.replays if graph is not None else 0
        if self._counted:
            self._wait_s = 0.0 if self._last_end is None else time.perf_counter() - self._last_end
            self._start = self.clock.now()

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, *_: Any
    ) -> None:
        self._seen += 1
        if not self._counted:
            return
        self._pending.append(_Step(self._start, self.clock.now(), not self._this_untimed, self._wait_s))
        if not self._this_untimed:
            graph = getattr(pl_module, "step_graph", None)
            self.graphed.append(graph is not None and graph.replays > self._replays)
            self.images += len(batch[1]) * trainer.world_size
        self._last_end = time.perf_counter()

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # runs packed in one process share its memory and allocator: none of it is one run's own
        self.peak_bytes = self.memory.stop() if self.measure_memory else None

    def end_epoch(self) -> dict[str, float]:
        """Read this epoch's clocks (one device sync) and return its median step time.

        The timed span runs from the epoch's first timed step to its last. An untimed step inside it is cut
        out with the work that follows it (the signal recorder's reductions and logging run after this
        clock stops); those outside it were never in it."""
        steps, self._pending = self._pending, []
        timed = [i for i, step in enumerate(steps) if step.timed]
        if not timed:
            return {}
        span = steps[timed[0] : timed[-1] + 1]
        if self.clock.cuda:
            span[-1].end.synchronize()  # events complete in order: every earlier one is then readable
        step_ms = [self.clock.ms(step.start, step.end) for step in span if step.timed]
        cut_ms = wait_s = 0.0
        for before, step in itertools.pairwise(span):
            if before.timed:
                wait_s += step.wait_s
            else:
                cut_ms += self.clock.ms(before.start, step.start)
        self.step_ms += step_ms
        self.span_ms += self.clock.ms(span[0].start, span[-1].end) - cut_ms
        self.data_wait_s += wait_s
        return {"step_time_ms": statistics.median(step_ms)}

    def summary(self) -> dict[str, Any]:
        """The cost fields of the run's record (None where nothing was timed)."""
        self.end_epoch()
        timed = bool(self.step_ms)
        timing = {(True,): "cuda_graph", (False,): "eager"}.get(tuple(set(self.graphed)), "mixed")
        return {
            "step_time_ms": statistics.median(self.step_ms) if timed else None,
            "step_timing": timing if timed else None,
            "step_time_p90_ms": percentile(self.step_ms, 0.9) if timed else None,
            "throughput": self.images / (self.span_ms / 1000) if timed and self.span_ms > 0 else None,
            "data_wait_fraction": self.data_wait_s * 1000 / self.span_ms
            if timed and self.span_ms > 0
            else None,
            "timed_steps": len(self.step_ms),
            "peak_memory_bytes": self.peak_bytes,
            "peak_memory_source": self.memory.source
            if self.peak_bytes is not None
            else None
            if self.measure_memory
            else "not measured: runs packed in one process share its memory",
            "peak_memory_reserved_bytes": self.memory.reserved_bytes if self.peak_bytes is not None else None,
            "first_step_unix_time": self.first_step_unix_time,
        }
