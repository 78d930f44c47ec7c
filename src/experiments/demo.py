"""`make demo`: the degradation demo, the memory sweep and their report, offline, in minutes on a CPU.

It runs these three commands, in one process so the libraries are imported once:

    experiments train -m experiment=degradation_demo logger.online=false hydra.sweep.dir=OUT/degradation
    experiments profile -m experiment=memory size=small,medium profile.steps=1 logger=none \\
        hydra.sweep.dir=OUT/memory
    experiments report OUT/degradation OUT/memory --out OUT/report --online false

Usage: python -m experiments.demo [OUT]   (default outputs/demo)
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from experiments.__main__ import main as experiments


def commands(out: Path) -> list[list[str]]:
    return [
        [
            "train",
            "-m",
            "experiment=degradation_demo",
            "logger.online=false",
            f"hydra.sweep.dir={out}/degradation",
        ],
        [
            "profile",
            "-m",
            "experiment=memory",
            "size=small,medium",
            "profile.steps=1",
            "logger=none",
            f"hydra.sweep.dir={out}/memory",
        ],
        ["report", f"{out}/degradation", f"{out}/memory", "--out", f"{out}/report", "--online", "false"],
    ]


def main(argv: list[str]) -> int:
    out = Path(argv[0] if argv else "outputs/demo")
    started = time.perf_counter()
    for command in commands(out):
        print(f"\n$ experiments {' '.join(command)}", flush=True)
        if status := experiments(command):
            return status
    minutes, seconds = divmod(round(time.perf_counter() - started), 60)
    print(f"\ndemo done in {minutes}m{seconds:02d}s: open {out}/report/report.md (figures beside it)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
