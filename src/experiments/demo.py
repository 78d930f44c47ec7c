"""`make demo`: the degradation and why it happens, DenseNet's memory trade-off and feature reuse, offline,
in minutes on a CPU. It runs these commands, in one process so the libraries are imported once:

    experiments train -m experiment=degradation_demo logger.online=false hydra.sweep.dir=OUT/degradation
    experiments probe -m arch=plain,resnet arch.depth=20,56,110 dataset=digits logger=none \\
        hydra.sweep.dir=OUT/probe
    experiments lesion OUT/degradation/plain20-* OUT/degradation/resnet20-* (and the 56-layer nets)
    experiments train arch=densenet40 dataset=digits trainer.max_epochs=4 logger=none \\
        hydra.run.dir=OUT/densenet/densenet40-digits
    experiments profile -m experiment=memory size=small,medium profile.steps=1 logger=none \\
        hydra.sweep.dir=OUT/memory
    experiments report OUT/degradation OUT/probe OUT/densenet OUT/memory --out OUT/report --online false

Usage: python -m experiments.demo [OUT]   (default outputs/demo)
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from experiments.__main__ import main as experiments

LESIONED = ("plain20-", "resnet20-", "plain56-", "resnet56-")  # the 20- and 56-layer nets of the sweep


def commands(out: Path) -> list[list[str]]:
    trained = f"{out}/degradation"
    return [
        ["train", "-m", "experiment=degradation_demo", "logger.online=false", f"hydra.sweep.dir={trained}"],
        [
            "probe",
            "-m",
            "arch=plain,resnet",
            "arch.depth=20,56,110",
            "dataset=digits",
            "logger=none",
            f"hydra.sweep.dir={out}/probe",
        ],
        ["lesion", *(str(p) for p in sorted(Path(trained).glob("*")) if p.name.startswith(LESIONED))],
        [
            "train",
            "arch=densenet40",
            "dataset=digits",
            "trainer.max_epochs=4",
            "logger=none",
            f"hydra.run.dir={out}/densenet/densenet40-digits",
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
        [
            "report",
            trained,
            f"{out}/probe",
            f"{out}/densenet",
            f"{out}/memory",
            "--out",
            f"{out}/report",
            "--online",
            "false",
        ],
    ]


def main(argv: list[str]) -> int:
    out = Path(argv[0] if argv else "outputs/demo")
    started = time.perf_counter()
    for number in range(len(commands(out))):
        command = commands(out)[number]  # the lesion's run directories exist once the sweep ran
        print(f"\n$ experiments {' '.join(command)}", flush=True)
        if status := experiments(command):
            return status
    minutes, seconds = divmod(round(time.perf_counter() - started), 60)
    print(f"\ndemo done in {minutes}m{seconds:02d}s: open {out}/report/report.md (figures beside it)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
