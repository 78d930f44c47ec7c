"""The papers' recipes and numbers: He et al.'s warm-up rule, the papers' test errors beside ours, runs over
seeds taken together and tested, fine-tuning from ImageNet weights."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
import torchvision
from PIL import Image

from experiments import specs
from experiments.config import compose
from experiments.models import create_model
from experiments.papers import HUANG_2017, paper_test_error
from tests.helpers import run_dirs, summary
from tests.test_data import skip_md5, write_cifar  # noqa: F401  (a fixture, used by name)


def read(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def test_he2016_warm_up_ends_at_80_percent_training_error_and_survives_a_resume(cli, workdir):
    """lr / 10 until the training error over 10 batches is below 80%; a run resumed from a checkpoint
    taken after the warm-up does not warm up again."""
    args = ["arch=resnet", "arch.depth=8", "dataset=digits", "logger=none", "schedule=constant"]
    warm = ["+schedule.warmup_until_train_error=0.8"]
    assert cli("train", *args, *warm, "trainer.max_epochs=1", "hydra.run.dir=first").status == 0
    checkpoint = torch.load(workdir / "first" / "checkpoints" / "last.ckpt", weights_only=False)
    warmed_up_at = checkpoint["warmed_up_at"]
    assert isinstance(warmed_up_at, int) and 9 <= warmed_up_at < 22  # the window needs 10 batches
    assert float(read(workdir / "first" / "metrics.csv")[0]["lr"]) == pytest.approx(0.01)  # warming at first
    assert checkpoint["lr_schedulers"][0]["_last_lr"] == [pytest.approx(0.1)]  # and no longer at the end
    resumed = [
        "trainer.max_epochs=2",
        f"ckpt_path={workdir}/first/checkpoints/last.ckpt",
        "hydra.run.dir=second",
    ]
    assert cli("train", *args, *warm, *resumed).status == 0
    # had the warm-up state been lost, it would have ended again, in the resumed epoch
    assert (
        torch.load(workdir / "second" / "checkpoints" / "last.ckpt", weights_only=False)["warmed_up_at"]
        == warmed_up_at
    )


def test_the_degradation_sweep_warms_up_resnet110_only():
    def warmup(arch: str, depth: int):
        return compose(
            "train", ["experiment=degradation", f"arch={arch}", f"arch.depth={depth}"]
        ).schedule.warmup_until_train_error

    assert warmup("resnet", 110) == 0.8
    assert [warmup("resnet", d) for d in (20, 56)] + [warmup("plain", 110)] == [None, None, None]
    cfg = compose("train", ["experiment=huang2017_densenet40_c10"])
    assert (cfg.dataset.val_size, cfg.dataset.flip, cfg.arch.drop_rate, cfg.precision) == (
        0,
        False,
        0.2,
        "32-true",
    )


def test_the_paper_presets_are_their_papers_recipe_on_their_nets():
    """Each huang2017_* preset is experiment=huang2017 on its net and data, without augmentation (then with
    dropout 0.2) where its name has no `plus`; each he2016_* preset and the degradation sweep He et al.'s."""
    for net in ("densenet40", "densenet_bc100"):
        for data in ("c10", "c10plus", "c100", "c100plus"):
            cfg = compose("train", [f"experiment=huang2017_{net}_{data}"])
            plus = data.endswith("plus")
            dataset = "cifar100" if data.startswith("c100") else "cifar10"
            assert (cfg.dataset.name, cfg.dataset.batch_size, cfg.dataset.val_size) == (dataset, 64, 0)
            assert (cfg.optim.nesterov, cfg.trainer.max_epochs, cfg.precision) == (True, 300, "32-true")
            assert (cfg.dataset.flip, cfg.arch.drop_rate) == ((True, 0.0) if plus else (False, 0.2)), data
    for preset in ("he2016_resnet56", "he2016_resnet110", "degradation", "densenet_vs_resnet"):
        cfg = compose("train", [f"experiment={preset}", "arch=resnet110"])
        assert (cfg.dataset.name, cfg.dataset.batch_size, cfg.dataset.val_size) == ("cifar10", 128, 5000)
        assert (cfg.trainer.max_epochs, cfg.precision, cfg.optim.lr) == (182, "32-true", 0.1), preset


@pytest.fixture
def cifar(workdir, skip_md5):  # noqa: F811
    write_cifar(workdir / "data", "cifar10")
    return [
        "dataset=cifar10",
        "dataset.val_size=10",
        "dataset.batch_size=25",
        "trainer.max_epochs=1",
        "logger=none",
    ]


@pytest.mark.slow  # seconds each: run by make test-slow
def test_a_paper_number_reaches_the_record_and_the_report_for_every_matching_run(cli, workdir, cifar):
    result = cli("train", "-m", "arch=resnet,plain", "arch.depth=8,20", *cifar, "hydra.sweep.dir=sweep")
    assert result.status == 0, result.err
    papers = {
        summary(r)["arch"] + str(summary(r)["depth"]): summary(r)["paper_test_error"]
        for r in run_dirs(workdir / "sweep")
    }
    assert papers == {"resnet20": 0.0875, "resnet8": None, "plain20": None, "plain8": None}
    assert cli("report", "sweep", "--out", "report", "--logger", "none").status == 0
    rows = {r["arch"] + r["depth"]: r for r in read(workdir / "report" / "runs.csv")}
    assert rows["resnet20"]["paper_test_error"] == "0.0875" and rows["plain20"]["paper_test_error"] == ""
    assert "| resnet-20 on cifar10 | 0 | " in (workdir / "report" / "report.md").read_text()  # its seeds


