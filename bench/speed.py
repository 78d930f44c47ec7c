"""Speed benchmark: the project's `train` path against a minimal hand-written PyTorch loop, with the same
model, data, optimiser, schedule, device settings and steps, in one process; then how long
`experiments --help` takes and how long a command takes to reach its first training step.

A third path, Lightning's own loop around the same model with nothing of ours (no metrics, checkpoints
or loggers), splits the project's extra time per step into Lightning's share and ours.
Every path counts images over the span from the first timed step of an epoch to the end of its last,
data waits included, the first `--warmup` steps of a run excluded: the two Lightning paths with the
project's own clock (TrainingCost), the raw loop with a stopwatch that syncs the device at both ends.
The paths run in rounds, `--repeats` of them, each path in turn first; a machine's speed drifts, so the
ratios are taken within each round (paths that ran minutes apart are not compared) and their median and
range printed.

Usage: python bench/speed.py         CPU cases (make bench)
       python bench/speed.py --gpu   GPU cases at batch 128 (bench/gpu_check.sh)
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch.optim.lr_scheduler import LambdaLR

from experiments.build import build_datamodule, build_model, build_trainer
from experiments.commands.train import train
from experiments.config import compose
from experiments.data.arrays import TensorBatches
from experiments.device import (
    Device,
    build_optimizer,
    compile_options,
    prepare_model,
    resolve_device,
    use_cuda_graph,
)
from experiments.measure.cost import TrainingCost
from experiments.measure.memory import PeakMemory
from experiments.module import lr_factor
from experiments.plan import Plan
from experiments.step_graph import StepGraph
from experiments.tracking.noise import silence_library_noise

SYNTHETIC = ["dataset=synthetic", "dataset.train_size=1024"]
LAUNCH_BOUND = "resnet8, 8 px, batch 2"
CPU_CASES = {
    "resnet20, 32 px": ["arch=resnet20", *SYNTHETIC],
    "densenet_bc40, 32 px": ["arch=densenet_bc", "arch.depth=40", *SYNTHETIC],
    "resnet56, digits": ["arch=resnet56", "dataset=digits"],
    # steps of a few ms, as small nets take on a GPU: the fixed per-step cost of each path shows
    LAUNCH_BOUND: [
        "arch=resnet",
        "arch.depth=8",
        "dataset=synthetic",
        "dataset.image_size=8",
        "dataset.channels=1",
        "dataset.batch_size=2",
        "dataset.train_size=1024",
    ],
}
GPU_DATA = ["dataset=synthetic", "dataset.train_size=12800", "dataset.batch_size=128"]  # 100 steps an epoch
GPU_CASES = {
    "resnet20": ["arch=resnet20", *GPU_DATA],
    "resnet56": ["arch=resnet56", *GPU_DATA],
    "resnet110": ["arch=resnet110", *GPU_DATA],
    "densenet_bc100": ["arch=densenet_bc100", *GPU_DATA],
    "densenet121": ["arch=densenet121", *GPU_DATA],
}
HE_RECIPE_IMAGES = 64_000 * 128  # ResNet-56, He et al.: 64k iterations at batch 128


def config(overrides: list[str], epochs: int, warmup: int) -> DictConfig:
    return compose(
        "train",
        [
            *overrides,
            "logger=none",
            f"trainer.max_epochs={epochs}",
            f"measure.warmup_steps={warmup}",
            "+trainer.limit_val_batches=0",
            "+trainer.num_sanity_val_steps=0",
        ],
    )


def project(cfg: DictConfig) -> dict:
    # stdout is no terminal here, as under CI or SLURM: no progress bar redrawn every step
    with tempfile.TemporaryDirectory() as run_dir, contextlib.redirect_stdout(io.StringIO()):
        record = train(Plan.of(cfg), Path(run_dir))
    return {"throughput": record.throughput, "peak": record.peak_memory_bytes}


class Stopwatch:
    """The raw loop's clock: images per second after the first `warmup` steps, from the first timed step
    of an epoch to the end of its last, with a device sync at each end."""

    def __init__(self, warmup: int, cuda: bool) -> None:
        self.warmup, self.cuda = warmup, cuda
        self.steps = self.images = 0
        self.seconds = 0.0
        self.start: float | None = None

    def _now(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    def before_step(self) -> None:
        if self.steps >= self.warmup and self.start is None:
            self.start = self._now()

    def after_step(self, images: int) -> None:
        self.steps += 1
        self.images += images if self.start is not None else 0

    def end_epoch(self) -> None:
        if self.start is not None:
            self.seconds += self._now() - self.start
            self.start = None

    @property
    def throughput(self) -> float:
        return self.images / self.seconds


@dataclass
class HandWritten:
    """What a hand-written loop sets up: the model on its device, its optimiser and schedule, the batches."""

    device: torch.device
    settings: Device  # precision and channels_last, as the project resolves them
    autocast: contextlib.AbstractContextManager
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: LambdaLR
    batches: TensorBatches
    step_graph: StepGraph | None  # where cuda_graph is on: forward, loss and backward as one CUDA graph


def hand_written(cfg: DictConfig) -> HandWritten:
    torch.manual_seed(cfg.seed)
    plan = Plan.of(cfg)
    settings = resolve_device(plan.recipe)
    device = torch.device("cuda" if settings.cuda else "cpu")
    data = build_datamodule(plan.subject)
    data.setup()
    model = prepare_model(plan.recipe, build_model(plan.subject, data), settings).to(device)
    if (options := compile_options(plan.recipe.compile)) is not None:  # as the project's module does
        model.compile(**options)
    model.train()
    optimizer = build_optimizer(plan.recipe.optim, settings)(model.parameters())
    batches = data.batches("train", device)
    steps = cfg.trainer.max_epochs * len(batches)
    scheduler = LambdaLR(optimizer, partial(lr_factor, total_steps=steps, **plan.recipe.schedule))
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if settings.precision == "bf16-mixed"
        else contextlib.nullcontext()
    )
    step_graph = None
    if use_cuda_graph(plan.recipe, settings):
        step_graph = StepGraph(lambda x, y: (F.cross_entropy(model(x), y),), model.parameters())
    return HandWritten(device, settings, autocast, model, optimizer, scheduler, batches, step_graph)


def raw_loop(cfg: DictConfig) -> dict:
    """The same training, written out by hand: the loop a careful PyTorch user would write."""
    setup = hand_written(cfg)
    clock = Stopwatch(cfg.measure.warmup_steps, setup.device.type == "cuda")
    memory = PeakMemory(setup.device)
    memory.start()
    for epoch in range(cfg.trainer.max_epochs):
        setup.batches.sampler.set_epoch(epoch)
        for x, y in setup.batches:
            clock.before_step()
            if setup.settings.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            if setup.step_graph is not None:
                with setup.autocast:
                    setup.step_graph(x, y)
            else:
                with setup.autocast:
                    loss = F.cross_entropy(setup.model(x), y)
                setup.optimizer.zero_grad(set_to_none=True)
                loss.backward()
            setup.optimizer.step()
            setup.scheduler.step()
            clock.after_step(len(y))
        clock.end_epoch()
    return {"throughput": clock.throughput, "peak": memory.stop()}


class LightningOnly(pl.LightningModule):
    """The hand-written loop's step as a LightningModule: Lightning's loop with nothing of the project's."""

    def __init__(self, loop: HandWritten) -> None:
        super().__init__()
        self.automatic_optimization = False  # the loop's step, written out as the project's is
        self.model, self.loop = loop.model, loop  # not self.setup: a Lightning hook

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        optimizer = self.optimizers()
        if self.loop.settings.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.loop.step_graph is not None:
            loss = self.loop.step_graph(x, y)[0]
        else:
            loss = F.cross_entropy(self.model(x), y)
            self.manual_backward(loss)
        optimizer.step()
        optimizer.zero_grad()
        self.lr_schedulers().step()
        return loss

    def configure_optimizers(self) -> dict:
        scheduler = {"scheduler": self.loop.scheduler, "interval": "step"}
        return {"optimizer": self.loop.optimizer, "lr_scheduler": scheduler}


