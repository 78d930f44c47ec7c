"""Sweep benchmark: how long He et al.'s degradation sweep and Huang et al.'s DenseNet-BC-100 recipe take on
this machine, run after run and packed (hydra/launcher=packed: runs side by side in one process, each on a
CUDA stream of its own).

Three representative nets of the sweep (ResNet-20, plain-56, ResNet-110) train for `--steps` steps each,
first one after another, then packed together; each run's images per second come from its own record
(warm-up excluded), and the packed speed-up is the sum of the runs' times alone over the packed group's
wall time. From them: the ten-run sweep (plain and ResNet at 20, 32, 44, 56, 110; 64k iterations of 128
images each; 32 and 44 interpolated in depth, a plain net taking its ResNet twin's time) run after run and
packed, and the fifty-run sweep over five seeds. Then DenseNet-BC-100 (Huang et al.: 300 epochs of 50k
images at batch 64) with torch.compile off and on.

Usage: python bench/sweep.py --gpu         the GPU figures (bench/gpu_sweep.sh)
       python bench/sweep.py --dry-run     a CPU check of the script itself, in a minute
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import sys
import tempfile
import time
from pathlib import Path

import torch
from speed import HE_RECIPE_IMAGES  # bench/, this script's directory

from experiments.__main__ import main as experiments
from experiments.record import read_record
from experiments.tracking.noise import silence_library_noise

NETS = {"resnet20": 20, "plain56": 56, "resnet110": 110}
SWEEP_DEPTHS = (20, 32, 44, 56, 110)
HUANG_IMAGES = 300 * 50_000  # Huang et al.'s DenseNet recipe: 300 epochs of 50k images


def run(args: list[str], root: Path) -> list[dict]:
    """`experiments ARGS` in-process, quietly; the records it wrote under `root`, and its wall time."""
    started = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        status = experiments(args)
    if status:
        raise SystemExit(f"failed: experiments {' '.join(args)}")
    seconds = time.perf_counter() - started
    records = [read_record(p) for p in sorted(root.rglob("summary.json"))]
    return [{"record": r, "seconds": seconds} for r in records if r is not None]


def settings(options: argparse.Namespace, steps: int, batch: int) -> list[str]:
    size = 8 if options.dry_run else 32
    data = [
        "dataset=synthetic",
        f"dataset.image_size={size}",
        f"dataset.batch_size={batch}",
        f"dataset.train_size={steps * batch}",
    ]
    device = ["trainer=gpu"] if options.gpu else ["trainer=cpu"]
    quiet = [
        "logger=none",
        "measure.signals_every=0",
        "measure.grad_norm_every=0",
        "+trainer.limit_val_batches=0",
        "+trainer.limit_test_batches=1",
    ]
    return [*data, *device, *quiet, "trainer.max_epochs=1", f"measure.warmup_steps={min(10, steps // 4)}"]


def three_nets(options: argparse.Namespace, root: Path) -> tuple[dict[str, float], float]:
    """Each net's images/s alone, and the packed speed-up (their seconds alone over the packed seconds)."""
    alone, seconds = {}, 0.0
    common = settings(options, options.steps, 128)
    for net in NETS:
        where = root / f"alone-{net}"
        (result,) = run(["train", f"arch={net}", *common, f"hydra.run.dir={where}"], where)
        alone[net], seconds = result["record"].throughput, seconds + result["seconds"]
    where = root / "packed"
    packed = run(
        [
            "train",
            "-m",
            "hydra/launcher=packed",
            f"hydra.launcher.runs_at_once={len(NETS)}",
            f"arch={','.join(NETS)}",
            *common,
            f"hydra.sweep.dir={where}",
        ],
        where,
    )
    return alone, seconds / packed[0]["seconds"]


def sweep_minutes(alone: dict[str, float]) -> float:
    """He et al.'s ten runs one after another, from the three nets' speeds (time an image linear in depth)."""
    per_image = {depth: 1 / alone[net] for net, depth in NETS.items()}
    depths = sorted(per_image)

    def at(depth: int) -> float:
        low = max(d for d in depths if d <= depth)
        high = min(d for d in depths if d >= depth)
        return (
            per_image[low]
            if low == high
            else per_image[low] + (per_image[high] - per_image[low]) * (depth - low) / (high - low)
        )

    return 2 * sum(at(depth) for depth in SWEEP_DEPTHS) * HE_RECIPE_IMAGES / 60


def densenet(options: argparse.Namespace, root: Path) -> dict[str, float]:
    """DenseNet-BC-100's images/s at batch 64, torch.compile off and on (a DenseNet-BC-10 in a dry run)."""
    arch = ["arch=densenet_bc", "arch.depth=10"] if options.dry_run else ["arch=densenet_bc100"]
    speeds = {}
    for compiled in ("false", "true"):
        where = root / f"densenet-compile-{compiled}"
        common = settings(options, options.steps, 64)
        (result,) = run(["train", *arch, *common, f"compile={compiled}", f"hydra.run.dir={where}"], where)
        speeds[compiled] = result["record"].throughput
    return speeds


def table(alone: dict[str, float], speedup: float, dense: dict[str, float], densenet_name: str) -> list[str]:
    minutes = sweep_minutes(alone)
    rows = [(f"{net}, img/s alone", f"{speed:,.0f}") for net, speed in alone.items()]
    rows += [
        (f"packed, {len(NETS)} at once: speed-up", f"{speedup:.2f} x"),
        ("He et al.'s ten runs, run after run", f"{minutes:.1f} min"),
        ("He et al.'s ten runs, packed", f"{minutes / speedup:.1f} min"),
        ("five seeds (fifty runs), run after run", f"{5 * minutes:.1f} min"),
        ("five seeds (fifty runs), packed", f"{5 * minutes / speedup:.1f} min"),
    ]
    for compiled, speed in dense.items():
        rows.append((f"{densenet_name}, compile={compiled}, img/s", f"{speed:,.0f}"))
        rows.append((f"  Huang et al.'s recipe, compile={compiled}", f"{HUANG_IMAGES / speed / 60:.1f} min"))
    rows.append((f"compile's gain for {densenet_name}", f"{dense['true'] / dense['false']:.2f} x"))
    return [f"{what:<46}{value:>14}" for what, value in rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpu", action="store_true", help="on the GPU (bf16, CUDA graphs: the GPU defaults)")
    parser.add_argument("--dry-run", action="store_true", help="tiny images on the CPU: checks the script")
    parser.add_argument("--steps", type=int, default=300, help="training steps of each run")
    options = parser.parse_args()
    silence_library_noise()
    logging.getLogger().setLevel(logging.WARNING)
    device = torch.cuda.get_device_name() if options.gpu else f"CPU, {torch.get_num_threads()} threads"
    print(
        f"torch {torch.__version__} on {device}; {options.steps} steps a run"
        + (" (dry run: 8 px images)" if options.dry_run else ""),
        flush=True,
    )
    with tempfile.TemporaryDirectory() as tmp:
        alone, speedup = three_nets(options, Path(tmp))
        dense = densenet(options, Path(tmp))
    print("\n".join(table(alone, speedup, dense, "DenseNet-BC-10" if options.dry_run else "DenseNet-BC-100")))


if __name__ == "__main__":
    sys.exit(main())
