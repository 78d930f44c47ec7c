"""Where the in-memory datasets come from: torchvision's files, scikit-learn's digits, random tensors."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchvision import datasets

from experiments.data.arrays import ArrayDataModule, Split
from experiments.errors import UserError
from experiments.specs import DATASETS, DIGITS_TEST_IMAGES

# name: (torchvision class, files a complete copy holds under data_dir); their shapes are specs.DATASETS'
TORCHVISION = {
    "cifar10": (datasets.CIFAR10, "cifar-10-batches-py/data_batch_1 ... test_batch"),
    "cifar100": (datasets.CIFAR100, "cifar-100-python/train, test"),
    "mnist": (datasets.MNIST, "MNIST/raw/train-images-idx3-ubyte ..."),
    "fashion_mnist": (datasets.FashionMNIST, "FashionMNIST/raw/train-images-idx3-ubyte ..."),
    "svhn": (datasets.SVHN, "train_32x32.mat, test_32x32.mat"),
}
DOWNLOAD_TIMEOUT_S = 30


def _as_split(dataset: torch.utils.data.Dataset) -> Split:
    images = torch.as_tensor(np.asarray(dataset.data))
    if images.ndim == 3:  # MNIST: (N, H, W)
        images = images[:, None]
    elif images.shape[-1] == 3:  # CIFAR: (N, H, W, C); SVHN is already (N, C, H, W)
        images = images.permute(0, 3, 1, 2)
    labels = dataset.labels if hasattr(dataset, "labels") else dataset.targets
    return Split(images.contiguous(), torch.as_tensor(np.asarray(labels), dtype=torch.long))


class TorchvisionData(ArrayDataModule):
    """CIFAR-10/100, MNIST, Fashion-MNIST, SVHN from torchvision, downloaded into `data_dir` if missing."""

    def __init__(self, name: str, data_dir: str, **kwargs) -> None:
        if name not in TORCHVISION:
            raise UserError(f"unknown torchvision dataset '{name}'; valid: {', '.join(TORCHVISION)}")
        super().__init__(name, **kwargs)
        self.data_dir = Path(data_dir)
        self.source, self.files = TORCHVISION[name]
        self.num_classes, self.in_channels, self.image_size = DATASETS[name]

    def _open(self, train: bool, download: bool = False) -> torch.utils.data.Dataset:
        if self.source is datasets.SVHN:
            return self.source(self.data_dir, split="train" if train else "test", download=download)
        return self.source(self.data_dir, train=train, download=download)

    def _missing(self, error: Exception) -> UserError:
        return UserError(
            f"{self.name} is not in {self.data_dir} ({self.files}) and could not be downloaded "
            f"({type(error).__name__}: {error}); put the files there, set dataset.data_dir, "
            "or use dataset=digits or dataset=synthetic offline"
        )

    def prepare_data(self) -> None:
        """Download what is missing (Lightning calls this on one process per node, before fit and test)."""
        if self.splits or self.loaded:
            return
        try:
            self.loaded = self.load()  # the files are here: setup splits them without reading them again
            return
        except UserError:
            if self._files_here():
                raise  # damaged, not missing: downloading would not mend them
        previous = socket.getdefaulttimeout()
        socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
        try:
            for train in (True, False):
                self._open(train, download=True)
        except Exception as error:
            raise self._missing(error) from None
        finally:
            socket.setdefaulttimeout(previous)

    def load(self) -> tuple[Split, Split]:
        try:
            return _as_split(self._open(train=True)), _as_split(self._open(train=False))
        except Exception as error:  # torchvision: "Dataset not found or corrupted.", or a parser's error
            if damaged := self._damaged():
                raise UserError(
                    f"{self.name}: {damaged} is here but unreadable (not the file torchvision knows); delete "
                    "it to have it downloaded again, or put the right one there"
                ) from None
            raise self._missing(error) from None

    def _known_files(self) -> list[tuple[Path, str | None]]:
        """The files a complete copy holds, with the MD5 torchvision knows them by (MNIST's unpacked files
        have none: they are checked by reading them)."""
        source = self.source
        if source is datasets.SVHN:
            return [(self.data_dir / name, md5) for _, name, md5 in source.split_list.values()]
        if hasattr(source, "train_list"):  # CIFAR-10 and CIFAR-100
            files = source.train_list + source.test_list
            return [(self.data_dir / source.base_folder / name, md5) for name, md5 in files]
        raw = self.data_dir / source.__name__ / "raw"
        return [(raw / Path(url).stem, None) for url, _ in source.resources]

    def _files_here(self) -> bool:
        return any(path.is_file() for path, _ in self._known_files())

    def _damaged(self) -> Path | None:
        """The first of the dataset's files that is here but is not what torchvision reads."""
        from torchvision.datasets.mnist import read_sn3_pascalvincent_tensor
        from torchvision.datasets.utils import check_integrity

        for path, md5 in self._known_files():
            if not path.is_file():
                continue
            if md5 is not None and not check_integrity(str(path), md5):
                return path
            if md5 is None:
                try:
                    read_sn3_pascalvincent_tensor(str(path), strict=False)
                except Exception:
                    return path
        return None


