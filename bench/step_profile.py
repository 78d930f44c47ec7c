"""Where a training step's time goes on each of the speed bench's three paths (the project's `train`,
Lightning's loop alone, the hand-written loop): per step, the wall time, the aten calls, the kernel and
CUDA-graph launches, the host-device syncs and the GPU's busy time; then each path's costliest kernels, the
source lines of its implicit syncs (`.item()` and the like) and what torch.compile did. Python's garbage
collector is timed too: its pauses grow with everything a process has imported and holds.

Each path is profiled over the same `--steps` optimiser steps after the first `--skip`, through a global
optimiser-step hook, so no path needs a profiler of its own. The profiler slows the host, so the wall times
here are for comparing paths with each other, not for throughput (bench/speed.py measures that). A run
stops soon after the window: synthetic data is cut to the steps needed.

Usage: python bench/step_profile.py                    CPU, the launch-bound case
       python bench/step_profile.py --gpu --cases resnet56 --compile
"""

from __future__ import annotations

import argparse
import collections
import gc
import gzip
import json
import logging
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
from speed import (  # bench/, this script's directory
    CPU_CASES,
    GPU_CASES,
    LAUNCH_BOUND,
    PATHS,
    add_step_options,
    config,
    run,
    step_overrides,
)
from torch._dynamo.utils import counters
from torch.optim.optimizer import register_optimizer_step_post_hook
from torch.profiler import ProfilerActivity, profile
from torch.profiler._utils import _init_for_cuda_graphs

from experiments.tracking.noise import silence_library_noise

SYNCS = ("cudaDeviceSynchronize", "cudaStreamSynchronize", "cudaEventSynchronize", "cudaMemcpy")


def compile_counts() -> collections.Counter:
    """torch.compile's counts so far in this process: graphs compiled, graph breaks, and CUDA-graph skips
    (a skipped graph runs its kernels one launch at a time)."""
    return collections.Counter(
        graphs=counters["stats"]["unique_graphs"],
        graph_breaks=sum(counters["graph_break"].values()),
        cudagraph_skips=counters["inductor"]["cudagraph_skips"],
    )


class Window:
    """A profiler over optimiser steps skip+1 .. skip+steps of whichever loop runs, opened and closed from
    the optimiser's step hook; while open, each implicit device sync is recorded with its source line and
    each garbage collection is timed."""

    def __init__(self, skip: int, steps: int, cuda: bool) -> None:
        self.skip, self.steps, self.cuda = skip, steps, cuda
        self.seen = 0
        self.seconds: float | None = None
        self.gc_seconds = 0.0
        self.trace: dict = {}
        self.sync_sites: collections.Counter = collections.Counter()
        self.compile_counts: collections.Counter = collections.Counter()  # over the whole run
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        self.profiler = profile(activities=activities)
        self._warnings = warnings.catch_warnings(record=True)

    def __call__(self, *_: object) -> None:
        self.seen += 1
        if self.seen == self.skip:
            self._open()
        elif self.seen == self.skip + self.steps:
            self._close()

    def _open(self) -> None:
        self.warned = self._warnings.__enter__()
        warnings.simplefilter("always")
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.set_sync_debug_mode("warn")
        self.profiler.start()
        gc.callbacks.append(self._time_gc)
        self.begun = time.perf_counter()

    def _time_gc(self, phase: str, _: dict) -> None:
        if phase == "start":
            self._gc_began = time.perf_counter()
        else:
            self.gc_seconds += time.perf_counter() - self._gc_began

    def _close(self) -> None:
        if self.cuda:
            torch.cuda.set_sync_debug_mode("default")
            torch.cuda.synchronize()  # the window's last kernels reach the trace; counted out of the syncs
        self.seconds = time.perf_counter() - self.begun
        gc.callbacks.remove(self._time_gc)
        self.profiler.stop()
        self._warnings.__exit__(None, None, None)
        self.sync_sites.update(
            "/".join(Path(w.filename).parts[-3:]) + f":{w.lineno}"
            for w in self.warned
            if "synchroniz" in str(w.message)
        )
        with tempfile.TemporaryDirectory() as scratch:
            self.profiler.export_chrome_trace(f"{scratch}/trace.json")
            self.trace = json.loads(Path(f"{scratch}/trace.json").read_text())


class StepCosts:
    """What one path's profiled steps cost, per step, read from its trace."""

    def __init__(self, window: Window) -> None:
        events = [e for e in window.trace["traceEvents"] if e.get("ph") == "X"]
        api = ("cuda_runtime", "cuda_driver")
        calls = collections.Counter(e["name"] for e in events if e.get("cat") in api)
        kernel_us: collections.Counter = collections.Counter()
        for e in events:
            if e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset"):
                kernel_us[e["name"]] += e["dur"]
        per_step = 1 / window.steps
        self.wall_ms = window.seconds * 1000 * per_step
        self.gc_ms = window.gc_seconds * 1000 * per_step
        aten = sum(e.get("cat") == "cpu_op" and e["name"].startswith("aten::") for e in events)
        self.aten_calls = aten * per_step  # nested calls included
        self.kernel_launches = sum(n for name, n in calls.items() if "LaunchKernel" in name) * per_step
        self.graph_launches = sum(n for name, n in calls.items() if "GraphLaunch" in name) * per_step
        self.graph_captures = sum(n for name, n in calls.items() if "BeginCapture" in name)  # re-recordings
        mine = 1 if window.cuda else 0  # the sync at the window's end
        self.syncs = (sum(calls[name] for name in SYNCS) - mine) * per_step
        self.gpu_busy_ms = sum(kernel_us.values()) / 1000 * per_step
        self.kernel_ms = collections.Counter({name: us / 1000 * per_step for name, us in kernel_us.items()})


