"""Data modules on real files: torchvision's on-disk formats written by the test, digits, synthetic."""

from __future__ import annotations

import os
import pickle
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from torchvision import datasets

from experiments.data import Digits, Synthetic, TensorBatches, TorchvisionData
from experiments.data.arrays import Split, random_crop, random_flip

TRAIN, TEST = 60, 20


def write_cifar(root: Path, name: str) -> None:
    """CIFAR's python pickles: uint8 rows of 3072 (RGB planes) and labels."""
    rng = np.random.default_rng(0)
    folder, label_key, classes = {
        "cifar10": ("cifar-10-batches-py", "labels", 10),
        "cifar100": ("cifar-100-python", "fine_labels", 100),
    }[name]
    (root / folder).mkdir(parents=True)
    files = (
        [(f"data_batch_{i}", TRAIN // 5) for i in range(1, 6)] + [("test_batch", TEST)]
        if name == "cifar10"
        else [("train", TRAIN), ("test", TEST)]
    )
    for file, n in files:
        batch = {
            "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            label_key: rng.integers(0, classes, n).tolist(),
        }
        (root / folder / file).write_bytes(pickle.dumps(batch))
    meta_file, meta_key = (
        ("batches.meta", "label_names") if name == "cifar10" else ("meta", "fine_label_names")
    )
    (root / folder / meta_file).write_bytes(pickle.dumps({meta_key: [f"c{i}" for i in range(classes)]}))


def write_mnist(root: Path, folder: str) -> None:
    """MNIST's idx files: a big-endian header (magic, sizes) and raw uint8 pixels / labels."""
    rng = np.random.default_rng(0)
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    for prefix, n in (("train", TRAIN), ("t10k", TEST)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        header = np.array([0x803, n, 28, 28], dtype=">i4").tobytes()
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(header + images.tobytes())
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(
            np.array([0x801, n], dtype=">i4").tobytes() + labels.tobytes()
        )


def write_svhn(root: Path) -> None:
    """SVHN's .mat files: X as (32, 32, 3, N), y as (N, 1) with the digit 0 stored as 10."""
    rng = np.random.default_rng(0)
    for split, n in (("train", TRAIN), ("test", TEST)):
        X = rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)
        scipy.io.savemat(root / f"{split}_32x32.mat", {"X": X, "y": rng.integers(1, 11, (n, 1))})


WRITERS = {
    "cifar10": lambda root: write_cifar(root, "cifar10"),
    "cifar100": lambda root: write_cifar(root, "cifar100"),
    "mnist": lambda root: write_mnist(root, "MNIST"),
    "fashion_mnist": lambda root: write_mnist(root, "FashionMNIST"),
    "svhn": write_svhn,
}


@pytest.fixture
def skip_md5(monkeypatch):
    """The files above are not the real ones: skip torchvision's md5 checks (in the test, not the product)."""
    for cls in (datasets.CIFAR10, datasets.CIFAR100, datasets.SVHN):
        monkeypatch.setattr(cls, "_check_integrity", lambda self: True)
    monkeypatch.setattr(datasets.cifar, "check_integrity", lambda path, md5=None: Path(path).exists())


@pytest.mark.parametrize("name", list(WRITERS))
def test_torchvision_datasets_load_from_their_files(name, tmp_path, skip_md5):
    WRITERS[name](tmp_path)
    data = TorchvisionData(name, str(tmp_path), batch_size=16, val_size=10, crop_padding=4, flip=True)
    reads, load = [], data.load
    data.load = lambda: reads.append(1) or load()
    data.prepare_data()  # files present: no download attempted
    data.setup()
    data.prepare_data()  # as Lightning does again before testing
    assert len(reads) == 1 and data.loaded is None  # setup split what prepare_data read; nothing kept twice
    assert {k: len(v) for k, v in data.splits.items()} == {"train": TRAIN - 10, "val": 10, "test": TEST}
    images, labels = next(iter(data.batches("train", torch.device("cpu"))))
    assert images.shape == (16, data.in_channels, data.image_size, data.image_size)
    assert images.dtype == torch.float32 and labels.dtype == torch.int64
    assert labels.min() >= 0 and labels.max() < data.num_classes
    # normalised with the training split's own statistics
    everything = torch.cat(
        [x for x, _ in data.batches("val", torch.device("cpu"))]
        + [x for x, _ in TensorBatches(data.splits["train"], 64, data.mean, data.std, train=False)]
    )
    assert abs(everything.mean().item()) < 0.2


def test_val_split_is_drawn_by_seed(tmp_path, skip_md5):
    write_cifar(tmp_path, "cifar10")

    def val_labels(seed: int) -> list[int]:
        data = TorchvisionData("cifar10", str(tmp_path), batch_size=8, val_size=10, seed=seed)
        data.setup()
        return data.splits["val"].images.flatten(1)[:, 0].tolist()

    assert val_labels(0) == val_labels(0) != val_labels(1)


def test_digits_split_and_batches():
    data = Digits("digits", batch_size=64, val_size=150)
    data.setup()
    assert {k: len(v) for k, v in data.splits.items()} == {"train": 1350, "val": 150, "test": 297}
    images, _ = next(iter(data.batches("train", torch.device("cpu"))))
    assert images.shape == (64, 1, 8, 8)
    other_seed = Digits("digits", batch_size=64, val_size=150, seed=1)
    other_seed.setup()
    assert torch.equal(other_seed.splits["test"].images, data.splits["test"].images)


def test_synthetic_has_any_shape():
    data = Synthetic(
        "synthetic",
        image_size=20,
        channels=5,
        num_classes=3,
        train_size=40,
        val_size=8,
        test_size=8,
        batch_size=16,
    )
    data.setup()
    images, labels = next(iter(data.batches("train", torch.device("cpu"))))
    assert images.shape == (16, 5, 20, 20) and labels.max() < 3


def test_batches_are_seeded_per_epoch_and_sharded_per_rank():
    split = Split(torch.arange(100, dtype=torch.uint8).view(100, 1, 1, 1), torch.arange(100))
    mean, std = torch.zeros(1), torch.ones(1)

    def order(epoch: int, rank: int = 0, world: int = 1) -> list[int]:
        batches = TensorBatches(split, 32, mean, std, train=True, seed=3, rank=rank, world_size=world)
        batches.sampler.set_epoch(epoch)
        return torch.cat([labels for _, labels in batches]).tolist()

    assert order(0) == order(0) != order(1)
    assert sorted(order(0)) == list(range(100))
    halves = order(0, 0, 2) + order(0, 1, 2)
    assert sorted(halves) == list(range(100))
    assert len(TensorBatches(split, 32, mean, std, train=True)) == 4


def crop_and_flip_histogram(outputs: torch.Tensor, source: torch.Tensor, padding: int) -> Counter:
    """How often each (row offset, column offset, flipped) produced `outputs` from `source`."""
    padded = torch.nn.functional.pad(source, (padding,) * 4)
    size = source.shape[-1]
    candidates = {}
    for dy in range(2 * padding + 1):
        for dx in range(2 * padding + 1):
            crop = padded[:, dy : dy + size, dx : dx + size]
            candidates[crop.numpy().tobytes()] = (dy, dx, False)
            candidates[crop.flip(-1).numpy().tobytes()] = (dy, dx, True)
    return Counter(candidates[image.numpy().tobytes()] for image in outputs)


def test_batched_augmentation_matches_torchvisions_distribution():
    """The GPU-resident path (batched crops and flips on the dataset's device, here the CPU) draws crops and
    flips as the DataLoader path's torchvision transforms do: each of the 81 offsets and both flips alike."""
    from torchvision import transforms

    n, padding = 8100, 4
    source = torch.randperm(3 * 32 * 32).remainder(251).to(torch.uint8).view(3, 32, 32)
    generator = torch.Generator().manual_seed(0)
    batched = random_flip(random_crop(source.expand(n, -1, -1, -1), padding, generator), generator)
    torch.manual_seed(0)
    per_image = transforms.Compose(
        [transforms.RandomCrop(32, padding=padding), transforms.RandomHorizontalFlip()]
    )
    reference = torch.stack([per_image(source) for _ in range(n)])

    for outputs in (batched, reference):
        counts = crop_and_flip_histogram(outputs, source, padding)
        assert len(counts) == 81 * 2  # every offset, flipped and not
        offsets = Counter()
        for (dy, dx, _), count in counts.items():
            offsets[dy, dx] += count
        expected = n / 81
        chi_square = sum((c - expected) ** 2 / expected for c in offsets.values())
        assert chi_square < 130  # 80 degrees of freedom: p < 0.001 above 124.8
        flipped = sum(c for (_, _, f), c in counts.items() if f) / n
        assert abs(flipped - 0.5) < 0.03


def make_folder(root: Path, splits: dict[str, list[str]], size: int = 12) -> None:
    """An ImageFolder of PNGs: root/<split>/<class>/<i>.png, each class's pixels a shade of its own."""
    from PIL import Image

    for split, classes in splits.items():
        for shade, name in enumerate(classes):
            (root / split / name).mkdir(parents=True)
            for i in range(3):
                Image.new("RGB", (size, size), (40 * shade, 10 * i, 0)).save(root / split / name / f"{i}.png")


def test_imagefolder_numbers_validation_classes_as_training_does(tmp_path):
    from experiments.data import ImageFolderData

    make_folder(tmp_path / "pets", {"train": ["bird", "cat", "dog"], "val": ["dog"]})
    data = ImageFolderData("imagefolder", str(tmp_path / "pets"), image_size=8, batch_size=4, num_workers=0)
    assert data.num_classes == 3
    _, labels = next(iter(data.val_dataloader()))
    assert labels.tolist() == [2, 2, 2]  # dog is class 2 of training's, not class 0 of val's one folder


def test_imagefolder_starts_one_worker_per_cpu_the_process_may_use(tmp_path):
    from experiments.data import ImageFolderData

    make_folder(tmp_path / "pets", {"train": ["cat", "dog"], "val": ["cat", "dog"]})
    allowed = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(allowed)})  # as SLURM binds a one-CPU job's task
    try:
        data = ImageFolderData("imagefolder", str(tmp_path / "pets"), image_size=8, batch_size=4)
    finally:
        os.sched_setaffinity(0, allowed)
    assert data.num_workers == 1 and os.cpu_count() > 1


