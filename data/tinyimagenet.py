"""Tiny-ImageNet in the MAS protocol: its 200 classes split at random (seeded) into tasks of equal size (4 × 50 by
default); ONE class list serves both the training and the test images of a task (the re-implementation drew them
from two independent directory listings, bug M2). The labelled validation set is the test set (the official
test set has no labels). 64×64, ImageNet normalization; decoded once to `<data_dir>/tiny-imagenet-200/cache/`.

User-provided: unzip http://cs231n.stanford.edu/tiny-imagenet-200.zip into `<data_dir>/` (standard layout:
wnids.txt, train/<wnid>/images/*.JPEG, val/images/*.JPEG + val/val_annotations.txt)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence


from cl.config.options import options
from cl.errors import DatasetError
from data.image_cache import decoded_listing
from data.image_files import IMAGENET_MEAN, IMAGENET_STD, keep_first_tasks, require_dir, seeded_class_groups
from data.stream import STREAM_OPTIONS, InputTransform, Stream
from data.streams import class_split_stream

WHERE = "unzip http://cs231n.stanford.edu/tiny-imagenet-200.zip into the data root"


def _listing(root: Path) -> dict[str, tuple[list[Path], list[int]]]:
    wnids_file = root / "wnids.txt"
    annotations = root / "val" / "val_annotations.txt"
    for path in (wnids_file, annotations):
        if not path.exists():
            raise DatasetError(f"{path} not found; {WHERE}")
    wnids = sorted(w.strip() for w in wnids_file.read_text().split() if w.strip())
    label_of = {w: i for i, w in enumerate(wnids)}
    train_files, train_labels = [], []
    for wnid in wnids:
        files = sorted(require_dir(root / "train" / wnid / "images", WHERE).glob("*.JPEG"))
        train_files += files
        train_labels += [label_of[wnid]] * len(files)
    test_files, test_labels = [], []
    for line in annotations.read_text().splitlines():
        fields = line.split("\t")
        if len(fields) < 2 or fields[1] not in label_of:
            raise DatasetError(f"{annotations}: line {line!r} is not '<file>\\t<wnid>\\t...' with a wnid of "
                               f"wnids.txt; {WHERE}")
        test_files.append(root / "val" / "images" / fields[0])
        test_labels.append(label_of[fields[1]])
    return {"train": (train_files, train_labels), "test": (test_files, test_labels)}


@options(**STREAM_OPTIONS)
def tinyimagenet(data_dir: str, name: str = "tinyimagenet4", n_tasks: int = 4, seed: int = 0, pc_valid: float = 0.1,
                 image_size: int = 64, num_workers: int = 2, max_tasks: int | None = None,
                 class_order: Sequence[int] | None = None) -> Stream:
    root = require_dir(Path(data_dir) / "tiny-imagenet-200", WHERE)
    data = decoded_listing(root, _listing(root), image_size, num_workers)
    n_classes = int(data["train"][1].max()) + 1
    groups = seeded_class_groups(n_classes, n_tasks, seed, class_order)
    stream = class_split_stream(name, *data["train"], *data["test"], groups, (3, image_size, image_size),
                                InputTransform(IMAGENET_MEAN, IMAGENET_STD), seed, pc_valid, False)
    for t, task in enumerate(stream.tasks):
        task.name = f"t{t}"  # 50 class ids would make an unreadable name
    return keep_first_tasks(stream, max_tasks)
