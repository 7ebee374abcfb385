"""CIFAR-10 / CIFAR-100 from the canonical python pickles, and the streams built on them:
`cifar_alt` (HAT/BLIP "alternating" CIFAR-10/100) and `cifar100_split` (GEM's 20 × 5 split and BCL's -val/-cl
protocol).

Files live under `<data_dir>/cifar/`: the extracted folders `cifar-10-batches-py/` (data_batch_1..5, test_batch)
and `cifar-100-python/` (train, test; fine labels). When a folder is missing, its tarball is extracted after an md5
check (downloaded first when missing and the machine is online). Extracted folders are checked by structure
(array shapes, label ranges), since only the tarballs have published checksums.
"""
from __future__ import annotations

import pickle
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from cl.config.options import Bool, Int, options
from cl.errors import ConfigError, DatasetError
from data.image_files import canonical_file, keep_first_tasks, ordered_class_groups, shuffled_order
from data.stream import STREAM_OPTIONS, InputTransform, Stream, part_tasks
from data.streams import class_split_stream

# HAT's CIFAR statistics (used by BLIP for both CIFAR-10 and CIFAR-100)
MEAN = tuple(v / 255 for v in (125.3, 123.0, 113.9))
STD = tuple(v / 255 for v in (63.0, 62.1, 66.7))
WHERE = "download it from https://www.cs.toronto.edu/~kriz/cifar.html into that folder, or run once online"


@dataclass(frozen=True)
class CifarVariant:
    folder: str
    archive: str
    md5: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    label_key: str
    n_classes: int


CIFAR10 = CifarVariant("cifar-10-batches-py", "cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a",
                       tuple(f"data_batch_{i}" for i in range(1, 6)), ("test_batch",), "labels", 10)
CIFAR100 = CifarVariant("cifar-100-python", "cifar-100-python.tar.gz", "eb9058c3a382ffc7106e4002c42a8d85",
                        ("train",), ("test",), "fine_labels", 100)


def _extract(archive: Path, into: Path) -> None:
    with tarfile.open(archive, "r:gz") as tar:
        if hasattr(tarfile, "data_filter"):  # refuses absolute paths, links out of the folder, device files
            tar.extractall(into, filter="data")
        else:
            tar.extractall(into)


def _read_pickle(path: Path, variant: CifarVariant) -> tuple[np.ndarray, np.ndarray]:
    if not path.exists():
        raise DatasetError(f"{path} not found; the folder {path.parent} is incomplete: delete it and {WHERE}")
    try:
        with open(path, "rb") as f:
            batch = pickle.load(f, encoding="latin1")  # Python 2 pickles: byte-string keys become str
        x = np.asarray(batch["data"], dtype=np.uint8)
        y = np.asarray(batch[variant.label_key], dtype=np.int64)
    except (pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError) as e:
        raise DatasetError(f"{path} is not a CIFAR python pickle ({type(e).__name__}: {e}); delete it and {WHERE}")
    if x.ndim != 2 or x.shape[1] != 3 * 32 * 32 or len(x) != len(y) or y.min() < 0 or y.max() >= variant.n_classes:
        raise DatasetError(f"{path} does not have the CIFAR structure (data {x.shape}, {len(y)} labels in "
                           f"[{y.min()}, {y.max()}]); delete it and {WHERE}")
    return x.reshape(-1, 3, 32, 32), y


def load_cifar(data_dir: str | Path, variant: CifarVariant, allow_download: bool = True,
               verify_checksums: bool = True) -> dict[str, torch.Tensor]:
    """{'x_train': uint8 [N, 3, 32, 32], 'y_train': int64, 'x_test', 'y_test'}."""
    root = Path(data_dir) / "cifar"
    folder = root / variant.folder
    if not folder.is_dir():
        archive = canonical_file(root / variant.archive, variant.md5,
                                 [f"https://www.cs.toronto.edu/~kriz/{variant.archive}"], allow_download,
                                 verify_checksums, WHERE)
        _extract(archive, root)
    out = {}
    for split, files in (("train", variant.train_files), ("test", variant.test_files)):
        parts = [_read_pickle(folder / name, variant) for name in files]
        out[f"x_{split}"] = torch.from_numpy(np.concatenate([p[0] for p in parts]))
        out[f"y_{split}"] = torch.from_numpy(np.concatenate([p[1] for p in parts]))
    return out


