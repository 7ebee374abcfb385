"""miniImageNet-20 as BLIP uses it (ACL's protocol): 100 classes × 600 images, split per class into 500 train /
100 test with NumPy seed 1234; tasks of 100/n_tasks classes drawn with NumPy seed = run seed
(`split(permutation(100), n_tasks)`); 84×84, ImageNet normalization; decoded once to a cache under
`<data_dir>/miniimagenet/cache/` and streamed from disk.

User-provided under `<data_dir>/miniimagenet/`, in either form:
- `MI_raw/<class>/<image>`: one folder per class (BLIP's release asset MI_raw.zip). Classes and files are taken in
  sorted order (the official split script uses the file system's listing order, which can differ between
  machines), then each class is shuffled with RandomState(1234) in turn and its last 1/6 is the test set.
- `train.pkl` / `test.pkl` written by BLIP's `generate_train_test_split.py` (dicts of 'images': OpenCV BGR arrays
  [H, W, 3], 'labels').
Images are RGB by default; `bgr: true` reproduces the official loader, which feeds OpenCV's BGR channels to RGB
statistics (docs/streams.md, "Files")."""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from cl.config.options import Bool, Choice, Float, Int, Text, options
from cl.errors import DatasetError
from data.image_cache import MemmapImages, cache_key, cached_images, decoded_files
from data.image_files import (IMAGENET_MEAN, IMAGENET_STD, keep_first_tasks, require_dir, resize_hwc,
                              seeded_class_groups)
from data.stream import STREAM_OPTIONS, InputTransform, Stream
from data.streams import class_split_stream

WHERE = ("unzip BLIP's MI_raw.zip (https://github.com/Yujun-Shi/BLIP, release assets) there as MI_raw/<class>/..., "
         "or put the train.pkl/test.pkl of its generate_train_test_split.py there")
SOURCES = ("auto", "folder", "pickle")


def _split_folder(folder: Path, split_seed: int, test_fraction: float) -> dict[str, tuple[list[Path], list[int]]]:
    classes = sorted(p for p in folder.iterdir() if p.is_dir())
    if not classes:
        raise DatasetError(f"{folder} has no class folders; {WHERE}")
    rng = np.random.RandomState(split_seed)
    out = {"train": ([], []), "test": ([], [])}
    for label, class_dir in enumerate(classes):
        files = np.array(sorted(p for p in class_dir.iterdir() if p.is_file()), dtype=object)
        rng.shuffle(files)
        n_test = int(round(test_fraction * len(files)))
        for split, part in (("train", files[:len(files) - n_test]), ("test", files[len(files) - n_test:])):
            out[split][0].extend(part)
            out[split][1].extend([label] * len(part))
    return out


def _from_pickle(path: Path, cache_dir: Path, size: int, bgr: bool, num_workers: int):
    if not path.exists():
        raise DatasetError(f"{path} not found; {WHERE}")
    key = cache_key(file=path.name, bytes=path.stat().st_size, mtime=path.stat().st_mtime_ns, size=size, bgr=bgr)
    cache = cache_dir / f"{path.stem}-{key}.npy"
    labels_path = cache_dir / f"{path.stem}-{key}-labels.npy"
    if not (cache.exists() and labels_path.exists()):
        try:
            with open(path, "rb") as f:
                d = pickle.load(f)
            images, labels = d["images"], np.asarray(d["labels"], dtype=np.int64)
        except (pickle.UnpicklingError, EOFError, KeyError, TypeError) as e:
            raise DatasetError(f"{path} is not a miniImageNet split pickle ({type(e).__name__}: {e}); {WHERE}")
        # the pickles hold OpenCV (BGR) arrays: swap to RGB unless BGR is asked for
        cached_images(cache_dir, path.stem, key, images, lambda a: resize_hwc(np.asarray(a), size, not bgr),
                      (3, size, size))
        np.save(labels_path, labels)
    return MemmapImages(cache, num_workers=num_workers), torch.from_numpy(np.load(labels_path))


@options(**STREAM_OPTIONS, bgr=Bool(), source=Choice(SOURCES), raw_folder=Text(), split_seed=Int(ge=0),
         test_fraction=Float(gt=0, lt=1))
def miniimagenet(data_dir: str, name: str = "miniimagenet20", n_tasks: int = 20, seed: int = 0,
                 pc_valid: float = 0.02, image_size: int = 84, bgr: bool = False, source: str = "auto",
                 raw_folder: str = "MI_raw", split_seed: int = 1234, test_fraction: float = 1 / 6,
                 num_workers: int = 2, max_tasks: int | None = None,
                 class_order: Sequence[int] | None = None) -> Stream:
    root = require_dir(Path(data_dir) / "miniimagenet", WHERE)
    cache_dir = root / "cache"
    use_pickle = source == "pickle" or (source == "auto" and (root / "train.pkl").exists())
    data = {}
    for split in ("train", "test"):
        if use_pickle:
            data[split] = _from_pickle(root / f"{split}.pkl", cache_dir, image_size, bgr, num_workers)
    if not use_pickle:
        listing = _split_folder(require_dir(root / raw_folder, WHERE), split_seed, test_fraction)
        for split, (files, labels) in listing.items():
            images = decoded_files(cache_dir, f"{raw_folder}-{split}", root, files, image_size, bgr, num_workers)
            data[split] = images, torch.tensor(labels, dtype=torch.long)
    n_classes = int(data["train"][1].max()) + 1
    groups = seeded_class_groups(n_classes, n_tasks, seed, class_order)
    stream = class_split_stream(name, *data["train"], *data["test"], groups, (3, image_size, image_size),
                                InputTransform(IMAGENET_MEAN, IMAGENET_STD), seed, pc_valid, False)
    return keep_first_tasks(stream, max_tasks)