class Digits(ArrayDataModule):
    """scikit-learn's 8x8 handwritten digits: 1,797 images shipped with scikit-learn, offline and real."""

    num_classes, in_channels, image_size = DATASETS["digits"]
    TEST_SIZE = DIGITS_TEST_IMAGES

    def load(self) -> tuple[Split, Split]:
        from sklearn.datasets import load_digits

        digits = load_digits()
        images = torch.as_tensor(digits.images * (255 / 16)).round().to(torch.uint8)[:, None]
        everything = Split(images, torch.as_tensor(digits.target, dtype=torch.long))
        # The test split is the same for every seed, so test errors of different seeds compare.
        order = torch.randperm(len(everything), generator=torch.Generator().manual_seed(0))
        return everything.take(order[self.TEST_SIZE :]), everything.take(order[: self.TEST_SIZE])


class Synthetic(ArrayDataModule):
    """Random images and labels of any shape, generated once (seeded) and held in memory."""

    def __init__(
        self,
        name: str,
        image_size: int = 32,
        channels: int = 3,
        num_classes: int = 10,
        train_size: int = 1024,
        val_size: int = 256,
        test_size: int = 256,
        **kwargs,
    ) -> None:
        super().__init__(name, val_size=val_size, **kwargs)
        if min(image_size, channels, num_classes, train_size, test_size) < 1:
            raise UserError(
                "dataset image_size, channels, num_classes, train_size and test_size must be >= 1"
            )
        self.image_size, self.in_channels, self.num_classes = image_size, channels, num_classes
        self.train_size, self.test_size = train_size, test_size

    @classmethod
    def like(cls, datamodule: Any, images: int, seed: int) -> Synthetic:
        """Random images and labels of `datamodule`'s shape, classes and batch size, `images` of them to
        train on (profile and probe measure nets on data they need not load or download)."""
        return cls(
            "synthetic",
            image_size=datamodule.image_size,
            channels=datamodule.in_channels,
            num_classes=datamodule.num_classes,
            train_size=images,
            val_size=0,
            test_size=1,
            batch_size=datamodule.batch_size,
            seed=seed,
        )

    def load(self) -> tuple[Split, Split]:
        generator = torch.Generator().manual_seed(self.seed)
        n = self.train_size + self.val_size + self.test_size
        shape = (n, self.in_channels, self.image_size, self.image_size)
        everything = Split(
            torch.randint(0, 256, shape, dtype=torch.uint8, generator=generator),
            torch.randint(0, self.num_classes, (n,), generator=generator),
        )
        cut = self.train_size + self.val_size
        return everything.take(torch.arange(cut)), everything.take(torch.arange(cut, n))