class EpochClock(pl.Callback):
    """Reads the project's clock at each epoch's end, as the project's run does (through its epoch record),
    so that the gaps between epochs stay out of the timed span."""

    def __init__(self, clock: TrainingCost) -> None:
        self.clock = clock

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.clock.end_epoch()


def lightning_only(cfg: DictConfig) -> dict:
    """The hand-written loop's training under Lightning's Trainer, with every optional feature off and
    the project's clock."""
    setup = hand_written(cfg)
    clock = TrainingCost(cfg.measure.warmup_steps)
    trainer = build_trainer(
        None,
        accelerator=setup.device.type,
        devices=1,
        precision=setup.settings.precision,
        max_epochs=cfg.trainer.max_epochs,
        callbacks=[clock, EpochClock(clock)],
        limit_val_batches=0,
        num_sanity_val_steps=0,
    )
    trainer.fit(LightningOnly(setup), train_dataloaders=setup.batches)
    return {"throughput": clock.summary()["throughput"]}


PATHS = (project, lightning_only, raw_loop)


def run(path, cfg: DictConfig) -> dict:
    """One run of `path` from a clean torch.compile state, as in a fresh process: each path compiles its
    model (from inductor's on-disk cache after the first) and records its own CUDA graphs."""
    torch.compiler.reset()
    return path(cfg)


