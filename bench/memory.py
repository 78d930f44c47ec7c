"""Memory benchmark: DenseNet's quadratic activation memory, what memory-efficient DenseNets save and cost
in time, ResNet's linear memory, and what measuring costs a run. Prints a table; `make bench` runs it.

Usage: python bench/memory.py [--steps N]
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from experiments.build import build_datamodule
from experiments.commands.profile import profile
from experiments.commands.train import train
from experiments.config import compose
from experiments.device import resolve_device
from experiments.measure.counts import activation_bytes
from experiments.measure.signals import signal_steps
from experiments.models import create_model
from experiments.plan import Plan, Subject
from experiments.report.plots import exponent
from experiments.tracking.noise import silence_library_noise

PROFILE_SWEEPS = [  # the README's profile sweeps; each should take under 3 minutes on a 2-core CPU
    ["arch=densenet_bc", "arch.depth=40,100,190", "arch.memory_efficient=false,true"],
    ["arch=resnet", "arch.depth=20,56,110"],
]
PROFILE_KEYS = [
    "params",
    "flops_per_image",
    "activation_bytes",
    "peak_memory_bytes",
    "step_time_ms",
    "throughput",
]
DENSENET_DEPTHS = [40, 100, 190]
RESNET_DEPTHS = [20, 56, 110]
BATCH = 64


def config(command: str, *overrides: str, logger: str = "none"):
    return compose(command, [f"logger={logger}", *overrides])


def activation_table() -> None:
    print(
        f"DenseNet-BC (k=12), 32 px, batch {BATCH}: bytes held for backward (float32, counted without data)"
    )
    print(f"{'depth':>5}  {'naive':>10}  {'memory-efficient':>16}  {'saving':>6}")
    naive, efficient = [], []
    for depth in DENSENET_DEPTHS:
        for kind, column in ((False, naive), (True, efficient)):
            model = create_model("densenet_bc", depth=depth, growth_rate=12, memory_efficient=kind)
            column.append(activation_bytes(model, (BATCH, 3, 32, 32)))
        saving = 1 - efficient[-1] / naive[-1]
        print(f"{depth:>5}  {naive[-1] / 1e6:>7.0f} MB  {efficient[-1] / 1e6:>13.0f} MB  {saving:>6.0%}")
    at_100 = DENSENET_DEPTHS.index(100)
    print(
        f"log-log exponent over depth: naive {exponent(DENSENET_DEPTHS, naive):.2f} (target >= 1.5), "
        f"memory-efficient {exponent(DENSENET_DEPTHS, efficient):.2f} (target <= 1.25); "
        f"DenseNet-BC-100 saves {1 - efficient[at_100] / naive[at_100]:.0%} "
        "(target >= 40%; Pleiss et al.: 44% on GPU)"
    )
    resnets = [activation_bytes(create_model("resnet", depth=d), (BATCH, 3, 32, 32)) for d in RESNET_DEPTHS]
    sizes = ", ".join(f"{d}: {b / 1e6:.0f} MB" for d, b in zip(RESNET_DEPTHS, resnets, strict=True))
    print(f"ResNet (CIFAR form) {sizes}; exponent {exponent(RESNET_DEPTHS, resnets):.2f} (target 0.9-1.1)")


def efficient_step_cost(steps: int, out: Path) -> None:
    times = {}
    for efficient in (False, True):
        cfg = config(
            "profile",
            "arch=densenet_bc",
            "arch.depth=100",
            f"arch.memory_efficient={str(efficient).lower()}",
            f"profile.steps={steps}",
        )
        times[efficient] = profile(Plan.of(cfg), out / f"efficient-{efficient}")
    naive, efficient = times[False], times[True]
    device = resolve_device(Plan.of(config("profile")).recipe).name
    time_cost = efficient.step_time_ms / naive.step_time_ms - 1
    memory_cost = efficient.peak_memory_bytes / naive.peak_memory_bytes - 1
    print(
        f"DenseNet-BC-100 training step on {device}, batch {naive.batch_size}: "
        f"naive {naive.step_time_ms:.0f} ms, "
        f"peak {naive.peak_memory_bytes / 1e9:.2f} GB; "
        f"memory-efficient {efficient.step_time_ms:.0f} ms ({time_cost:+.0%}), "
        f"peak {efficient.peak_memory_bytes / 1e9:.2f} GB ({memory_cost:+.0%})"
        "  [Pleiss et al., GPU: +25% time, -44% memory]"
    )


VARIANTS = {  # what a run measures: everything, all but the per-block signals, nothing
    "all": ["measure.enabled=true"],
    "no signals": ["measure.enabled=true", "measure.signals_every=0"],
    "nothing": ["measure.enabled=false"],
}


OVERHEAD_RUN = ["arch=resnet56", "dataset=digits", "trainer.max_epochs=6", "+trainer.limit_val_batches=0"]


def measurement_overhead(repeats: int, out: Path) -> None:
    """Mean training-epoch time (signal steps included) of the same run measuring everything, everything but
    the signals, and nothing, alternated to cancel the machine's drift."""
    epochs: dict[str, list[float]] = {variant: [] for variant in VARIANTS}
    for repeat in range(repeats):
        for variant, settings in VARIANTS.items():
            run_dir = out / f"overhead-{variant.replace(' ', '-')}-{repeat}"
            # Lightning's CSVLogger keeps the epoch timings (metrics.csv does not)
            train(Plan.of(config("train", *OVERHEAD_RUN, *settings, logger="csv")), run_dir)
            with (run_dir / "csv" / "metrics.csv").open() as f:
                times = [float(row["epoch_time_s"]) for row in csv.DictReader(f) if row.get("epoch_time_s")]
            epochs[variant] += times[1:]
    mean = {variant: statistics.mean(times) for variant, times in epochs.items()}
    cfg = config("train", *OVERHEAD_RUN)
    datamodule = build_datamodule(Subject.of(cfg))
    datamodule.setup("fit")
    steps = len(datamodule.batches("train", torch.device("cpu")))
    total = steps * cfg.trainer.max_epochs
    print(
        f"Measuring's cost, {cfg.arch.name}{cfg.arch.depth} on {cfg.dataset.name}, batch "
        f"{datamodule.batch_size}, {steps} steps an epoch, {cfg.trainer.max_epochs} epochs "
        f"({len(signal_steps(total, 'auto'))} of the {total} steps signal steps): mean training epoch "
        f"{mean['all']:.3f} s measuring everything, "
        f"{mean['no signals']:.3f} s without the signals, {mean['nothing']:.3f} s measuring nothing; "
        f"signals {mean['all'] / mean['no signals'] - 1:+.1%} (target <= +5%), "
        f"everything {mean['all'] / mean['nothing'] - 1:+.1%}"
    )


