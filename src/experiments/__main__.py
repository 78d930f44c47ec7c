"""Command dispatch: `experiments train | profile | report`. Heavy imports wait until a command needs them."""

from __future__ import annotations

import os
import sys

USAGE = """\
usage: experiments COMMAND [OVERRIDES ...]

Measure how ResNets and DenseNets behave: degradation, memory, speed, gradient flow.

commands:
  train     train one run (or a sweep with -m); Hydra overrides, e.g. arch=resnet arch.depth=56
  profile   params, FLOPs, activation memory, step time of a model; no dataset needed
  report    tables and plots from finished runs: experiments report DIR [DIR ...]

examples:
  experiments train arch=resnet arch.depth=20 dataset=digits trainer.max_epochs=3
  experiments train -m arch=plain,resnet arch.depth=20,56 dataset=digits
  experiments profile -m arch=densenet_bc arch.depth=40,100 arch.memory_efficient=false,true
  experiments report multirun/2026-11-27/10-00-00

`experiments train --help` lists the config groups and options; `--cfg job` prints the composed config.
"""

HYDRA_COMMANDS = ("train", "profile")


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    from experiments.distributed import WORKER_ENV

    if WORKER_ENV in os.environ and "LOCAL_RANK" in os.environ:
        # Lightning's DDP launcher re-runs our command line for each extra rank: run that rank's share of
        # the parent's run instead of composing (and creating) a new one.
        from experiments.distributed import run_worker

        return run_worker()
    if not args or args[0] in ("-h", "--help", "help"):
        print(USAGE, end="")
        return 0
    command, rest = args[0], args[1:]
    if command in HYDRA_COMMANDS:
        from experiments.app import run

        return run(command, rest)
    if command == "report":
        from experiments.report.cli import main as report_main

        return report_main(rest)
    print(
        f"error: unknown command '{command}'; valid: train, profile, report (see experiments --help)",
        file=sys.stderr,
    )
    return 2


if __name__ == "__main__":
    sys.exit(main())