@options(**STREAM_OPTIONS, strict_alternation=Bool())
def cifar_alt(data_dir: str, name: str = "cifar_alt", seed: int = 0, strict_alternation: bool = False,
              pc_valid: float = 0.1, download: bool = True, verify_checksums: bool = True,
              max_tasks: int | None = None) -> Stream:
    """BLIP/HAT "alternating" CIFAR-10/100: 5 CIFAR-10 tasks of 2 classes ({0,1}, {2,3}, ...) and 5 CIFAR-100
    tasks of 20 consecutive classes, in the order `shuffle(arange(10), random_state=seed)` of the official code
    (ids 0-4 CIFAR-10, 5-9 CIFAR-100; so not strictly alternating: docs/streams.md, "Task orders and class
    splits"). `strict_alternation` keeps each dataset's tasks in that seeded order but interleaves them C10, C100,
    C10, ... Global class ids: CIFAR-10 0-9, CIFAR-100 10-109."""
    c10 = load_cifar(data_dir, CIFAR10, download, verify_checksums)
    c100 = load_cifar(data_dir, CIFAR100, download, verify_checksums)
    groups = [[2 * k, 2 * k + 1] for k in range(5)] + [list(range(10 + 20 * k, 30 + 20 * k)) for k in range(5)]
    order = shuffled_order(10, seed)
    if strict_alternation:
        order = [t for pair in zip([o for o in order if o < 5], [o for o in order if o >= 5]) for t in pair]
    x = {s: torch.cat([c10[f"x_{s}"], c100[f"x_{s}"]]) for s in ("train", "test")}
    y = {s: torch.cat([c10[f"y_{s}"], c100[f"y_{s}"] + 10]) for s in ("train", "test")}
    stream = class_split_stream(name, x["train"], y["train"], x["test"], y["test"], [groups[t] for t in order],
                                (3, 32, 32), InputTransform(MEAN, STD), seed, pc_valid, False)
    for task, t in zip(stream.tasks, order):
        task.name = f"c10-{t}" if t < 5 else f"c100-{t - 5}"
    return keep_first_tasks(stream, max_tasks)


@options(**STREAM_OPTIONS, relabel=Bool(), relabel_seed=Int(ge=0))
def cifar100_split(data_dir: str, name: str = "cifar100_split", n_tasks: int = 20, relabel: bool = False,
                   relabel_seed: int = 0, n_val_tasks: int = 0, part: str = "all", seed: int = 0,
                   pc_valid: float = 0.1, normalize: bool = False, download: bool = True,
                   verify_checksums: bool = True, max_tasks: int | None = None,
                   class_order: Sequence[int] | None = None) -> Stream:
    """CIFAR-100 in `n_tasks` tasks of 100/n_tasks classes. GEM: classes in id order, no relabelling. BCL:
    `relabel` maps each class through a permutation seeded by `relabel_seed` first; the first `n_val_tasks` tasks
    are for hyperparameter search (`part: val`), the rest are the continual stream (`part: cl`), whose global
    labels are shifted down by n_val_tasks × classes-per-task (BCL hard-codes −15 for 3 tasks of 5).
    GEM/BCL feed raw [0, 1] pixels (`normalize: false`); `normalize: true` applies the HAT CIFAR statistics.
    `class_order` (ids after any relabelling) regroups the classes; BCL's shifted parts need consecutive ids."""
    if n_tasks < 1 or 100 % n_tasks:
        raise ConfigError(f"stream.n_tasks={n_tasks} must divide the 100 CIFAR-100 classes evenly")
    keep = part_tasks(part, n_val_tasks, n_tasks)
    if class_order is not None and part != "all":
        raise ConfigError(f"stream.class_order needs stream.part=all (part={part!r} shifts the labels of consecutive "
                          f"class ids); for BCL's class order use stream.relabel=true")
    data = load_cifar(data_dir, CIFAR100, download, verify_checksums)
    # BCL's data/cifar100.py: torch.manual_seed(seed); class c becomes torch.randperm(100)[c]
    new_label = (torch.randperm(100, generator=torch.Generator().manual_seed(relabel_seed)) if relabel
                 else torch.arange(100))
    per_task = 100 // n_tasks
    shift = per_task * keep.start
    groups = ordered_class_groups(100, n_tasks, range(100), class_order)[keep.start:keep.stop]
    groups = [[c - shift for c in g] for g in groups]
    transform = InputTransform(MEAN, STD) if normalize else InputTransform()
    y_train, y_test = new_label[data["y_train"]] - shift, new_label[data["y_test"]] - shift
    stream = class_split_stream(name, data["x_train"], y_train, data["x_test"], y_test, groups, (3, 32, 32),
                                transform, seed, pc_valid, False)
    return keep_first_tasks(stream, max_tasks)