def profile_sweeps(out: Path) -> None:
    """The two profile sweeps as a user types them (Comet offline included), timed from the command line."""
    for i, overrides in enumerate(PROFILE_SWEEPS):
        sweep = out / f"profile-sweep-{i}"
        command = [
            sys.executable,
            "-m",
            "experiments",
            "profile",
            "-m",
            *overrides,
            f"hydra.sweep.dir={sweep}",
        ]
        begun = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True)
        minutes, seconds = divmod(round(time.perf_counter() - begun), 60)
        summaries = [json.loads(path.read_text()) for path in sweep.rglob("summary.json")]
        filled = sum(all(summary.get(key) for key in PROFILE_KEYS) for summary in summaries)
        print(
            f"experiments profile -m {' '.join(overrides)}: {len(summaries)} runs in "
            f"{minutes}m{seconds:02d}s (target < 3 min), {filled} of them with every key filled"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4, help="timed steps per DenseNet-BC-100 profile")
    parser.add_argument("--repeats", type=int, default=3, help="on/off pairs for the measurement overhead")
    args = parser.parse_args()
    silence_library_noise()
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads"
        + (f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ", no GPU")
    )
    activation_table()
    with tempfile.TemporaryDirectory() as tmp:
        profile_sweeps(Path(tmp))
        efficient_step_cost(args.steps, Path(tmp))
        measurement_overhead(args.repeats, Path(tmp))


if __name__ == "__main__":
    main()
