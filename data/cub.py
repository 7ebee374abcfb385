"""CUB-200-2011 split into tasks of equal class count (BCL's Split CUB: 20 tasks of 10 classes by default), with
the dataset's own train/test split (train_test_split.txt). Classes are grouped after a permutation seeded by the
run seed (`shuffle_classes: false` keeps class-id order). Images are squashed to image_size × image_size (no crop):
84 by default (cheap, as miniImageNet); BCL's ImageNet-pretrained ResNet-18 expects 224. ImageNet normalization.
Decoded once to `<data_dir>/CUB_200_2011/cache/` (one cache per image size).

User-provided: extract CUB_200_2011.tgz (https://www.vision.caltech.edu/datasets/cub_200_2011/) into `<data_dir>/`
(images.txt, image_class_labels.txt, train_test_split.txt, images/...)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence


from cl.config.options import Bool, options
from cl.errors import DatasetError
from data.image_cache import decoded_listing
from data.image_files import (IMAGENET_MEAN, IMAGENET_STD, keep_first_tasks, ordered_class_groups, require_dir,
                              seeded_class_groups)
from data.stream import STREAM_OPTIONS, InputTransform, Stream
from data.streams import class_split_stream

WHERE = "extract CUB_200_2011.tgz (https://www.vision.caltech.edu/datasets/cub_200_2011/) into the data root"


def _table(path: Path) -> dict[str, str]:
    """`<image id> <value>` per line → {id: value}."""
    if not path.exists():
        raise DatasetError(f"{path} not found; {WHERE}")
    rows = [line.split(maxsplit=1) for line in path.read_text().splitlines() if line.strip()]
    if any(len(r) != 2 for r in rows):
        raise DatasetError(f"{path} is not '<image id> <value>' per line; {WHERE}")
    return {k: v.strip() for k, v in rows}


def _listing(root: Path) -> dict[str, tuple[list[Path], list[int]]]:
    images, labels = _table(root / "images.txt"), _table(root / "image_class_labels.txt")
    is_train = _table(root / "train_test_split.txt")
    if set(images) != set(labels) or set(images) != set(is_train):
        raise DatasetError(f"images.txt, image_class_labels.txt and train_test_split.txt in {root} list different "
                           f"image ids; {WHERE}")
    out = {"train": ([], []), "test": ([], [])}
    for image_id in sorted(images, key=int):
        files, split_labels = out["train" if is_train[image_id] == "1" else "test"]
        files.append(root / "images" / images[image_id])
        split_labels.append(int(labels[image_id]) - 1)  # class ids are 1-based
    return out


@options(**STREAM_OPTIONS, shuffle_classes=Bool())
def cub(data_dir: str, name: str = "cub_split", n_tasks: int = 20, seed: int = 0, shuffle_classes: bool = True,
        pc_valid: float = 0.1, image_size: int = 84, num_workers: int = 2, max_tasks: int | None = None,
        class_order: Sequence[int] | None = None) -> Stream:
    root = require_dir(Path(data_dir) / "CUB_200_2011", WHERE)
    data = decoded_listing(root, _listing(root), image_size, num_workers)
    n_classes = int(data["train"][1].max()) + 1
    groups = (seeded_class_groups(n_classes, n_tasks, seed, class_order) if shuffle_classes else
              ordered_class_groups(n_classes, n_tasks, range(n_classes), class_order))
    stream = class_split_stream(name, *data["train"], *data["test"], groups, (3, image_size, image_size),
                                InputTransform(IMAGENET_MEAN, IMAGENET_STD), seed, pc_valid, False)
    return keep_first_tasks(stream, max_tasks)
