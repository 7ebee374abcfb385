"""What a continual-learning stream is: an ordered list of tasks, each with train/valid/test splits.

Images are kept compact (uint8 where the source is uint8) and turned into normalized float batches by an
`InputTransform` on the training device, one vectorized op per batch; no per-sample Python in the hot loop.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Sequence

import numpy as np
import torch

from cl.config.options import Bool, Choice, Float, Int, ListOf, Text
from cl.errors import ConfigError

PARTS = ("cl", "val", "all")  # stream.part: BCL's -val/-cl protocol

# the options that several streams take, the same for each (a stream's own are on its function)
STREAM_OPTIONS = {
    "name": Text(),
    "data_dir": Text(),
    "n_tasks": Int(ge=1),
    "n_val_tasks": Int(ge=0),
    "part": Choice(PARTS),
    "seed": Int(ge=0),
    "pc_valid": Float(ge=0, lt=1),
    "normalize": Bool(),
    "download": Bool(),
    "verify_checksums": Bool(),
    "max_tasks": Int(ge=1, optional=True),
    "class_order": ListOf(Int(ge=0), min_len=2, optional=True),
    "image_size": Int(ge=8),
    "num_workers": Int(ge=0),
    "tasks": ListOf(ListOf(Int(ge=0), min_len=2), min_len=1),
    "valid_from_train": Bool(),
    "train_per_task": Int(ge=1, optional=True),
}


@dataclass
class InputTransform:
    """uint8 → [0, 1] float and per-channel normalization, then an optional fixed pixel permutation (permuted
    MNIST). `normalize` can run once over a whole in-memory dataset; `permute` runs per batch."""

    mean: Sequence[float] = (0.0,)
    std: Sequence[float] = (1.0,)
    permutation: torch.Tensor | None = None  # indices into the flattened image

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        fresh = x.dtype != torch.float32  # x.float() made a copy we may overwrite (a whole dataset: no temporaries)
        x = x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()
        if any(m != 0.0 for m in self.mean) or any(s != 1.0 for s in self.std):
            mean, std = self.channel_stats(x.device, x.dim())
            x = (x.sub_(mean) if fresh else x - mean).div_(std)
        return x

    def channel_stats(self, device, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
        """mean and std shaped to broadcast over a batch of `dim` dimensions: per channel for [N, C, H, W], a single
        value for flat or 1-channel data."""
        shape = (1, -1) + (1,) * (dim - 2) if len(self.mean) > 1 else (1,)
        return (torch.tensor(self.mean, device=device).view(shape), torch.tensor(self.std, device=device).view(shape))

    def permute(self, x: torch.Tensor) -> torch.Tensor:
        if self.permutation is None:
            return x
        perm = self.permutation.to(x.device)
        return x.flatten(1).index_select(1, perm).view(x.shape)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.permute(self.normalize(x))


@dataclass
class Split:
    """Inputs `x` ([N, *input_shape], uint8 or float) and local labels `y` (int64 in [0, n_classes))."""

    x: torch.Tensor
    y: torch.Tensor

    def __post_init__(self):
        if len(self.x) != len(self.y):
            raise ValueError(f"split has {len(self.x)} inputs but {len(self.y)} labels")

    def __len__(self) -> int:
        return len(self.y)

    def to(self, device) -> "Split":
        return Split(self.x.to(device), self.y.to(device))


@dataclass
class Task:
    name: str
    classes: list[int]  # global class id of each local label
    train: Split
    valid: Split
    test: Split
    transform: InputTransform = field(default_factory=InputTransform)

    @property
    def n_classes(self) -> int:
        return len(self.classes)


@dataclass
class Stream:
    name: str
    tasks: list[Task]
    input_shape: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.tasks)

    @property
    def n_global_classes(self) -> int:
        return 1 + max(c for t in self.tasks for c in t.classes)

    def head(self, k: int) -> "Stream":
        """The stream's first k tasks (the hyperparameter-search protocol trains on these only)."""
        if not 1 <= k <= len(self.tasks):
            raise ConfigError(f"validation_tasks={k} must be between 1 and the stream's {len(self.tasks)} tasks")
        return Stream(self.name, self.tasks[:k], self.input_shape)

    def subsample_train(self, use: float | int | None, seed: int) -> "Stream":
        """The stream training on part of each task's training split (`stream.use`, the BCL/GEM drivers' `--use`):
        a fraction `0 < use <= 1` of it (rounded, at least one sample) or `use > 1` samples, drawn at random from
        (seed, task position) alone, so the draw is reproducible and independent of every other option.
        Validation and test splits are untouched; None keeps every sample. The drawn splits are new tensors,
        held by the returned stream for its whole life (DeviceStream caches device copies by their id)."""
        if use is None:
            return self
        tasks = []
        for t, task in enumerate(self.tasks):
            n = len(task.train)
            if use > 1 and use > n:
                raise ConfigError(f"stream.use={use} asks for {use} training samples per task, but task {t + 1} "
                                  f"({task.name}) has only {n}; use a count <= {n} or a fraction in (0, 1]")
            k = int(use) if use > 1 else max(1, int(round(use * n)))
            g = torch.Generator().manual_seed(int(np.random.SeedSequence([seed, t, _USE_SALT]).generate_state(1)[0]))
            idx = torch.randperm(n, generator=g)[:k].sort().values
            tasks.append(replace(task, train=Split(task.train.x[idx], task.train.y[idx])))
        return Stream(self.name, tasks, self.input_shape)


_USE_SALT = 0x75_73_65  # "use": keeps the draws of stream.use apart from other draws seeded by (seed, t)



def part_tasks(part: str, n_val_tasks: int, n_tasks: int) -> range:
    """The positions of the tasks that `stream.part` keeps out of a stream of `n_tasks` (BCL's -val/-cl protocol):
    `val` the first `n_val_tasks` (hyperparameter search), `cl` the others (the continual stream), `all` every
    task; so the val and cl parts of one seed never share a task."""
    if n_val_tasks >= n_tasks or (part == "val" and n_val_tasks == 0):  # its rule: >= 0
        raise ConfigError(f"stream.n_val_tasks={n_val_tasks} must be below stream.n_tasks={n_tasks} (and >= 1 for "
                          f"part=val)")
    return {"val": range(0, n_val_tasks), "cl": range(n_val_tasks, n_tasks), "all": range(0, n_tasks)}[part]


def split_valid(train: Split, pc_valid: float, valid_from_train: bool, generator: torch.Generator) -> tuple[Split, Split]:
    """Carve a validation split off `train`.

    `valid_from_train=True` reproduces the official BLIP/HAT MNIST protocol, where validation is a copy of the
    whole training set (so model selection runs on training loss). `pc_valid=0`: no validation split, every
    sample trains (GEM's and BCL's protocols)."""
    if valid_from_train:
        return train, train
    if pc_valid == 0.0:
        return train, Split(train.x[:0], train.y[:0])
    perm = torch.randperm(len(train), generator=generator)
    n_valid = max(1, int(round(pc_valid * len(train))))
    v, t = perm[:n_valid].sort().values, perm[n_valid:].sort().values
    return Split(train.x[t], train.y[t]), Split(train.x[v], train.y[v])
