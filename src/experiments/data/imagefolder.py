"""Your own images, too many to hold in memory: torchvision's ImageFolder through DataLoader workers.

PATH/train/<class>/*.jpg, PATH/val/<class>/..., and PATH/test/... if there (else val serves as the test
split). Classes are numbered by the training folder's: validation and test folders may hold fewer of them,
never others. An image that cannot be read stops the run with one line naming it: found before training when
the folders are small enough to look at every image, or when the loader reaches it.

Each image file is one sample of its class however many paths reach it (symbolic links are followed to the
real file); a link back into its own folder is named in a warning and not followed. A file in two classes,
or in the training split and a held-out one, is named in a warning: it is kept, as the folders say.
16-bit greyscale images are scaled to 8 bits by one fixed factor (65535 -> 255); an image of a mode that
would lose its values on the way to RGB (32-bit integer or float) stops the run with one line naming it.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision import datasets, transforms
from torchvision.datasets.folder import IMG_EXTENSIONS

from experiments.errors import UserError
from experiments.preflight import check_imagefolder_root

log = logging.getLogger(__name__)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CHECK_EVERY_IMAGE_UP_TO = 5000  # images in a split; above this, each is checked when the loader reaches it
SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")  # greyscale, 0 to 65535
SIXTEEN_TO_EIGHT = 65535 / 255  # 257: one factor for every image, so a shade means the same in each
# modes PIL turns into RGB keeping what each pixel says (alpha aside); 16-bit ones are scaled first
TO_RGB_KEEPS = ("1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBX", "RGBa", "CMYK", "YCbCr")
_warned: set[str] = set()  # each warning once per process: the folders are walked again per split and epoch


def _warn_once(line: str) -> None:
    if line not in _warned:
        _warned.add(line)
        log.warning(line)


class _Folder(datasets.ImageFolder):
    """An ImageFolder numbering its classes as `classes` says (the training folder's), holding each image
    file once per class (`real_paths[i]` is sample i's file), and naming the file of an image it cannot
    read."""

    def __init__(self, root: Path, classes: dict[str, int] | None, transform: Any) -> None:
        self.fixed = classes
        self.real_paths: list[str] = []
        super().__init__(str(root), transform=transform, loader=load_image)

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

    def make_dataset(self, directory: str, class_to_idx: dict[str, int], *_: Any, **__: Any) -> list:
        samples: list[tuple[str, int]] = []
        class_of: dict[str, str] = {}  # real path: the first class holding it
        in_two: list[str] = []
        for name in sorted(class_to_idx):
            found = _images_under(Path(directory) / name)
            if not found:
                raise UserError(
                    f"dataset.path: class folder {Path(directory) / name} holds no images "
                    f"({', '.join(IMG_EXTENSIONS)}); each class needs at least one"
                )
            for real, path in found.items():
                if class_of.setdefault(real, name) != name:
                    in_two.append(f"{real} in {class_of[real]} and {name}")
                samples.append((path, class_to_idx[name]))
                self.real_paths.append(real)
        if in_two:
            _warn_once(
                f"dataset.path: {len(in_two)} image(s) under {directory} are in two classes (first: "
                f"{in_two[0]}); each is kept in both"
            )
        return samples

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        try:
            return super().__getitem__(index)
        except UserError:
            raise
        except Exception as error:
            raise _unreadable(self.samples[index][0], error) from None


def _images_under(class_dir: Path) -> dict[str, str]:
    """Each image file under `class_dir` (links followed) once, by its real path: {real path: the first
    path reaching it}, in torchvision's order. A link back into a folder above it is warned of, not
    followed (else the walk goes round until the path is too long, each image counted at every turn)."""
    found: list[tuple[str, str]] = []
    folders = [(str(class_dir), os.path.realpath(class_dir), frozenset[str]())]
    while folders:
        folder, real, above = folders.pop()
        with os.scandir(folder) as entries:
            for entry in entries:
                linked = entry.is_symlink()
                target = os.path.realpath(entry.path) if linked else os.path.join(real, entry.name)
                if entry.is_dir():
                    if target in above or target == real:
                        _warn_once(f"dataset.path: {entry.path} links back to {target}; not followed")
                    else:
                        folders.append((entry.path, target, above | {real}))
                elif entry.is_file() and entry.name.lower().endswith(IMG_EXTENSIONS):
                    found.append((entry.path, target))
    found.sort(key=lambda item: (os.path.dirname(item[0]), os.path.basename(item[0])))
    once: dict[str, str] = {}
    for path, real in found:
        once.setdefault(real, path)
    return once


@contextmanager
def _opened(path: str) -> Iterator[Image.Image]:
    """The image at `path`, with PIL's warning of a very large image turned into a line naming it."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", Image.DecompressionBombWarning)
        image = Image.open(path)
    for warning in caught:
        if not issubclass(warning.category, Image.DecompressionBombWarning):
            warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
        else:
            _warn_once(
                f"dataset.path: {path} is {image.width}x{image.height} pixels, over PIL's "
                f"{Image.MAX_IMAGE_PIXELS:,}-pixel guard against decompression bombs; read anyway"
            )
    with image:
        yield image


def load_image(path: str) -> Image.Image:
    """The image at `path` as 8-bit RGB: 16-bit greyscale scaled by one fixed factor, never clipped."""
    with _opened(path) as image:
        _check_mode(path, image)
        if image.mode in SIXTEEN_BIT:
            pixels = np.asarray(image, dtype=np.float32) / SIXTEEN_TO_EIGHT
            return Image.fromarray(pixels.round().astype(np.uint8)).convert("RGB")
        return image.convert("RGB")


def _check_mode(path: str, image: Image.Image) -> None:
    if image.mode not in TO_RGB_KEEPS + SIXTEEN_BIT:
        raise UserError(
            f"dataset.path: {path} is a PIL mode {image.mode} image (32-bit integer or float pixels, or "
            "another kind RGB cannot hold); convert it to 8- or 16-bit greyscale or RGB"
        )


def check_images(folder: _Folder) -> None:
    """Open each image's header: a file that is no image stops the run now, not hours into it."""
    if len(folder) > CHECK_EVERY_IMAGE_UP_TO:
        return
    for path, _ in folder.samples:
        try:
            with _opened(path) as image:
                _check_mode(path, image)
                image.verify()
        except UserError:
            raise
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
        training = _Folder(self.root / "train", None, None)
        self.classes, self.training_images = training.class_to_idx, set(training.real_paths)
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
        if not train:
            self._warn_of_leakage(dataset)
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=train,
            num_workers=self.num_workers,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=self.num_workers > 0,
            generator=torch.Generator().manual_seed(self.seed),
        )

    def _warn_of_leakage(self, held_out: _Folder) -> None:
        """A held-out image that is also a training image measures memory, not generalisation: say so."""
        shared = [real for real in held_out.real_paths if real in self.training_images]
        if shared:
            _warn_once(
                f"dataset.path: {len(shared)} image(s) of {held_out.root} are training images too (first: "
                f"{shared[0]}); its error is measured partly on images the net trained on"
            )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", train=False)