def train_on_folder(path: str) -> tuple[str, ...]:
    """A one-epoch ResNet-8 on the image folder at `path`, its images at 8 px, read in the main process."""
    return (
        "train",
        "dataset=imagefolder",
        f"dataset.path={path}",
        "dataset.image_size=8",
        "dataset.num_workers=0",
        "arch=resnet",
        "arch.depth=8",
        "trainer.max_epochs=1",
        "logger=none",
    )


@pytest.mark.parametrize(
    ("splits", "expected"),
    [
        ({"train": ["cat"], "val": ["cat"]}, "holds 1 class folder(s); a classifier needs at least 2"),
        ({"train": ["cat", "dog"], "val": ["cat", "cow"]}, "has classes the training folder has not (cow)"),
    ],
)
def test_imagefolder_refuses_what_cannot_train_a_classifier(splits, expected, cli, workdir):
    make_folder(workdir / "pets", splits)
    result = cli(*train_on_folder("pets"))
    assert result.status == 1 and expected in result.error_line()


def test_an_unreadable_image_is_one_line_naming_it_and_a_tilde_path_works(cli, workdir):
    make_folder(workdir / "home" / "pets", {"train": ["cat", "dog"], "val": ["cat", "dog"]})
    broken = workdir / "home" / "pets" / "train" / "dog" / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not really a JPEG" * 40)
    command = train_on_folder("~/pets")
    result = cli(*command)
    assert result.status == 1
    line = result.error_line()
    assert f"cannot read image {broken}" in line and len(line) < 300
    broken.unlink()
    assert cli(*command).status == 0