def startup() -> None:
    """How long `--help` and a first training step take from the command line, and why."""
    cli = [sys.executable, "-m", "experiments"]
    begun = time.time()
    subprocess.run([*cli, "--help"], check=True, capture_output=True)
    help_s = time.time() - begun
    with tempfile.TemporaryDirectory() as run_dir:
        begun = time.time()
        subprocess.run(
            [
                *cli,
                "train",
                "arch=resnet20",
                "dataset=digits",
                "trainer.max_epochs=1",
                "logger=none",
                f"hydra.run.dir={run_dir}",
            ],
            check=True,
            capture_output=True,
        )
        summary = json.loads((Path(run_dir) / "summary.json").read_text())
    first_step_s = summary["first_step_unix_time"] - begun
    imports = {}
    for module in ("torch", "pytorch_lightning"):
        begun = time.time()
        subprocess.run([sys.executable, "-c", f"import {module}"], check=True)
        imports[module] = time.time() - begun
    print(f"`experiments --help`: {help_s:.2f} s (target < 1.5 s: the dispatcher imports no library)")
    print(
        f"command to first training step (train arch=resnet20 dataset=digits): {first_step_s:.1f} s, "
        f"of which importing torch takes {imports['torch']:.1f} s and pytorch_lightning "
        f"(with torch and torchmetrics) {imports['pytorch_lightning']:.1f} s; the rest is Hydra, the data, "
        "the model and its meta-device counts, Lightning's setup and its two sanity-check validation batches"
    )


def add_step_options(parser: argparse.ArgumentParser) -> None:
    """--compile [MODE] and --cuda-graph, as this script and step_profile.py take them."""
    parser.add_argument(
        "--compile",
        nargs="?",
        const="true",
        default="false",
        help="torch.compile every path (MODE: its mode)",
    )
    parser.add_argument(
        "--cuda-graph",
        choices=("auto", "true", "false"),
        default="auto",
        help="every path's cuda_graph setting (auto: on the GPU, a step as one graph)",
    )


def step_overrides(args: argparse.Namespace) -> list[str]:
    return [f"compile={args.compile}", f"cuda_graph={args.cuda_graph}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--gpu", action="store_true", help="the GPU cases (bf16, channels_last, data on the GPU)"
    )
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=5, help="steps at the start not timed")
    add_step_options(parser)
    parser.add_argument("--cases", nargs="+", help="only these cases (default: all)")
    parser.add_argument(
        "--repeats", type=int, default=3, help="rounds of the three paths; medians over them count"
    )
    args = parser.parse_args()
    silence_library_noise()
    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)  # the table is this script's output
    cases = GPU_CASES if args.gpu else CPU_CASES
    if unknown := [name for name in args.cases or () if name not in cases]:
        parser.error(f"unknown cases {unknown}; known: {list(cases)}")
    cases = {name: overrides for name, overrides in cases.items() if name in (args.cases or cases)}
    device = torch.cuda.get_device_name() if args.gpu else f"CPU, {torch.get_num_threads()} threads"
    print(f"torch {torch.__version__} on {device}, {' '.join(step_overrides(args))}")
    print(
        f"{'case':<24} {'batch':>5} {'project':>9} {'Lightning':>9} {'raw loop':>9} {'ratio (range)':>18}"
        f"  {'extra ms/step: Lightning + ours':>31}" + ("  peak MB project / raw" if args.gpu else "")
    )
    print(f"{'':<24} {'':>5} {'img/s':>9} {'only':>9} {'img/s':>9}")
    for name, overrides in cases.items():
        trainer = "trainer=gpu" if args.gpu else "trainer=cpu"
        cfg = config([*overrides, trainer, *step_overrides(args)], args.epochs, args.warmup)
        rounds = []
        for repeat in range(args.repeats):
            turn = repeat % len(PATHS)
            rounds.append({path: run(path, cfg) for path in PATHS[turn:] + PATHS[:turn]})
        # per round: each path's milliseconds per batch, and from them the round's ratio and extra times
        ms = [
            {path: 1000 * cfg.dataset.batch_size / result["throughput"] for path, result in r.items()}
            for r in rounds
        ]
        ratios = [m[raw_loop] / m[project] for m in ms]
        lightning_ms = statistics.median(m[lightning_only] - m[raw_loop] for m in ms)
        ours_ms = statistics.median(m[project] - m[lightning_only] for m in ms)
        throughput = {path: statistics.median(r[path]["throughput"] for r in rounds) for path in PATHS}
        line = (
            f"{name:<24} {cfg.dataset.batch_size:>5} "
            + " ".join(f"{throughput[path]:>9,.0f}" for path in PATHS)
            + f" {statistics.median(ratios):>6.2f} ({min(ratios):.2f}-{max(ratios):.2f})"
            + f"  {lightning_ms + ours_ms:>9.2f} = {lightning_ms:.2f} + {ours_ms:.2f}"
        )
        if args.gpu:
            line += f"  {rounds[0][project]['peak'] / 1e6:,.0f} / {rounds[0][raw_loop]['peak'] / 1e6:,.0f}"
            if name == "resnet56":
                minutes = HE_RECIPE_IMAGES / throughput[project] / 60
                line += f"  (He et al.'s 64k x 128 recipe: {minutes:.1f} min)"
        print(line, flush=True)
    if not args.gpu:
        startup()


if __name__ == "__main__":
    main()
