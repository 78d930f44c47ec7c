"""`make demo`: the degradation and why it happens, DenseNet's memory trade-off and feature reuse, offline,
in minutes on a CPU, every comparison over three seeds. It runs these commands:

    experiments train -m experiment=degradation_demo arch=plain logger.online=false \\
        hydra.sweep.dir=OUT/degradation/plain        (and arch=resnet beside it: two one-thread processes)
    experiments probe -m arch=plain,resnet arch.depth=20,56,110 seed=0,1,2 dataset=digits logger=none \\
        hydra.sweep.dir=OUT/probe
    experiments lesion OUT/degradation/*/*
    experiments train arch=densenet40 dataset=digits trainer.max_epochs=4 logger=none \\
        hydra.run.dir=OUT/densenet/densenet40-digits
    experiments profile -m experiment=memory size=small,medium profile.steps=1 logger=none \\
        hydra.sweep.dir=OUT/memory
    experiments report OUT/degradation OUT/probe OUT/densenet OUT/memory --out OUT/report --online false

`--full` (make demo-full) adds the 110-layer nets to the sweep, and the check that the demo's verdicts do
not hinge on rounding: ten seeds of each net trained with torch at one thread and again at two (another
machine's kernels round differently; so do one and two threads), printed as min, median and max per net.

Usage: python -m experiments.demo [--full] [OUT]   (default outputs/demo)
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from experiments.__main__ import main as experiments

SWEEP = ["train", "-m", "experiment=degradation_demo", "logger.online=false"]
LESIONED = ("plain20-", "resnet20-", "plain56-", "resnet56-")  # 110-layer nets take minutes to lesion
CHECK_SEEDS = "seed=" + ",".join(map(str, range(10)))


def train_sweep(out: Path, overrides: list[str], threads: int = 1) -> int:
    """The degradation sweep with torch at `threads` threads: at one, as two processes side by side (a
    2-core machine trains both at once), the plain nets in one and the residual nets in the other; their
    lines go to OUT/<arch>.log (OUT/both.log for one process), and each run's final line is printed."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    out.mkdir(parents=True, exist_ok=True)
    processes = []
    for arch in ("plain", "resnet") if threads == 1 else ("plain,resnet",):
        folder = "both" if "," in arch else arch
        command = [*SWEEP, f"arch={arch}", *overrides, f"hydra.sweep.dir={out / folder}"]
        print(f"$ OMP_NUM_THREADS={threads} experiments {' '.join(command)}", flush=True)
        log = (out / f"{folder}.log").open("w")
        processes.append(
            (
                subprocess.Popen(
                    [sys.executable, "-m", "experiments", *command],
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                ),
                log,
            )
        )
    status = 0
    for process, log in processes:
        status = process.wait() or status
        log.close()
        for line in Path(log.name).read_text().splitlines():
            if "train error" in line or line.startswith("error"):
                print(line.split("] ")[-1])
    return status


def _runs(trained: Path, *prefixes: str) -> list[str]:
    """The demo's trained run directories whose names start with one of `prefixes`."""
    return [str(p) for p in sorted(trained.glob("*/*")) if p.name.startswith(prefixes)]


def commands(out: Path, full: bool) -> list[list[str]]:
    """The demo's commands after the training sweep (whose run directories they read); `full` adds the 2-D
    surfaces, the gradient's path lengths and the curvature of the seed-0 nets, which take minutes."""
    trained = out / "degradation"
    deep = _runs(trained, "plain56-", "resnet56-")
    dense = f"{out}/densenet/densenet40-digits"
    slices = ["--directions", "2", "--points", "21", "--images", "256"]
    first = [run for run in deep if "-s0-" in run]
    return [
        ["probe", "-m", "arch=plain,resnet", "arch.depth=20,56,110", "seed=0,1,2", "dataset=digits",
         "logger=none", f"hydra.sweep.dir={out}/probe"],
        ["lesion", "--draws", "3", *_runs(trained, *LESIONED)],
        ["train", "arch=densenet40", "dataset=digits", "trainer.max_epochs=4", "logger=none",
         f"hydra.run.dir={dense}"],
        ["landscape", *slices, "--no-surface", *[run for run in deep if run not in first or not full], dense],
        *([
            ["landscape", *slices, "--grid", "11", *first],
            ["paths", "--images", "32", "--samples", "8", *_runs(trained, "resnet56-digits-s0-")],
            ["curvature", "--images", "128", "--iterations", "20", *first],
        ] if full else []),
        ["profile", "-m", "experiment=memory", "size=small,medium", "profile.steps=1", "logger=none",
         f"hydra.sweep.dir={out}/memory"],
        ["report", str(trained), f"{out}/probe", f"{out}/densenet", f"{out}/memory", "--out", f"{out}/report",
         "--online", "false"],
    ]  # fmt: skip


def seed_check(out: Path) -> int:
    """Ten seeds of each of the demo's nets at one thread and at two: the spread a verdict must survive."""
    for threads in (1, 2):
        if status := train_sweep(out / f"threads{threads}", [CHECK_SEEDS], threads):
            return status
    from experiments.report.collect import find_runs

    print(f"\n{'net':<10}" + "".join(f"{f'{t} thread(s): min / median / max':>38}" for t in (1, 2)))
    by_net: dict[str, dict[int, list[float]]] = {}
    for run in find_runs([out]):
        if run.trained:
            threads = int(run.path.parent.parent.name.removeprefix("threads"))  # OUT/threadsN/<arch>/<run>
            by_net.setdefault(f"{run.arch}-{run.depth}", {}).setdefault(threads, []).append(
                run.get("train_error")
            )
    for net, errors in sorted(by_net.items()):
        cells = [_spread(errors.get(t, [])) for t in (1, 2)]
        print(f"{net:<10}" + "".join(f"{cell:>38}" for cell in cells))
    return 0


def _spread(errors: list[float]) -> str:
    if not errors:
        return "-"
    shown = [f"{100 * e:.1f}%" for e in (min(errors), statistics.median(errors), max(errors))]
    return f"{' / '.join(shown)} (n={len(errors)})"


def main(argv: list[str]) -> int:
    full = "--full" in argv
    args = [arg for arg in argv if arg != "--full"]
    out = Path(args[0] if args else "outputs/demo")
    started = time.perf_counter()
    depths = ["arch.depth=20,56,110"] if full else []
    if status := train_sweep(out / "degradation", depths):
        return status
    print(f"({time.perf_counter() - started:.0f} s)")
    for number in range(len(commands(out, full))):
        command = commands(out, full)[number]  # the run directories they read exist once the sweep ran
        print(f"\n$ experiments {' '.join(command)}", flush=True)
        began = time.perf_counter()
        if status := experiments(command):
            return status
        print(f"({time.perf_counter() - began:.0f} s)")
    if full and (status := seed_check(out / "check")):
        return status
    minutes, seconds = divmod(round(time.perf_counter() - started), 60)
    print(f"\ndemo done in {minutes}m{seconds:02d}s: open {out}/report/report.md (figures beside it)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
