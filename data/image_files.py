"""Shared pieces of the image loaders: locating / downloading / verifying canonical files, decoding images, the
grayscale → 3×32×32 conversion of the mixture datasets, seeded task orders and class groupings."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from cl.errors import ConfigError, DatasetError
from data.download import download, md5_file
from data.stream import Stream

log = logging.getLogger(__name__)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def canonical_file(path: Path, md5: str | None, urls: Sequence[str], allow_download: bool, verify: bool,
                   where: str) -> Path:
    """`path`, downloaded from `urls` when missing (and allowed), checked against its canonical `md5` when `verify`.
    `where` tells the user how to get the file when it is missing."""
    if not path.exists() and urls and allow_download:
        try:
            download(urls, path)
        except DatasetError as e:
            log.warning("%s", e)  # reported below with the path and what to do
    if not path.exists():
        raise DatasetError(f"{path} not found; {where} (set paths.data_dir or CL_DATA_DIR to the data root)")
    if verify and md5 is not None:
        actual = md5_file(path)
        if actual != md5:
            raise DatasetError(f"{path} has md5 {actual}, not the canonical {md5}; delete it and download it again "
                               f"(stream.verify_checksums=false skips this check for re-encoded copies)")
    return path


def require_dir(path: Path, where: str) -> Path:
    if not path.is_dir():
        raise DatasetError(f"{path} not found; {where} (set paths.data_dir or CL_DATA_DIR to the data root)")
    return path


def decode_image(path: Path, size: int | None, bgr: bool = False) -> np.ndarray:
    """An image file as uint8 [3, size, size] RGB (BGR when `bgr`), squashed to size×size with bilinear
    resampling (torchvision's Resize((size, size)) on PIL images does the same)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            return resize_hwc(np.asarray(img.convert("RGB"), dtype=np.uint8), size, swap_channels=bgr)
    except (OSError, UnidentifiedImageError) as e:
        raise DatasetError(f"cannot read image {path} ({e}); restore the file from the dataset archive")


def resize_hwc(array: np.ndarray, size: int | None, swap_channels: bool = False) -> np.ndarray:
    """uint8 [H, W, 3] → [3, size, size] (bilinear, as PIL), optionally swapping RGB ↔ BGR."""
    from PIL import Image

    if size is not None and array.shape[:2] != (size, size):
        array = np.asarray(Image.fromarray(array).resize((size, size), Image.BILINEAR), dtype=np.uint8)
    if swap_channels:
        array = array[:, :, ::-1]
    return np.ascontiguousarray(array.transpose(2, 0, 1))


def gray_to_rgb32(x: torch.Tensor) -> torch.Tensor:
    """uint8 [N, 1, H, W] grayscale (H, W <= 32) → [N, 3, 32, 32]: zero-padded around the centre (2 pixels for
    28×28, as the mixture's Pad(2)) and replicated to three channels."""
    if x.dim() == 3:
        x = x.unsqueeze(1)
    h, w = x.shape[-2:]
    top, left = (32 - h) // 2, (32 - w) // 2
    x = F.pad(x, (left, 32 - w - left, top, 32 - h - top))
    return x.expand(-1, 3, -1, -1).contiguous()


def shuffled_order(n: int, seed: int) -> list[int]:
    """The task order of the HAT/BLIP loaders: sklearn `shuffle(arange(n), random_state=seed)`, which is
    NumPy's legacy `RandomState(seed).shuffle`."""
    order = np.arange(n)
    np.random.RandomState(seed).shuffle(order)
    return order.tolist()


def ordered_class_groups(n_classes: int, n_tasks: int, own_order: Sequence[int],
                         class_order: Sequence[int] | None = None) -> list[list[int]]:
    """The class ids of each task: `n_tasks` consecutive, equal groups of `class_order` (`stream.class_order`, a
    permutation of the class ids), or of the stream's `own_order` when it is None. Every split stream that forms
    its own class groups (cifar100_split, tinyimagenet4, cub_split, miniimagenet20) forms them here."""
    if n_tasks < 1 or n_classes % n_tasks:
        raise ConfigError(f"stream.n_tasks={n_tasks} must divide the {n_classes} classes evenly")
    if class_order is not None and sorted(class_order) != list(range(n_classes)):
        raise ConfigError(f"stream.class_order must list each class id 0..{n_classes - 1} exactly once (a "
                          f"permutation of the stream's {n_classes} classes); it holds {len(class_order)} ids")
    order = np.asarray(own_order if class_order is None else class_order)
    return [g.tolist() for g in np.split(order, n_tasks)]


def seeded_class_groups(n_classes: int, n_tasks: int, seed: int,
                        class_order: Sequence[int] | None = None) -> list[list[int]]:
    """`np.split(permutation(n_classes), n_tasks)` under NumPy seed `seed` (BLIP's miniImageNet class split), unless
    a `class_order` is given."""
    return ordered_class_groups(n_classes, n_tasks, np.random.RandomState(seed).permutation(n_classes), class_order)


def keep_first_tasks(stream: Stream, max_tasks: int | None) -> Stream:
    """The first `max_tasks` tasks (all when None): GEM's --n_tasks, and short smoke runs."""
    if max_tasks is None:
        return stream
    return Stream(stream.name, stream.tasks[:max_tasks], stream.input_shape)
