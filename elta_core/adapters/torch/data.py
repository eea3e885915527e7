"""torch datasets over a :class:`~elta_core.data.LabelTable`, with the usual IAA transforms."""

from __future__ import annotations

import os

import warnings
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from elta_core.data.labels import LabelTable

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


class UnreadableImageError(OSError):
    """An image file that is missing or cannot be decoded; the message names the file."""


def iaa_transforms(train: bool, image_size: int = 224, resize: int | None = None, eval_crop: bool = True) -> Callable:
    """Resize to ``resize`` x ``resize`` (default 8/7 of ``image_size``), then a random crop of
    ``image_size`` and a horizontal flip (train) or a centre crop (evaluation); with
    ``eval_crop=False`` evaluation resizes straight to ``image_size`` (the authors' test
    transform). Then ImageNet normalisation."""
    from torchvision import transforms

    side = resize or image_size * 8 // 7
    if side < image_size:
        raise ValueError(f"resize: expected a side >= image_size ({image_size}), got {side}")
    if train:
        steps = [transforms.Resize((side, side)), transforms.RandomCrop(image_size), transforms.RandomHorizontalFlip()]
    elif eval_crop:
        steps = [transforms.Resize((side, side)), transforms.CenterCrop(image_size)]
    else:
        steps = [transforms.Resize((image_size, image_size))]
    return transforms.Compose([*steps, transforms.ToTensor(), transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


def open_image(path: str):
    """The image at ``path`` as RGB, turned upright as its EXIF orientation says (a phone
    stores a portrait photo sideways and says so; for aesthetics the orientation is part
    of the label), or :class:`UnreadableImageError` naming the file."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    if not Path(path).is_file():
        raise UnreadableImageError(f"image: no such file: {path} (is --images the folder the label file's names are "
                                   "relative to? --skip-unreadable drops missing and corrupt images)")
    try:
        with Image.open(path) as image:
            image.load()
            upright = ImageOps.exif_transpose(image)
            if upright.mode.startswith("I"):  # 16-bit (or 32-bit integer) grayscale: convert("RGB") would clip it
                return _high_bit_depth_to_rgb(upright, Image)
            return upright.convert("RGB")
    except Image.DecompressionBombError as error:
        raise UnreadableImageError(f"image: {path} is over Pillow's decompression-bomb limit ({error}); if the file "
                                   "is trusted, raise PIL.Image.MAX_IMAGE_PIXELS, else --skip-unreadable drops "
                                   "it") from None
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise UnreadableImageError(f"image: cannot decode {path}: {error} (--skip-unreadable drops missing and "
                                   "corrupt images)") from None


def _high_bit_depth_to_rgb(image, Image):
    """An integer grayscale image scaled by its bit depth to 8 bits (16 bits for ``I;16``
    modes and for ``I`` images whose values fit them, else 32), as RGB."""
    values = np.asarray(image, dtype=np.float64)
    bits = 16 if image.mode.startswith("I;16") or (values.size and values.max() <= 65535 and values.min() >= 0) else 32
    scaled = np.clip(np.rint(values / (2.0**bits - 1) * 255), 0, 255).astype(np.uint8)
    return Image.fromarray(scaled).convert("RGB")  # uint8, 2-D: mode L


def readable(path: str) -> bool:
    try:
        open_image(path)
    except UnreadableImageError:
        return False
    return True


class ImageLabelDataset(Dataset):
    """Items ``(image, label)``: the label is the distribution where the table has one,
    else the score. ``labels=False`` gives images only (an unlabelled pool).

    Args:
        table: the labels (image paths included).
        transform: a callable on a PIL image; default :func:`iaa_transforms`.
        skip_unreadable: check every image first and drop the missing or corrupt ones
            (their paths are in ``skipped``); otherwise such an image raises
            :class:`UnreadableImageError` naming the file when it is loaded.
        seed: seeds the random transform of each image from ``(seed, epoch, image)``
            (``set_epoch`` sets the epoch; :func:`~elta_core.adapters.torch.fit` does), so
            an image's crop and flip do not depend on the number of processes or workers,
            nor on where a run was resumed. None: torch's global generator.
    """

    def __init__(
        self,
        table: LabelTable,
        transform: Callable | None = None,
        *,
        train: bool = False,
        image_size: int = 224,
        labels: bool = True,
        skip_unreadable: bool = False,
        seed: int | None = None,
    ):
        self.table = table
        self.seed, self.epoch = seed, 0
        self.transform = transform or iaa_transforms(train, image_size)
        self.with_labels = labels
        self.rows: Sequence[int] = range(len(table))
        self.skipped: list[str] = []
        if skip_unreadable:
            good = [k for k in self.rows if readable(table.images[k])]
            self.skipped = [table.images[k] for k in sorted(set(self.rows) - set(good))]
            self.rows = good
            if self.skipped:
                warnings.warn(f"skipped {len(self.skipped)} unreadable image(s), e.g. {self.skipped[0]}", stacklevel=2)
        else:  # a missing file is found now, not after hours of training when the test set is read
            missing = [path for path in table.images if not os.path.isfile(path)]
            if missing:
                raise UnreadableImageError(f"image: no such file: {missing[0]} ({len(missing)} of {len(table)} images are "
                                           "missing; is --images the folder the label file's names are relative to? "
                                           "--skip-unreadable drops missing and corrupt images)")
        label_array = table.labels()
        self.labels = torch.as_tensor(label_array, dtype=torch.float32)

    def __len__(self) -> int:
        return len(self.rows)

    def fingerprint(self) -> str:
        """What the items depend on: the image paths and labels of the kept rows, and the
        transform (its repr)."""
        from elta_core.run_state import fingerprint

        rows = list(self.rows)
        return fingerprint([[self.table.images[k] for k in rows], self.labels[rows], repr(self.transform),
                            self.with_labels])

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __getitem__(self, index: int):
        row = self.rows[index]
        image = open_image(self.table.images[row])
        if self.seed is None:
            image = self.transform(image)
        else:
            # torchvision's random transforms draw from torch's global CPU generator: seed it for
            # this image and put its state back (torch.random.fork_rng costs 50x more)
            generator = torch.random.default_generator
            state = generator.get_state()
            generator.manual_seed(int(np.random.SeedSequence([self.seed, self.epoch, row]).generate_state(1)[0]))
            try:
                image = self.transform(image)
            finally:
                generator.set_state(state)
        return (image, self.labels[row]) if self.with_labels else image


def image_files(folder: str | Path) -> list[str]:
    """Image files under ``folder`` (recursively), sorted."""
    folder = Path(folder)
    if folder.is_file():
        raise NotADirectoryError(f"images: {folder} is a file; give the folder of images")
    if not folder.is_dir():
        raise FileNotFoundError(f"images: no such folder: {folder}")
    return sorted(str(p) for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
