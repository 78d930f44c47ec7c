"""A hostile user's inputs: each one either refused in one line naming the setting (fast, writing nothing)
or taken as it means, with a warning line where the data is not what it seems."""

from __future__ import annotations

import logging
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.helpers import clean_env
from tests.test_data import make_folder

IMAGEFOLDER_LOG = "experiments.data.imagefolder"


def folder_data(root: Path):
    from experiments.data import ImageFolderData

    return ImageFolderData("imagefolder", str(root), image_size=8, batch_size=4, num_workers=0)


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def test_a_symlink_loop_counts_each_image_once_and_is_named(tmp_path, caplog):
    make_folder(tmp_path, {"train": ["cat", "dog"], "val": ["cat", "dog"]})
    (tmp_path / "train" / "cat" / "loop").symlink_to(".")
    (tmp_path / "train" / "cat" / "3.png").symlink_to("0.png")  # a second path to the same file
    caplog.set_level(logging.WARNING, IMAGEFOLDER_LOG)
    data = folder_data(tmp_path)
    training = data.train_dataloader().dataset
    assert len(training) == 6 and training.targets == [0, 0, 0, 1, 1, 1]
    (line,) = warnings_of(caplog)
    assert f"{tmp_path / 'train' / 'cat' / 'loop'} links back to" in line and "\n" not in line


def test_an_image_in_two_classes_or_in_training_and_validation_is_named(tmp_path, caplog):
    make_folder(tmp_path, {"train": ["cat", "dog"], "val": ["cat", "dog"]})
    cat = tmp_path / "train" / "cat" / "0.png"
    (tmp_path / "train" / "dog" / "extra.png").symlink_to(cat)
    (tmp_path / "val" / "dog" / "extra.png").symlink_to(cat)
    caplog.set_level(logging.WARNING, IMAGEFOLDER_LOG)
    data = folder_data(tmp_path)
    assert len(data.train_dataloader().dataset) == 7  # kept in both classes, as the folders say
    (two_classes,) = warnings_of(caplog)
    assert f"(first: {cat} in cat and dog)" in two_classes
    caplog.clear()
    data.val_dataloader()
    (leak,) = warnings_of(caplog)
    assert f"of {tmp_path / 'val'} are training images too (first: {cat})" in leak


def two_class_folder(root: Path, cat: Image.Image, dog: Image.Image, suffix: str = ".png") -> None:
    """root/{train,val}/{cat,dog}/0<suffix>: one image per class and split."""
    for split in ("train", "val"):
        for name, image in (("cat", cat), ("dog", dog)):
            (root / split / name).mkdir(parents=True)
            image.save(root / split / name / f"0{suffix}")


def test_16_bit_images_are_scaled_to_8_bits_by_one_factor_not_clipped(tmp_path):
    from experiments.data.imagefolder import _Folder

    dark, bright = (Image.fromarray(np.full((4, 4), v, dtype=np.uint16)) for v in (1000, 60000))
    assert dark.mode == "I;16"
    two_class_folder(tmp_path, dark, bright)
    training = _Folder(tmp_path / "train", None, None)
    assert [training[i][0].getpixel((0, 0)) for i in range(2)] == [(4, 4, 4), (233, 233, 233)]


@pytest.mark.parametrize("pixels", [np.float32, np.int32], ids=["F", "I"])
def test_an_image_rgb_cannot_hold_is_one_line_naming_it(pixels, cli, workdir):
    from tests.test_data import train_on_folder

    image = Image.fromarray(np.full((12, 12), 70000, dtype=pixels))
    two_class_folder(workdir / "pets", image, image, suffix=".tiff")
    result = cli(*train_on_folder("pets"))
    line = result.error_line()
    assert result.status == 1 and f"pets/train/cat/0.tiff is a PIL mode {image.mode} image" in line


def test_a_very_large_image_is_one_warning_line_naming_it(tmp_path, caplog, monkeypatch):
    from experiments.data.imagefolder import _Folder, check_images

    make_folder(tmp_path, {"train": ["cat", "dog"]}, size=12)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 144 pixels: over; twice over is refused
    caplog.set_level(logging.WARNING, IMAGEFOLDER_LOG)
    folder = _Folder(tmp_path / "train", None, None)
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        check_images(folder)
        folder[0]
    large = [line for line in warnings_of(caplog) if "decompression bombs" in line]
    assert len(large) == len(folder) and f"{folder.samples[0][0]} is 12x12 pixels" in large[0]


