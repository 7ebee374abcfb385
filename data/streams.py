"""Stream builders for the MNIST-family streams and the embedded default `digits5`.

Each builder returns a `Stream`; configs in `conf/stream/` call them with `_target_`."""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from cl.config.options import Bool, Choice, Float, options
from cl.errors import ConfigError
from data.mnist import MEAN as MNIST_MEAN, STD as MNIST_STD, load_mnist
from data.stream import STREAM_OPTIONS, InputTransform, Split, Stream, Task, part_tasks, split_valid


def _class_split(x: torch.Tensor, y: torch.Tensor, classes: Sequence[int]) -> Split:
    """The samples of `classes`, relabelled to their position in `classes`."""
    classes_t = torch.as_tensor(list(classes))
    mask = torch.isin(y, classes_t)
    local = torch.searchsorted(classes_t.sort().values, y[mask])
    order = classes_t.argsort()  # map sorted position back to the position in `classes`
    return Split(x[mask], order[local])


def _check_pairs(tasks: Sequence[Sequence[int]], n_classes: int):
    flat = [c for t in tasks for c in t]
    if not tasks or any(len(t) < 2 for t in tasks) or len(set(flat)) != len(flat) or not all(0 <= c < n_classes for c in flat):
        raise ConfigError(f"stream.tasks={list(map(list, tasks))} must be disjoint groups of >= 2 class ids in "
                          f"[0, {n_classes})")


def class_split_stream(name: str, x_train, y_train, x_test, y_test, tasks: Sequence[Sequence[int]],
                       input_shape, transform: InputTransform, seed: int, pc_valid: float,
                       valid_from_train: bool) -> Stream:
    n_classes = int(max(y_train.max(), y_test.max())) + 1
    _check_pairs(tasks, n_classes)
    g = torch.Generator().manual_seed(seed)
    out = []
    for classes in tasks:
        train, valid = split_valid(_class_split(x_train, y_train, classes), pc_valid, valid_from_train, g)
        out.append(Task(name="-".join(map(str, classes)), classes=list(classes), train=train, valid=valid,
                        test=_class_split(x_test, y_test, classes), transform=transform))
    return Stream(name, out, tuple(input_shape))


@options(**STREAM_OPTIONS)
def digits5(name: str = "digits5", tasks: Sequence[Sequence[int]] = ((0, 1), (2, 3), (4, 5), (6, 7), (8, 9)),
            test_fraction: float = 0.25, seed: int = 0, pc_valid: float = 0.1,
            valid_from_train: bool = False) -> Stream:
    """scikit-learn's bundled 8×8 digits (1,797 images, no download) in five 2-class tasks. The train/test split
    is fixed (seed 0) so that runs with different seeds are evaluated on the same test images."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.from_numpy(d.images.astype(np.float32) / 16.0).unsqueeze(1)  # [N, 1, 8, 8] in [0, 1]
    y = torch.from_numpy(d.target.astype(np.int64))
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    n_test = int(round(test_fraction * len(y)))
    te, tr = perm[:n_test], perm[n_test:]
    return class_split_stream(name, x[tr], y[tr], x[te], y[te], tasks, (1, 8, 8), InputTransform(), seed, pc_valid,
                              valid_from_train)


def mnist_transform(normalize: bool, permutation: torch.Tensor | None = None) -> InputTransform:
    """Pixels in [0, 1], standardized with MNIST's mean and std when `normalize` (GEM and BCL feed the raw [0, 1]
    pixels: `stream.normalize=false`), then the task's pixel permutation if any."""
    stats = ((MNIST_MEAN,), (MNIST_STD,)) if normalize else ((0.0,), (1.0,))
    return InputTransform(*stats, permutation=permutation)


@options(**STREAM_OPTIONS)
def split_mnist(data_dir: str, name: str = "mnist5",
                tasks: Sequence[Sequence[int]] = ((0, 1), (2, 3), (4, 5), (6, 7), (8, 9)), seed: int = 0,
                pc_valid: float = 0.1, valid_from_train: bool = False, normalize: bool = True,
                download: bool = True) -> Stream:
    """Split MNIST (BLIP's MNIST-5: digit pairs, 2-way heads). Official BLIP validation = the training set:
    `valid_from_train=true`."""
    m = load_mnist(data_dir, download)
    return class_split_stream(name, m["x_train"], m["y_train"], m["x_test"], m["y_test"], tasks, (1, 28, 28),
                              mnist_transform(normalize), seed, pc_valid, valid_from_train)