def profile_path(
    path, cfg, skip: int, steps: int, cuda: bool, traces: Path | None
) -> tuple[StepCosts, Window]:
    window = Window(skip, steps, cuda)
    handle = register_optimizer_step_post_hook(window)
    before = compile_counts()
    try:
        run(path, cfg)
    finally:
        handle.remove()
    window.compile_counts = compile_counts()
    window.compile_counts.subtract(before)
    if window.seconds is None:
        sys.exit(f"{path.__name__} made {window.seen} optimiser steps, fewer than --skip + --steps")
    if traces:
        traces.mkdir(parents=True, exist_ok=True)
        with gzip.open(traces / f"{path.__name__}.json.gz", "wt") as file:
            json.dump(window.trace, file)
    return StepCosts(window), window


def print_row(path: str, costs: StepCosts, gpu: bool) -> None:
    gpu_columns = (
        f" {costs.kernel_launches:>8.1f} {costs.graph_launches:>7.1f} {costs.syncs:>6.2f}"
        f" {costs.gpu_busy_ms:>11.2f}"
        if gpu
        else f" {'-':>8} {'-':>7} {'-':>6} {'-':>11}"  # a CPU has no launches or syncs
    )
    print(f"{path:<16} {costs.wall_ms:>8.2f} {costs.gc_ms:>6.2f} {costs.aten_calls:>10.0f}" + gpu_columns)


def print_details(path: str, costs: StepCosts, window: Window, gpu: bool, compiled: bool) -> None:
    if compiled:
        counts = dict(window.compile_counts, graph_captures_in_window=costs.graph_captures)
        print(f"  {path}, torch.compile over the run: {counts}")
    if gpu:
        print(f"  {path}, implicit syncs by source line: {dict(window.sync_sites) or 'none'}")
        print(f"  {path}, costliest kernels, ms per step:")
        for kernel, ms in costs.kernel_ms.most_common(5):
            print(f"    {ms:7.3f}  {kernel[:100]}")
        if not costs.kernel_ms:
            print("    none: the profiler recorded no GPU activity (CUPTI unavailable?)")


def print_kernel_differences(project: StepCosts, raw: StepCosts) -> None:
    extra = {
        k: project.kernel_ms[k] - raw.kernel_ms[k] for k in project.kernel_ms.keys() | raw.kernel_ms.keys()
    }
    print("project minus raw_loop: the largest differences in GPU time per kernel, ms per step")
    for kernel, ms in sorted(extra.items(), key=lambda item: -abs(item[1]))[:8]:
        print(f"  {ms:+7.3f}  {kernel[:100]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpu", action="store_true", help="the GPU cases of bench/speed.py")
    parser.add_argument(
        "--cases",
        nargs="+",
        help=f"cases of bench/speed.py (default: resnet56 with --gpu, else {LAUNCH_BOUND})",
    )
    add_step_options(parser)
    parser.add_argument("--skip", type=int, default=10, help="optimiser steps before the window")
    parser.add_argument("--steps", type=int, default=20, help="optimiser steps in the window")
    parser.add_argument(
        "--epochs", type=int, default=1, help="epochs a run lasts (the window is in the first)"
    )
    parser.add_argument("--traces", type=Path, help="save each path's Chrome trace here (gzipped)")
    args = parser.parse_args()
    cases = GPU_CASES if args.gpu else CPU_CASES
    names = args.cases or (["resnet56"] if args.gpu else [LAUNCH_BOUND])
    if unknown := [name for name in names if name not in cases]:
        parser.error(f"unknown cases {unknown}; known: {list(cases)}")
    if args.skip < 1 or args.steps < 1:
        parser.error("--skip and --steps must be at least 1 (the window opens after an optimiser step)")
    silence_library_noise()
    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)
    if args.gpu:
        _init_for_cuda_graphs()  # CUPTI set up before any CUDA graph is captured, or graphs may go unseen
    device = torch.cuda.get_device_name() if args.gpu else f"CPU, {torch.get_num_threads()} threads"
    steps = f"steps {args.skip + 1}-{args.skip + args.steps}"
    print(f"torch {torch.__version__} on {device}, {' '.join(step_overrides(args))}, {steps}")
    for name in names:
        overrides = [*cases[name], "trainer=gpu" if args.gpu else "trainer=cpu", *step_overrides(args)]
        # no timing warm-up: the raw loop's stopwatch would sync the device at the window's first step
        cfg = config(overrides, args.epochs, warmup=0)
        if "train_size" in cfg.dataset:  # synthetic: no steps after the window but the epoch's last
            cfg.dataset.train_size = (args.skip + args.steps + 1) * cfg.dataset.batch_size
        traces = args.traces / name.split(",")[0] if args.traces else None
        print(f"\n{name}, per step:")
        print(
            f"{'path':<16} {'wall ms':>8} {'GC ms':>6} {'aten calls':>10} {'kernels':>8} {'graphs':>7}"
            f" {'syncs':>6} {'GPU busy ms':>11}"
        )
        profiled = {}
        for path in PATHS:
            costs, window = profiled[path.__name__] = profile_path(
                path, cfg, args.skip, args.steps, args.gpu, traces
            )
            print_row(path.__name__, costs, args.gpu)
            print_details(path.__name__, costs, window, args.gpu, compiled=args.compile != "false")
            sys.stdout.flush()
        if args.gpu:
            print_kernel_differences(profiled["project"][0], profiled["raw_loop"][0])


if __name__ == "__main__":
    main()
