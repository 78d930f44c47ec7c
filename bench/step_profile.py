"""Where a training step's time goes on each of the speed bench's three paths (the project's `train`,
Lightning's loop alone, the hand-written loop): per step, the wall time, the aten calls, the kernel and
CUDA-graph launches, the host-device syncs and the GPU's busy time; then each path's costliest kernels and
the source lines that made the device sync. Python's garbage collector is timed too: its pauses grow with
everything a process has imported and holds.

Each path is profiled over the same `--steps` optimiser steps after the first `--skip`, through a global
optimiser-step hook, so no path needs a profiler of its own. The profiler slows the host, so the wall times
here are for comparing paths with each other, not for throughput (bench/speed.py measures that).

Usage: python bench/step_profile.py                    CPU, the launch-bound case
       python bench/step_profile.py --gpu --cases resnet56 --compile reduce-overhead
"""

from __future__ import annotations

import argparse
import collections
import gc
import gzip
import json
import logging
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from speed import CPU_CASES, GPU_CASES, PATHS, config  # bench/, the script's own directory
from torch._dynamo.utils import counters
from torch.optim.optimizer import register_optimizer_step_post_hook
from torch.profiler import ProfilerActivity, profile

from experiments.logging.noise import silence_library_noise

SYNCS = ("cudaDeviceSynchronize", "cudaStreamSynchronize", "cudaEventSynchronize", "cudaMemcpy")


@dataclass
class Window:
    """A profiler over optimiser steps skip+1 .. skip+steps of whichever loop runs, opened and closed from
    the optimiser's step hook; while open, each implicit device sync is recorded with its source line."""

    skip: int
    steps: int
    cuda: bool
    seen: int = 0
    seconds: float | None = None
    gc_seconds: float = 0.0
    trace: dict = field(default_factory=dict)
    sync_sites: collections.Counter = field(default_factory=collections.Counter)
    compile_counts: collections.Counter = field(default_factory=collections.Counter)  # over the whole run

    def __call__(self, *_: object) -> None:
        self.seen += 1
        if self.seen == self.skip:
            self._open()
        elif self.seen == self.skip + self.steps:
            self._close()

    def _open(self) -> None:
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.cuda else [])
        self.profiler = profile(activities=activities)
        self._warnings = warnings.catch_warnings(record=True)
        self.warned = self._warnings.__enter__()
        warnings.simplefilter("always")
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.set_sync_debug_mode("warn")
        gc.callbacks.append(self._time_gc)
        self.profiler.start()
        self.begun = time.perf_counter()

    def _time_gc(self, phase: str, _: dict) -> None:
        if phase == "start":
            self._gc_began = time.perf_counter()
        else:
            self.gc_seconds += time.perf_counter() - self._gc_began

    def _close(self) -> None:
        if self.cuda:
            torch.cuda.set_sync_debug_mode("default")
            torch.cuda.synchronize()  # the one sync in the window that no path makes
        self.seconds = time.perf_counter() - self.begun
        self.profiler.stop()
        gc.callbacks.remove(self._time_gc)
        self._warnings.__exit__(None, None, None)
        self.sync_sites.update(
            f"{Path(w.filename).name}:{w.lineno}" for w in self.warned if "synchroniz" in str(w.message)
        )
        with tempfile.TemporaryDirectory() as scratch:
            self.profiler.export_chrome_trace(f"{scratch}/trace.json")
            self.trace = json.loads(Path(f"{scratch}/trace.json").read_text())


@dataclass
class StepCosts:
    """What one path's profiled steps cost, per step."""

    wall_ms: float
    gc_ms: float
    aten_calls: float
    kernel_launches: float
    graph_launches: float
    syncs: float
    gpu_busy_ms: float
    kernel_ms: collections.Counter  # GPU time per kernel (and copy) name

    @classmethod
    def of(cls, window: Window) -> StepCosts:
        events = [e for e in window.trace["traceEvents"] if e.get("ph") == "X"]
        api = ("cuda_runtime", "cuda_driver")
        calls = collections.Counter(e["name"] for e in events if e.get("cat") in api)
        kernel_us: collections.Counter = collections.Counter()
        for e in events:
            if e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset"):
                kernel_us[e["name"]] += e["dur"]
        per_step = 1 / window.steps
        return cls(
            wall_ms=window.seconds * 1000 * per_step,
            gc_ms=window.gc_seconds * 1000 * per_step,
            aten_calls=sum(e.get("cat") == "cpu_op" and e["name"].startswith("aten::") for e in events)
            * per_step,
            kernel_launches=sum(n for name, n in calls.items() if "LaunchKernel" in name) * per_step,
            graph_launches=sum(n for name, n in calls.items() if "GraphLaunch" in name) * per_step,
            syncs=(sum(calls[name] for name in SYNCS) - window.cuda) * per_step,
            gpu_busy_ms=sum(kernel_us.values()) / 1000 * per_step,
            kernel_ms=collections.Counter({name: us / 1000 * per_step for name, us in kernel_us.items()}),
        )