def test_a_net_gets_the_paper_number_of_what_it_is_not_of_how_it_was_spelt():
    """DenseNet-BC-100 spelt out from the densenet family is Huang et al.'s DenseNet-BC-100; a DenseNet with
    compression alone (DenseNet-C) or bottlenecks alone (-B) is a net the paper gives no figure for."""
    spelt_out = specs.resolve("densenet", depth=100, bottleneck=True, compression=0.5)
    assert paper_test_error(spelt_out, "cifar10", True) == 0.0451 == HUANG_2017["densenet_bc100-k12"][1]
    assert paper_test_error(specs.resolve("densenet40", compression=0.5), "cifar10", True) is None
    assert paper_test_error(specs.resolve("densenet_bc100", compression=1.0), "cifar10", True) is None
    assert paper_test_error(specs.resolve("densenet40"), "cifar10", True) == 0.0524


def test_seeds_are_taken_together_and_differences_tested(cli, workdir, three_seeds):
    sweep = three_seeds
    assert cli("report", str(sweep), "--out", "report", "--logger", "none").status == 0
    aggregate = {r["arch"]: r for r in read(workdir / "report" / "aggregate.csv")}
    assert set(aggregate) == {"plain", "resnet"}
    for arch, row in aggregate.items():
        errors = [summary(r)["test_error"] for r in run_dirs(sweep) if summary(r)["arch"] == arch]
        assert (row["n"], row["seeds"], row["repeats"]) == ("3", "0;1;2", "0")
        assert float(row["test_error_mean"]) == pytest.approx(sum(errors) / 3)
        assert float(row["test_error_std"]) == pytest.approx(torch.tensor(errors).std().item(), rel=1e-4)
    report = (workdir / "report" / "report.md").read_text()
    assert "## Over seeds" in report
    for metric in ("training error", "test error"):
        assert f"| plain-8 on digits (n=3) | resnet-8 on digits (n=3) | {metric} |" in report
    assert "(p = " in report


def write_images(root: Path, classes: dict[str, list[str]], size: int = 40, per_class: int = 4) -> None:
    """An ImageFolder: root/<split>/<class>/<i>.png of random pixels."""
    generator = torch.Generator().manual_seed(0)
    for split, names in classes.items():
        for name in names:
            (root / split / name).mkdir(parents=True)
            for i in range(per_class):
                pixels = torch.randint(0, 256, (size, size, 3), generator=generator, dtype=torch.uint8)
                Image.fromarray(pixels.numpy()).save(root / split / name / f"{i}.png")


@pytest.mark.slow
def test_choose_fine_tunes_three_pretrained_nets_on_a_users_folder(cli, workdir):
    # 8 steps of 4 images: enough to time some after the 5 warm-up steps
    write_images(workdir / "pets", {"train": ["cat", "dog"], "val": ["cat", "dog"]}, per_class=16)
    for name in ("resnet18", "resnet50", "densenet121"):
        torch.save(getattr(torchvision.models, name)().state_dict(), workdir / f"{name}.pth")
    result = cli(
        "train",
        "-m",
        "experiment=choose",
        "dataset.path=~/../pets",
        f"arch.pretrained={workdir}",
        "dataset.image_size=32",
        "dataset.batch_size=4",
        "dataset.num_workers=0",
        "trainer.max_epochs=1",
        "optim.lr=1e-7",  # random-init nets on noise at 32 px take huge first steps; keep them small
        "logger=none",
    )
    assert result.status == 0, result.err
    runs = run_dirs(workdir / "multirun")
    assert sorted(summary(r)["arch"] + str(summary(r)["depth"]) for r in runs) == [
        "densenet121",
        "resnet18",
        "resnet50",
    ]
    for run in runs:
        record = summary(run)
        assert (
            record["status"] == "completed"
            and record["stem"] == "imagenet"
            and record["pretrained"] == str(workdir)
        )
        assert record["throughput"] > 0 and record["peak_memory_bytes"] > 0
        # each net starts from its own file: at this learning rate it ends next to those weights
        stem = "features.conv0.weight" if record["arch"] == "densenet" else "conv1.weight"
        reference = torch.load(workdir / f"{record['arch']}{record['depth']}.pth")[stem]
        trained = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
        assert (trained[f"model.{stem}"] - reference).abs().max() < 0.01


def test_finetune_with_a_frozen_backbone_trains_the_classifier_only(cli, workdir):
    write_images(workdir / "pets", {"train": ["cat", "dog"], "val": ["cat", "dog"]})
    torch.save(
        create_model("resnet18", num_classes=1000, image_size=224).state_dict(), workdir / "resnet18.pth"
    )
    result = cli(
        "train",
        "experiment=finetune",
        "arch=resnet18",
        "dataset.path=pets",
        f"arch.pretrained={workdir}/resnet18.pth",
        "arch.freeze=backbone",
        "dataset.image_size=32",
        "dataset.batch_size=4",
        "dataset.num_workers=0",
        "trainer.max_epochs=1",
        "logger=none",
    )
    assert result.status == 0, result.err
    (run,) = run_dirs(workdir / "outputs")
    assert summary(run)["params"] == 512 * 2 + 2  # the new classifier of two classes, nothing else
    state = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    torch.testing.assert_close(
        state["model.conv1.weight"], torch.load(workdir / "resnet18.pth")["conv1.weight"]
    )
