"""Command dispatch: `experiments COMMAND ...`. Nothing heavy is imported until a command needs it."""

from __future__ import annotations

import importlib
import os
import sys

# name: (what it does, how it runs: "hydra" for Hydra apps, else the module whose main(args) runs it)
COMMANDS = {
    "train": ("train one run (or a sweep with -m); Hydra overrides, e.g. arch=resnet arch.depth=56", "hydra"),
    "profile": ("params, FLOPs, activation memory, step time of a model; no dataset needed", "hydra"),
    "probe": ("signal propagation per block at initialisation (or from ckpt_path), on one batch", "hydra"),
    "lesion": (
        "test error of trained runs with blocks deleted: lesion RUN_DIR ...",
        "experiments.commands.lesion",
    ),
    "reuse": ("DenseNet feature-reuse map of trained runs: reuse RUN_DIR ...", "experiments.commands.reuse"),
    "landscape": (
        "loss-surface slices around trained runs' weights (Li et al. 2018): landscape RUN_DIR ...",
        "experiments.commands.landscape",
    ),
    "paths": (
        "a residual net's gradient by path length (Veit et al. 2016): paths RUN_DIR ...",
        "experiments.commands.paths",
    ),
    "curvature": (
        "Hessian top eigenvalue and trace of trained runs: curvature RUN_DIR ...",
        "experiments.commands.curvature",
    ),
    "report": ("tables and figures from finished runs: report DIR [DIR ...]", "experiments.commands.report"),
}

USAGE = f"""\
usage: experiments COMMAND [ARGS ...]

Measure how ResNets and DenseNets behave: degradation, memory, speed, and why (signals, lesions,
loss landscapes, gradient paths, curvature).

commands:
{chr(10).join(f"  {name:<10} {what}" for name, (what, _) in COMMANDS.items())}

examples:
  experiments train arch=resnet arch.depth=20 dataset=digits trainer.max_epochs=3
  experiments train -m arch=plain,resnet arch.depth=20,56 dataset=digits
  experiments profile -m arch=densenet_bc arch.depth=40,100 arch.memory_efficient=false,true
  experiments probe -m arch=plain,resnet arch.depth=20,56,110
  experiments lesion multirun/2026-11-27/10-00-00/*
  experiments landscape multirun/2026-11-27/10-00-00/resnet56-*
  experiments report multirun/2026-11-27/10-00-00

`experiments train --help` lists the config groups and options; `--cfg job` prints the composed config.
"""


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    from experiments.distributed import WORKER_ENV

    if WORKER_ENV in os.environ and "LOCAL_RANK" in os.environ:
        # Lightning's DDP launcher re-runs our command line for each extra rank: run that rank's share of
        # the parent's run instead of composing (and creating) a new one.
        from experiments.commands.train import run_worker

        return run_worker()
    if not args or args[0] in ("-h", "--help", "help"):
        print(USAGE, end="")
        return 0
    from experiments.errors import note_traceback_wish

    note_traceback_wish()
    command, rest = args[0], args[1:]
    if command not in COMMANDS:
        import difflib

        nearest = difflib.get_close_matches(command, COMMANDS, n=1)
        hint = f"did you mean '{nearest[0]}'? " if nearest else ""
        valid = ", ".join(COMMANDS)
        print(
            f"error: unknown command '{command}'; {hint}valid: {valid} (see experiments --help)",
            file=sys.stderr,
        )
        return 2
    runner = COMMANDS[command][1]
    if runner == "hydra":
        from experiments.app import run

        return run(command, rest)
    try:
        return importlib.import_module(runner).main(rest)
    except SystemExit as done:  # argparse's --help and its one-line refusals end so
        return done.code if isinstance(done.code, int) else 0


if __name__ == "__main__":
    sys.exit(main())
