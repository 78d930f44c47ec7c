"""Your own images, too many to hold in memory: torchvision's ImageFolder through DataLoader workers."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

from experiments.errors import UserError

log = logging.getLogger(__name__)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class ImageFolderData(pl.LightningDataModule):
    """`path/train/<class>/*.jpg`, `path/val/<class>/...`, and `path/test/...` if there (else val serves)."""

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
        self.root = Path(path)
        for folder in ("train", "val"):
            if not (self.root / folder).is_dir():
                raise UserError(
                    f"dataset.path: {self.root / folder} is not a folder; imagefolder needs "
                    "PATH/train/<class>/ and PATH/val/<class>/ image folders"
                )
        if batch_size < 1:
            raise UserError(f"dataset.batch_size must be a positive integer, got {batch_size}")
        self.name, self.image_size, self.batch_size, self.seed = name, image_size, batch_size, seed
        self.num_workers = min(8, os.cpu_count() or 1) if num_workers == "auto" else int(num_workers)
        self.num_classes = len(datasets.ImageFolder(self.root / "train").classes)
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

    def _loader(self, folder: str, train: bool) -> DataLoader:
        if folder == "test" and not (self.root / "test").is_dir():
            log.warning(f"{self.root} has no test/ folder: the test error is measured on val/")
            folder = "val"
        dataset = datasets.ImageFolder(
            self.root / folder, transform=self.train_transform if train else self.eval_transform
        )
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