@options(**STREAM_OPTIONS, first_unpermuted=Bool())
def permuted_mnist(data_dir: str, name: str = "pmnist", n_tasks: int = 10, seed: int = 0,
                   first_unpermuted: bool = False, train_per_task: int | None = None, pc_valid: float = 0.1,
                   valid_from_train: bool = False, n_val_tasks: int = 0, part: str = "all",
                   normalize: bool = True, download: bool = True) -> Stream:
    """Permuted MNIST: every task is MNIST (10-way) under its own fixed pixel permutation, drawn from
    (seed, task position) — no cache, so a seed always gives the same permutations. With all training images
    (`train_per_task: null`, BLIP) they are stored once and each task permutes them on the device, per batch;
    GEM trains on a random 1,000 per task. BCL's protocol: the first `n_val_tasks` of the `n_tasks` are for
    hyperparameter search (`part: val`), the others the continual stream (`part: cl`); each part's tasks are
    those of `part: all` at the same positions (same permutations and samples)."""
    keep = part_tasks(part, n_val_tasks, n_tasks)
    m = load_mnist(data_dir, download)
    g = torch.Generator().manual_seed(seed)
    full = Split(m["x_train"], m["y_train"])
    train, valid = split_valid(full, pc_valid, valid_from_train, g)
    test = Split(m["x_test"], m["y_test"])
    tasks = []
    for t in range(n_tasks):
        perm = None if (t == 0 and first_unpermuted) else torch.randperm(
            28 * 28, generator=torch.Generator().manual_seed(seed * 1000 + t))
        if train_per_task:
            idx = torch.randperm(len(full), generator=g)[:train_per_task]
            train, valid = split_valid(Split(full.x[idx], full.y[idx]), pc_valid, valid_from_train, g)
        tasks.append(Task(name=f"p{t}", classes=list(range(10)), train=train, valid=valid, test=test,
                          transform=mnist_transform(normalize, perm)))
    return Stream(name, tasks[keep.start:keep.stop], (1, 28, 28))


def rotate(images: torch.Tensor, degrees: float, mode: str = "nearest") -> torch.Tensor:
    """Rotate uint8 images [N, 1, H, W] counter-clockwise about the centre, keeping the size (as PIL's
    `Image.rotate`, whose default resampling is nearest, which GEM used); outside pixels are 0."""
    a = -math.radians(degrees)  # affine_grid maps output to input pixels, and image rows point down
    theta = torch.tensor([[math.cos(a), math.sin(a), 0.0], [-math.sin(a), math.cos(a), 0.0]])
    grid = F.affine_grid(theta.expand(len(images), 2, 3), list(images.shape), align_corners=False)
    out = F.grid_sample(images.float(), grid, mode=mode, padding_mode="zeros", align_corners=False)
    return out.round().clamp_(0, 255).to(torch.uint8)


@options(**STREAM_OPTIONS, min_angle=Float(), max_angle=Float(), interpolation=Choice(("nearest", "bilinear")))
def rotated_mnist(data_dir: str, name: str = "rotmnist", n_tasks: int = 20, min_angle: float = 0.0,
                  max_angle: float = 180.0, train_per_task: int | None = 1000, seed: int = 0, pc_valid: float = 0.1,
                  valid_from_train: bool = False, interpolation: str = "nearest", n_val_tasks: int = 0,
                  part: str = "all", normalize: bool = True, download: bool = True) -> Stream:
    """GEM's rotated MNIST: task t rotates every image by one angle drawn uniformly from the t-th of n_tasks equal
    slices of [min_angle, max_angle] (seeded, unlike GEM's unseeded Python `random`). GEM trains on 1,000 samples
    per task (`train_per_task`; null = all 60,000) and tests on the full rotated test set. `n_val_tasks`/`part`:
    BCL's -val/-cl protocol as in `permuted_mnist` (tasks outside the part are drawn, not rotated)."""
    if max_angle < min_angle:
        raise ConfigError(f"stream.min_angle={min_angle} must be <= stream.max_angle={max_angle}")
    keep = part_tasks(part, n_val_tasks, n_tasks)
    m = load_mnist(data_dir, download)
    g = torch.Generator().manual_seed(seed)
    width = (max_angle - min_angle) / n_tasks
    tasks = []
    for t in range(n_tasks):
        angle = min_angle + width * (t + float(torch.rand((), generator=g)))
        idx = torch.randperm(len(m["y_train"]), generator=g)[:train_per_task] if train_per_task else slice(None)
        x = rotate(m["x_train"][idx], angle, interpolation) if t in keep else m["x_train"][idx]
        train, valid = split_valid(Split(x, m["y_train"][idx]), pc_valid, valid_from_train, g)  # the same draws
        if t not in keep:
            continue
        test = Split(rotate(m["x_test"], angle, interpolation), m["y_test"])
        tasks.append(Task(name=f"r{angle:.0f}", classes=list(range(10)), train=train, valid=valid, test=test,
                          transform=mnist_transform(normalize)))
    return Stream(name, tasks, (1, 28, 28))
