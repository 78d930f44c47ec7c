"""LightningDataModules. Each exposes `name`, `num_classes`, `in_channels` and `image_size` before setup."""

from experiments.data.arrays import ArrayDataModule, TensorBatches
from experiments.data.imagefolder import ImageFolderData
from experiments.data.sources import Digits, Synthetic, TorchvisionData

__all__ = ["ArrayDataModule", "Digits", "ImageFolderData", "Synthetic", "TensorBatches", "TorchvisionData"]