def compile_counts() -> collections.Counter:
    """torch.compile's counts so far in this process: graphs compiled, graph breaks, and what CUDA-graph
    trees did (a skip means the graph ran without CUDA graphs; recordings past the first few mean
    re-recording)."""
    counts = collections.Counter(unique_graphs=counters["stats"]["unique_graphs"])
    counts["graph_breaks"] = sum(counters["graph_break"].values())
    counts.update({key: n for key, n in counters["inductor"].items() if key.startswith("cudagraph")})
    return counts


def profile_path(
    path, cfg, skip: int, steps: int, cuda: bool, traces: Path | None
) -> tuple[StepCosts, Window]:
    window = Window(skip, steps, cuda)
    handle = register_optimizer_step_post_hook(window)
    before = compile_counts()
    try:
        path(cfg)
    finally:
        handle.remove()
    window.compile_counts = compile_counts() - before
    if window.seconds is None:
        raise SystemExit(f"{path.__name__} made {window.seen} optimiser steps, fewer than --skip + --steps")
    if traces:
        traces.mkdir(parents=True, exist_ok=True)
        with gzip.open(traces / f"{path.__name__}.json.gz", "wt") as file:
            json.dump(window.trace, file)
    return StepCosts.of(window), window


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpu", action="store_true", help="the GPU cases of bench/speed.py")
    parser.add_argument("--cases", nargs="+", help="only these cases (default: the launch-bound one on CPU)")
    parser.add_argument("--compile", default="false", help="the compile setting of every path")
    parser.add_argument("--skip", type=int, default=10, help="optimiser steps before the window")
    parser.add_argument("--steps", type=int, default=20, help="optimiser steps in the window")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--traces", type=Path, help="save each path's Chrome trace here (gzipped)")
    args = parser.parse_args()
    if args.skip < 1 or args.steps < 1:
        parser.error("--skip and --steps must be at least 1 (the window opens after an optimiser step)")
    silence_library_noise()
    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)
    cases = GPU_CASES if args.gpu else CPU_CASES
    names = args.cases or ([*GPU_CASES][:1] if args.gpu else ["resnet8, 8 px, batch 2"])
    device = torch.cuda.get_device_name() if args.gpu else f"CPU, {torch.get_num_threads()} threads"
    steps = f"steps {args.skip + 1}-{args.skip + args.steps}"
    print(f"torch {torch.__version__} on {device}, compile={args.compile}, {steps}")
    for name in names:
        overrides = [*cases[name], "trainer=gpu" if args.gpu else "trainer=cpu", f"compile={args.compile}"]
        cfg = config(overrides, args.epochs, args.skip)
        print(f"\n{name}, per step:")
        print(
            f"{'path':<16} {'wall ms':>8} {'GC ms':>6} {'aten calls':>10} {'kernels':>8} {'graphs':>7}"
            f" {'syncs':>6} {'GPU busy ms':>11}"
        )
        profiled = {}
        for path in PATHS:
            traces = args.traces / name.split(",")[0] if args.traces else None
            profiled[path.__name__] = profile_path(path, cfg, args.skip, args.steps, args.gpu, traces)
            costs = profiled[path.__name__][0]
            print(
                f"{path.__name__:<16} {costs.wall_ms:>8.2f} {costs.gc_ms:>6.2f} {costs.aten_calls:>10.0f}"
                + (
                    f" {costs.kernel_launches:>8.1f} {costs.graph_launches:>7.1f} {costs.syncs:>6.2f}"
                    f" {costs.gpu_busy_ms:>11.2f}"
                    if args.gpu
                    else f" {'-':>8} {'-':>7} {'-':>6} {'-':>11}"  # the CPU has no launches or syncs
                ),
                flush=True,
            )
        if args.compile != "false":
            for path, (_, window) in profiled.items():
                print(f"{path}: torch.compile over the whole run: {dict(window.compile_counts)}")
        if args.gpu:
            print_gpu_details(profiled)


def print_gpu_details(profiled: dict[str, tuple[StepCosts, Window]]) -> None:
    """Each path's costliest kernels and implicit syncs, then the kernels the project spends more on."""
    for path, (costs, window) in profiled.items():
        print(f"\n{path}: costliest kernels, ms per step")
        for kernel, ms in costs.kernel_ms.most_common(5):
            print(f"  {ms:7.3f}  {kernel[:100]}")
        print(f"{path}: implicit syncs by source line: {dict(window.sync_sites) or 'none'}")
    project, raw = profiled["project"][0].kernel_ms, profiled["raw_loop"][0].kernel_ms
    extra = {kernel: project[kernel] - raw[kernel] for kernel in project.keys() | raw.keys()}
    print("\nproject minus raw_loop: the largest differences in GPU time per kernel, ms per step")
    for kernel, ms in sorted(extra.items(), key=lambda item: -abs(item[1]))[:8]:
        print(f"  {ms:+7.3f}  {kernel[:100]}")


if __name__ == "__main__":
    main()
