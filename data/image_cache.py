"""Large image sets (miniImageNet, Tiny-ImageNet, CUB) decoded once to a uint8 .npy cache and read from disk.

`cached_images` decodes a list of image files into `<cache_dir>/<tag>-<key hash>.npy` ([N, 3, H, W] uint8), written
to a temporary file and renamed, so an interrupted run never leaves a truncated cache; the hash covers every
parameter that changes the pixels (file list, size, channel order), so changing one writes a new cache.

`MemmapImages` stands in for `Split.x`: indexing it (as `split_valid` and the class split do) selects rows without
reading pixels, and `TaskBatches` streams its batches through DataLoader workers."""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from data.image_files import decode_image

log = logging.getLogger(__name__)


class MemmapImages:
    """Rows `rows` of the uint8 array in the .npy file `path`, opened lazily (memory-mapped) in each process.
    `device` is where batches are delivered; the pixels stay on disk (and in the page cache)."""

    def __init__(self, path: str | Path, rows: np.ndarray | None = None, device: torch.device | str = "cpu",
                 num_workers: int = 2):
        self.path = str(path)
        self._array: np.ndarray | None = None
        self.rows = np.arange(len(self.array)) if rows is None else np.asarray(rows, dtype=np.int64)
        self.device = torch.device(device)
        self.num_workers = num_workers

    @property
    def array(self) -> np.ndarray:
        if self._array is None:
            self._array = np.load(self.path, mmap_mode="r")
        return self._array

    def __getstate__(self):  # workers re-open the file instead of receiving a pickled copy of the pixels
        return {**self.__dict__, "_array": None}

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.rows), *self.array.shape[1:])

    def _with_rows(self, rows: np.ndarray, device=None) -> "MemmapImages":
        view = MemmapImages.__new__(MemmapImages)
        view.__dict__.update(self.__dict__, rows=rows, device=torch.device(device or self.device))
        return view

    def __getitem__(self, index) -> "MemmapImages":
        if isinstance(index, torch.Tensor):
            index = index.cpu().numpy()
        return self._with_rows(self.rows[index])

    def to(self, device, *args, **kwargs) -> "MemmapImages":
        return self._with_rows(self.rows, device)

    def read(self, positions: np.ndarray | torch.Tensor) -> torch.Tensor:
        """The pixels of `positions` (indices into this view), uint8 [n, C, H, W], read in file order."""
        if isinstance(positions, torch.Tensor):
            positions = positions.cpu().numpy()
        rows = self.rows[positions]
        in_file_order = np.argsort(rows, kind="stable")
        out = np.empty((len(rows), *self.array.shape[1:]), dtype=np.uint8)
        out[in_file_order] = self.array[rows[in_file_order]]
        return torch.from_numpy(out)


def take_rows(x: torch.Tensor | MemmapImages, idx: torch.Tensor) -> torch.Tensor:
    """Rows `idx` of a split's inputs as a tensor on the split's device, whether held in memory or on disk
    (for code that samples a split directly, e.g. a Fisher estimate, instead of going through TaskBatches)."""
    return x.read(idx).to(x.device) if isinstance(x, MemmapImages) else x[idx]


def cache_key(**params) -> str:
    return hashlib.sha1(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()[:16]


def cached_images(cache_dir: Path, tag: str, key: str, items: Sequence, decode: Callable[[object], np.ndarray],
                  image_shape: Sequence[int]) -> Path:
    """Path of the cache holding `decode(item)` ([C, H, W] uint8) for every item, decoding it first if absent."""
    path = Path(cache_dir) / f"{tag}-{key}.npy"
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npy")
    log.info("decoding %d images into %s (once)", len(items), path)
    try:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(items), *image_shape))
        for i, item in enumerate(items):
            out[i] = decode(item)
        out.flush()
        del out
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def decoded_files(cache_dir: Path, tag: str, root: Path, files: Sequence[Path], size: int, bgr: bool = False,
                  num_workers: int = 2) -> MemmapImages:
    """Image files (paths under `root`) decoded to [3, size, size] once, then served from the cache."""
    key = cache_key(files=[str(Path(f).relative_to(root)) for f in files], size=size, bgr=bgr)
    path = cached_images(cache_dir, tag, key, files, lambda f: decode_image(f, size, bgr), (3, size, size))
    return MemmapImages(path, num_workers=num_workers)


def decoded_listing(root: Path, listing: dict[str, tuple[list[Path], list[int]]], size: int,
                    num_workers: int = 2) -> dict[str, tuple[MemmapImages, torch.Tensor]]:
    """{split: (files, labels)} of an image-folder dataset → {split: (cached images, label tensor)}."""
    return {split: (decoded_files(root / "cache", split, root, files, size, num_workers=num_workers),
                    torch.tensor(labels, dtype=torch.long)) for split, (files, labels) in listing.items()}

