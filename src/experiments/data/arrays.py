"""Datasets held in memory as uint8 tensors, batched, augmented and normalised on the tensors' device.

CIFAR, MNIST, SVHN and digits fit in memory (CIFAR-10 is 150 MB as uint8), so batches are cut from one
tensor with no DataLoader workers and no per-image Python: random crops and flips are done for the whole
batch at once. On a GPU the whole dataset lives in device memory, as the fastest CIFAR trainers do.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch.utils.data import DistributedSampler

from experiments.errors import UserError


@dataclass
class Split:
    images: torch.Tensor  # uint8, (N, C, H, W)
    labels: torch.Tensor  # int64, (N,)

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, index: torch.Tensor) -> Split:
        return Split(self.images[index], self.labels[index])

    def to(self, device: torch.device) -> Split:
        return Split(self.images.to(device), self.labels.to(device))


def random_crop(images: torch.Tensor, padding: int, generator: torch.Generator) -> torch.Tensor:
    """Zero-pad by `padding` and crop back to size at a random offset per image (torchvision's RandomCrop)."""
    n, c, h, w = images.shape
    padded = F.pad(images, (padding,) * 4)
    dy, dx = torch.randint(0, 2 * padding + 1, (2, n, 1), generator=generator, device=images.device)
    rows = (dy + torch.arange(h, device=images.device))[:, None, :, None]
    cols = (dx + torch.arange(w, device=images.device))[:, None, None, :]
    batch = torch.arange(n, device=images.device)[:, None, None, None]
    channel = torch.arange(c, device=images.device)[None, :, None, None]
    return padded[batch, channel, rows, cols]


def random_flip(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Mirror each image left-right with probability 1/2 (torchvision's RandomHorizontalFlip)."""
    flip = torch.rand(len(images), generator=generator, device=images.device) < 0.5
    return torch.where(flip[:, None, None, None], images.flip(-1), images)


def channel_stats(images: torch.Tensor, chunk: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and standard deviation of uint8 images, as fractions of 255, a chunk at a time
    (a float copy of all of CIFAR's training images would take 550 MB)."""
    total = torch.zeros(images.shape[1], dtype=torch.float64)
    squares = torch.zeros_like(total)
    for part in images.split(chunk):
        pixels = part.transpose(0, 1).flatten(1).double() / 255
        total += pixels.sum(1)
        squares += pixels.square().sum(1)
    count = images.numel() / images.shape[1]
    mean = total / count
    std = (squares / count - mean.square()).clamp_min(0).sqrt()
    return mean.float(), std.float().clamp_min(1e-3)


class TensorBatches:
    """Batches of one in-memory split: (normalised float images, labels), on the split's device.

    `sampler` is a DistributedSampler, so the order is seeded per epoch (Lightning calls its `set_epoch`)
    and each DDP rank gets its own shard.
    """

    batch_sampler = None  # Lightning inspects DataLoader-like objects for one

    def __init__(
        self,
        split: Split,
        batch_size: int,
        mean: torch.Tensor,
        std: torch.Tensor,
        *,
        train: bool,
        crop_padding: int = 0,
        flip: bool = False,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.split, self.batch_size = split, batch_size
        self.train, self.crop_padding, self.flip, self.seed = train, crop_padding, flip, seed
        device = split.images.device
        self.scale = (1 / (255 * std)).view(1, -1, 1, 1).to(device)
        self.shift = (-mean / std).view(1, -1, 1, 1).to(device)
        self.sampler = DistributedSampler(split.labels, world_size, rank, shuffle=train, seed=seed)

    def __len__(self) -> int:
        return -(-len(self.sampler) // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        device = self.split.images.device
        order = torch.tensor(list(self.sampler), device=device)
        generator = torch.Generator(device).manual_seed(self.seed * 100_003 + self.sampler.epoch)
        for index in order.split(self.batch_size):
            images = self.split.images[index]
            if self.train and self.crop_padding:
                images = random_crop(images, self.crop_padding, generator)
            if self.train and self.flip:
                images = random_flip(images, generator)
            yield images.float() * self.scale + self.shift, self.split.labels[index]


class ArrayDataModule(pl.LightningDataModule):
    """A dataset held in memory; subclasses say what it is (`num_classes`, ...) and load its arrays."""

    num_classes: int
    in_channels: int
    image_size: int

    def __init__(
        self,
        name: str,
        batch_size: int,
        val_size: int,
        crop_padding: int = 0,
        flip: bool = False,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if not isinstance(batch_size, int) or batch_size < 1:
            raise UserError(f"dataset.batch_size must be a positive integer, got {batch_size!r}")
        if not isinstance(val_size, int) or val_size < 0:
            raise UserError(
                f"dataset.val_size must be an integer >= 0 (0: no validation split), got {val_size!r}"
            )
        self.name, self.batch_size, self.val_size = name, batch_size, val_size
        self.crop_padding, self.flip, self.seed = crop_padding, flip, seed
        self.splits: dict[str, Split] = {}
        self.loaded: tuple[Split, Split] | None = None  # what prepare_data read, for setup to split

    def load(self) -> tuple[Split, Split]:
        """The full training set (train + val) and the test set."""
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        train_full, test = self.loaded or self.load()
        self.loaded = None
        if self.val_size >= len(train_full):
            raise UserError(
                f"dataset.val_size={self.val_size} leaves no training images ({self.name} has "
                f"{len(train_full)} for train and val)"
            )
        order = torch.randperm(len(train_full), generator=torch.Generator().manual_seed(self.seed))
        self.splits = {
            "train": train_full.take(order[self.val_size :]),
            "val": train_full.take(order[: self.val_size]),
            "test": test,
        }
        self.mean, self.std = channel_stats(self.splits["train"].images)

    def batches(self, split: str, device: torch.device, rank: int = 0, world_size: int = 1) -> TensorBatches:
        """The batches of `split` ("train", "val", "test"), with the split moved to `device` once."""
        if self.splits[split].images.device != device:
            self.splits[split] = self.splits[split].to(device)
        return TensorBatches(
            self.splits[split],
            self.batch_size,
            self.mean,
            self.std,
            train=split == "train",
            crop_padding=self.crop_padding,
            flip=self.flip,
            seed=self.seed,
            rank=rank,
            world_size=world_size,
        )

    def _loader(self, split: str) -> TensorBatches:
        trainer = self.trainer
        return self.batches(split, trainer.strategy.root_device, trainer.global_rank, trainer.world_size)

    def train_dataloader(self) -> TensorBatches:
        return self._loader("train")

    def val_dataloader(self) -> TensorBatches | list:
        # no validation split (val_size 0, as Huang et al. train on all 50k images): no validation loop
        return self._loader("val") if self.val_size else []

    def test_dataloader(self) -> TensorBatches:
        return self._loader("test")