def test_an_empty_class_folder_is_named(cli, workdir):
    from tests.test_data import train_on_folder

    make_folder(workdir / "pets", {"train": ["cat", "dog"], "val": ["cat", "dog"]})
    for image in (workdir / "pets" / "train" / "dog").iterdir():
        image.unlink()
    result = cli(*train_on_folder("pets"))
    assert result.status == 1
    assert "class folder pets/train/dog holds no images" in result.error_line()


DRIVER = (
    "import sys; from experiments.__main__ import main; status = main(sys.argv[1:]); "
    "print('torch imported' if 'torch' in sys.modules else 'torch not imported'); sys.exit(status)"
)


def refused_without_torch(workdir: Path, *args: str, **env: str) -> str:
    """The one error line of `experiments ARGS` run in a fresh process in `workdir`, which must refuse
    without importing torch and without writing anything."""
    before = sorted(workdir.rglob("*"))
    done = subprocess.run(
        [sys.executable, "-c", DRIVER, *args],
        cwd=workdir,
        env={**clean_env(workdir), **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0 and done.stdout.strip().endswith("torch not imported"), done
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("error: ") and sorted(workdir.rglob("*")) == before, line
    return line


def test_an_unknown_trainer_argument_is_named_with_the_nearest(workdir):
    line = refused_without_torch(workdir, "train", "dataset=digits", "+trainer.max_epoch=1")
    assert line == (
        "error: trainer.max_epoch is not an argument of Lightning's Trainer; the nearest that is: "
        "trainer.max_epochs"
    )


def test_an_unknown_measure_setting_is_named_with_the_nearest(workdir):
    line = refused_without_torch(workdir, "train", "dataset=digits", "+measure.signal_every=5")
    assert line == "error: measure.signal_every is not a setting; the nearest that is: measure.signals_every"


def test_accumulating_gradients_is_refused_in_one_line(workdir):
    """A training step is one batch and one update (the module's written-out step)."""
    line = refused_without_torch(workdir, "train", "dataset=digits", "+trainer.accumulate_grad_batches=2")
    assert line.startswith("error: trainer.accumulate_grad_batches: ") and "dataset.batch_size" in line


def test_the_trainer_argument_list_is_lightnings():
    import inspect

    import pytorch_lightning as pl

    from experiments.settings import TRAINER_ARGUMENTS

    lightning = [name for name in inspect.signature(pl.Trainer.__init__).parameters if name != "self"]
    assert sorted(TRAINER_ARGUMENTS) == sorted(lightning)


def test_a_validation_split_that_leaves_no_training_images_is_refused_at_once(workdir):
    line = refused_without_torch(workdir, "train", "dataset=digits", "dataset.val_size=1500")
    assert line == (
        "error: dataset.val_size=1500 leaves no training images: digits has 1,500 for training and "
        "validation together; use at most 1,499"
    )


def test_the_built_in_sizes_are_the_datasets(tmp_path):
    from experiments.data import Digits
    from experiments.specs import TRAIN_IMAGES

    assert len(Digits("digits", batch_size=8, val_size=0).load()[0]) == TRAIN_IMAGES["digits"]


def test_a_data_dir_that_is_a_file_is_refused_at_once(workdir):
    (workdir / "datasets").write_text("not a folder")
    line = refused_without_torch(workdir, "train", "dataset=cifar10", EXPERIMENTS_DATA_DIR="datasets")
    assert line == (
        "error: dataset.data_dir (EXPERIMENTS_DATA_DIR): datasets is a file, not a folder; name a folder "
        "for the datasets"
    )


def test_a_checkpoint_of_another_net_is_refused_before_the_run_directory(cli, workdir):
    import torch

    from experiments.models import create_model

    resnet8 = create_model("resnet", num_classes=10, in_channels=1, image_size=8, depth=8)
    state = {f"model.{key}": value for key, value in resnet8.state_dict().items()}
    torch.save({"state_dict": state, "epoch": 0}, workdir / "resnet8.ckpt")
    result = cli("train", "dataset=digits", "arch=resnet", "arch.depth=14", "ckpt_path=resnet8.ckpt")
    line = result.error_line()
    assert result.status == 1 and line.startswith("error: ckpt_path: resnet8.ckpt does not fit resnet14: ")
    assert "missing" in line and len(line) < 200
    assert sorted(p.name for p in workdir.iterdir()) == ["home", "resnet8.ckpt"]


def test_a_misspelt_command_is_answered_with_the_nearest(cli):
    assert "unknown command 'trian'; did you mean 'train'? valid: " in cli("trian").error_line()


def test_report_out_naming_a_file_is_refused_naming_out(cli, workdir):
    (workdir / "run" / ".hydra").mkdir(parents=True)
    (workdir / "existing.txt").write_text("mine")
    result = cli("report", "run", "--out", "existing.txt", "--logger", "none")
    assert result.status == 1 and result.error_line() == (
        "error: --out: existing.txt is a file; --out must be a folder (the report's files go into it)"
    )
    assert (workdir / "existing.txt").read_text() == "mine"


def test_report_names_each_unreadable_run_on_the_terminal(cli, workdir):
    for name in ("one", "two"):
        (workdir / "runs" / name).mkdir(parents=True)
        (workdir / "runs" / name / "summary.json").write_text("{not json")
    result = cli("report", "runs", "--logger", "none")
    assert result.status == 0, result.err
    named = [line for line in result.err.splitlines() if "listed as unreadable" in line]
    assert [line.split(":")[0] for line in named] == [f"runs/{name}/summary.json" for name in ("one", "two")]


def a_run(root: Path, name: str, checkpoint: bool = True, **record: object) -> Path:
    """A run directory as training leaves one: .hydra/, summary.json, checkpoints/last.ckpt (its bytes are
    never read by a refusal)."""
    from experiments.record import RunRecord, write_record

    run = root / name
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text("arch: {name: resnet}\n")
    write_record(run / "summary.json", RunRecord(**{"status": "completed", "arch": "resnet", **record}))
    if checkpoint:
        (run / "checkpoints").mkdir()
        (run / "checkpoints" / "last.ckpt").write_bytes(b"PK not read")
    return run


def training_now(root: Path) -> Path:
    import json
    from dataclasses import asdict

    from experiments.rundir import LOCK_NAME, Holder

    run = a_run(root, "training", status="failed")  # what the record says until the run ends
    (run / LOCK_NAME).write_text(json.dumps(asdict(Holder.me())))  # held by this (live) process
    return run


WRONG_RUNS = {
    "training": ("lesion", training_now, "is still training (process "),
    "failed": ("lesion", lambda root: a_run(root, "f", status="failed"), "is a train run that ended failed"),
    "profile": ("lesion", lambda root: a_run(root, "p", command="profile"), "is a profile run that ended"),
    "no checkpoint": ("lesion", lambda root: a_run(root, "c", checkpoint=False), "has no checkpoints/"),
    "reuse of a resnet": (
        "reuse",
        lambda root: a_run(root, "r"),
        "is a resnet: feature reuse is a DenseNet's",
    ),
}


@pytest.mark.parametrize("case", list(WRONG_RUNS))
def test_an_analysis_of_what_is_no_finished_run_is_refused_without_torch(case, workdir):
    command, make, expected = WRONG_RUNS[case]
    run = make(workdir)
    line = refused_without_torch(workdir, command, str(run))
    assert line.startswith(f"error: {run} ") and expected in line


def test_a_checkpoint_that_cannot_be_written_is_named_with_why(tmp_path):
    import torch

    from experiments.checkpoints import AtomicCheckpointIO
    from experiments.errors import UserError
    from tests.test_resilience import files_capped_at

    path = tmp_path / "checkpoints" / "last.ckpt"
    good = {"epoch": 1, "weights": torch.ones(100_000)}  # 0.4 MB
    AtomicCheckpointIO().save_checkpoint(good, path)
    with files_capped_at(1_000_000), pytest.raises(UserError) as refused:
        AtomicCheckpointIO().save_checkpoint({"epoch": 2, "weights": torch.zeros(1_000_000)}, path)
    assert str(refused.value) == (
        f"could not write checkpoint {path}: file too large: this process may write files of at most "
        "1,000,000 bytes (ulimit -f) (the last one is whole)"
    )
    assert torch.equal(torch.load(path)["weights"], good["weights"])


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "mnist", "fashion_mnist", "svhn"])
def test_damaged_dataset_files_are_named_and_not_downloaded_again(name, tmp_path, monkeypatch):
    import socket

    from experiments.data import TorchvisionData
    from experiments.errors import UserError
    from tests.test_data import WRITERS

    WRITERS[name](tmp_path)  # the real layout, then every file's bytes replaced by random ones
    rng = np.random.default_rng(0)
    files = sorted(path for path in tmp_path.rglob("*") if path.is_file())
    for path in files:
        path.write_bytes(rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())

    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("the network was tried")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    data = TorchvisionData(name, str(tmp_path), batch_size=16, val_size=10)
    with pytest.raises(UserError) as refused:
        data.prepare_data()
    line = str(refused.value)
    damaged = line.split(": ")[1].split(" is here")[0]
    assert Path(damaged) in files and line.endswith("or put the right one there"), line
