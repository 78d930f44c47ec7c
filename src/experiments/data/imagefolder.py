"""Your own images, too many to hold in memory: torchvision's ImageFolder through DataLoader workers.

PATH/train/<class>/*.jpg, PATH/val/<class>/..., and PATH/test/... if there (else val serves as the test
split). Classes are numbered by the training folder's: validation and test folders may hold fewer of them,
never others. An image that cannot be read stops the run with one line naming it: found before training when
the folders are small enough to look at every image, or when the loader reaches it.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

from experiments.errors import UserError
from experiments.settings import check_imagefolder_root

log = logging.getLogger(__name__)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CHECK_EVERY_IMAGE_UP_TO = 5000  # images in a split; above this, each is checked when the loader reaches it


class _Folder(datasets.ImageFolder):
    """An ImageFolder numbering its classes as `classes` says (the training folder's), and naming the file
    of an image it cannot read."""

    def __init__(self, root: Path, classes: dict[str, int] | None, transform: Any) -> None:
        self.fixed = classes
        super().__init__(str(root), transform=transform)

    def find_classes(self, directory: str) -> tuple[list[str], dict[str, int]]:
        names, mapping = super().find_classes(directory)
        if self.fixed is None:
            return names, mapping
        if strangers := sorted(set(names) - set(self.fixed)):
            raise UserError(
                f"dataset.path: {directory} has classes the training folder has not "
                f"({', '.join(strangers[:3])}); validation and test classes must be training classes"
            )
        return names, {name: self.fixed[name] for name in names}

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        try:
            return super().__getitem__(index)
        except Exception as error:
            raise _unreadable(self.samples[index][0], error) from None


def check_images(folder: _Folder) -> None:
    """Open each image's header: a file that is no image stops the run now, not hours into it."""
    if len(folder) > CHECK_EVERY_IMAGE_UP_TO:
        return
    for path, _ in folder.samples:
        try:
            with Image.open(path) as image:
                image.verify()
        except Exception as error:
            raise _unreadable(path, error) from None


def _unreadable(path: str, error: Exception) -> UserError:
    return UserError(f"dataset.path: cannot read image {path} ({type(error).__name__}: {error})")


class ImageFolderData(pl.LightningDataModule):
    """Train, val (and test) image folders with one folder per class, ImageNet-normalised."""

    in_channels = 3

    def __init__(
        self,
        name: str,
        path: str,
        image_size: int = 224,
        batch_size: int = 64,
        num_workers: int | str = "auto",
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.root = Path(path).expanduser()
        check_imagefolder_root(self.root)
        self.name, self.image_size, self.batch_size, self.seed = name, image_size, batch_size, seed
        # auto: the CPUs this process may run on (a SLURM job's, where SLURM binds its tasks), at most 8
        usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        self.num_workers = min(8, usable) if num_workers == "auto" else int(num_workers)
        self.classes = _Folder(self.root / "train", None, None).class_to_idx
        if len(self.classes) < 2:
            raise UserError(
                f"dataset.path: {self.root / 'train'} holds {len(self.classes)} class folder(s); a "
                "classifier needs at least 2"
            )
        self.num_classes = len(self.classes)
        normalize = transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)
        self.train_transform = transforms.Compose(
            [
                transforms.RandomResizedCrop(image_size),
                transforms.RandomHorizontalFlip(),
                transforms.ToTensor(),
                normalize,
            ]
        )
        self.eval_transform = transforms.Compose(
            [
                transforms.Resize(round(image_size / 0.875)),
                transforms.CenterCrop(image_size),
                transforms.ToTensor(),
                normalize,
            ]
        )

    def _split(self, folder: str) -> Path:
        if folder == "test" and not (self.root / "test").is_dir():
            log.warning(f"{self.root} has no test/ folder: the test error is measured on val/")
            return self.root / "val"
        return self.root / folder

    def _loader(self, folder: str, train: bool) -> DataLoader:
        dataset = _Folder(
            self._split(folder), self.classes, self.train_transform if train else self.eval_transform
        )
        check_images(dataset)
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=train,
            num_workers=self.num_workers,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=self.num_workers > 0,
            generator=torch.Generator().manual_seed(self.seed),
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", train=False)
