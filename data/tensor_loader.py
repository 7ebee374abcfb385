"""Mini-batches drawn by index from tensors that already live on the training device.

`TaskBatches` replaces a DataLoader for datasets that fit in memory (MNIST, CIFAR scale): one randperm per epoch,
one gather + one vectorized transform per batch. Under DDP each rank takes an equal, disjoint share of the
epoch's permutation (every rank draws the same permutation from the shared seed).

Sources whose inputs are `MemmapImages` (image sets too large to hold, decoded to a disk cache) are read by
DataLoader workers instead: the same index batches go to the workers, which return uint8 pixels; labels, the
move to the device and the transform stay in the main process, so batches are identical in both paths.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from data.image_cache import MemmapImages


@dataclass
class BatchSource:
    """One task's share of a batch stream: inputs, the labels to train on, the task id and the input transform."""

    x: torch.Tensor
    y: torch.Tensor
    task: int
    transform: Callable[[torch.Tensor], torch.Tensor]

    def to(self, device) -> "BatchSource":
        return BatchSource(self.x.to(device), self.y.to(device), self.task, self.transform)

    def batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, int]]:
        """The samples in order, `batch_size` at a time (evaluation): slices of in-memory tensors (no gather),
        DataLoader workers for a disk cache."""
        if isinstance(self.x, MemmapImages):
            yield from TaskBatches([self], batch_size, shard=False)
            return
        for start in range(0, len(self.y), batch_size):
            end = start + batch_size
            yield self.transform(self.x[start:end]), self.y[start:end], self.task

    def inputs(self, idx: torch.Tensor) -> torch.Tensor:
        """The model inputs of the samples at `idx` (read from the disk cache where the pixels live there)."""
        if isinstance(self.x, MemmapImages):
            return self.transform(self.x.read(idx).to(self.y.device))
        return self.transform(self.x[idx])

    def head(self, n: int | None) -> "BatchSource":
        """The first `n` samples (all when `n` is None), e.g. to cap evaluation in debug runs."""
        return self if n is None else self.part(0, n)

    def part(self, start: int, end: int) -> "BatchSource":
        """Samples `start` to `end` (a DDP rank's share of an evaluation); itself when that is all of them."""
        if start <= 0 and end >= len(self.y):
            return self
        return BatchSource(self.x[start:end], self.y[start:end], self.task, self.transform)


class TaskBatches:
    """Iterable of `(x, y, task)` batches; `task` is an int when the batch holds one task, else a LongTensor."""

    def __init__(self, sources: Sequence[BatchSource], batch_size: int, shuffle: bool = False, seed: int = 0,
                 drop_last: bool = False, shard: bool = True):
        """`shard=False` gives every rank all batches (evaluation, where each rank needs whole-set figures)."""
        if not sources:
            raise ValueError("TaskBatches needs at least one source")
        self.sources = list(sources)
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.shard = shard
        self.epoch = 0
        self._skip_batches = 0
        sizes = torch.tensor([len(s.y) for s in self.sources])
        self.offsets = torch.cat([torch.zeros(1, dtype=torch.long), sizes.cumsum(0)])
        self.n = int(self.offsets[-1])
        self.single = len(self.sources) == 1
        self.streamed = any(isinstance(s.x, MemmapImages) for s in self.sources)
        self._batch_order = _BatchOrder()
        self._loader: DataLoader | None = None

    # --- distributed sharding -------------------------------------------------------------------------------
    def _world(self) -> tuple[int, int]:
        if self.shard and dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
        return 0, 1

    def _rank_indices(self) -> torch.Tensor:
        rank, world = self._world()
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(self.n, generator=g)
        else:
            order = torch.arange(self.n)
        if world > 1:  # equal share per rank, padded by wrapping, so every rank runs the same number of steps
            per_rank = -(-self.n // world)
            order = torch.cat([order, order[: per_rank * world - self.n]])[rank::world]
        return order

    def __len__(self) -> int:
        _, world = self._world()
        n = -(-self.n // world)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def start_at(self, epoch: int, batches_done: int) -> None:
        """Continue an interrupted epoch: the next iteration is epoch `epoch` (0-based), without its first
        `batches_done` batches (a mid-task resume; Lightning's loops restore the step counts themselves)."""
        self.epoch, self._skip_batches = epoch, batches_done

    def close(self):
        """Let go of the sources and stop the loader's workers: a finished Trainer keeps its loaders until it is
        garbage, and with them the task's device copy of the data."""
        self.sources = []
        self._loader = None

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, int | torch.Tensor]]:
        if not self.sources:
            raise RuntimeError("these TaskBatches were closed; build new ones from the task's sources")
        order = self._rank_indices()[self._skip_batches * self.batch_size:]
        self.epoch += 1
        self._skip_batches = 0
        if self.streamed:
            yield from self._iter_streamed(order)
            return
        device = self.sources[0].x.device
        order = order.to(device)
        for start in range(0, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            if self.drop_last and len(idx) < self.batch_size:
                break
            yield self._gather(idx, lambda p, local: self.sources[p].x[local])

    def _iter_streamed(self, order: torch.Tensor):
        device = self.sources[0].y.device
        if self._loader is None:
            images = {p: s.x for p, s in enumerate(self.sources) if isinstance(s.x, MemmapImages)}
            # workers only pay off when there are batches to overlap (not for one-batch evaluations)
            workers = max(x.num_workers for x in images.values()) if len(self) > 1 else 0
            self._loader = DataLoader(_PixelReader(images, self.offsets, self.single), sampler=self._batch_order,
                                      batch_size=None, num_workers=workers, persistent_workers=workers > 0,
                                      pin_memory=device.type == "cuda",
                                      # workers forked from a process whose OpenMP threads already ran can
                                      # deadlock (seen here at worker shutdown); start them from a clean server
                                      multiprocessing_context="forkserver" if workers > 0 else None)
        batches = [order[start:start + self.batch_size] for start in range(0, len(order), self.batch_size)]
        if self.drop_last and batches and len(batches[-1]) < self.batch_size:
            batches.pop()
        self._batch_order.batches = batches
        for idx, pixels in zip(batches, self._loader):
            yield self._gather(idx.to(device), lambda p, local: pixels[p].to(device, non_blocking=True)
                               if p in pixels else self.sources[p].x[local])

    def _gather(self, idx: torch.Tensor, read_x: Callable[[int, torch.Tensor], torch.Tensor]):
        if self.single:
            s = self.sources[0]
            return s.transform(read_x(0, idx)), s.y[idx], s.task
        # several tasks: group the batch by source so each gets its own transform
        xs, ys, ts = [], [], []
        for p, local in _parts(idx, self.offsets):
            s = self.sources[p]
            xs.append(s.transform(read_x(p, local)))
            ys.append(s.y[local])
            ts.append(torch.full((len(local),), s.task, dtype=torch.long, device=idx.device))
        return torch.cat(xs), torch.cat(ys), torch.cat(ts)


def _parts(idx: torch.Tensor, offsets: torch.Tensor) -> list[tuple[int, torch.Tensor]]:
    """(source position, indices local to that source) for each source present in the batch, in source order."""
    offsets = offsets.to(idx.device)
    part = torch.bucketize(idx, offsets[1:], right=True)
    return [(p, idx[part == p] - offsets[p]) for p in part.unique().tolist()]


class _BatchOrder:
    """The DataLoader's sampler: this epoch's index batches (persistent workers get each epoch's new order)."""

    def __init__(self):
        self.batches: list[torch.Tensor] = []

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class _PixelReader:
    """The DataLoader's dataset, run in the workers: an index batch → {source position: uint8 pixels} for the
    disk-backed sources, grouped as `TaskBatches._gather` groups the batch."""

    def __init__(self, images: dict[int, MemmapImages], offsets: torch.Tensor, single: bool):
        self.images, self.offsets, self.single = images, offsets, single

    def __getitem__(self, idx: torch.Tensor) -> dict[int, torch.Tensor]:
        parts = [(0, idx)] if self.single else _parts(idx, self.offsets)
        return {p: self.images[p].read(local) for p, local in parts if p in self.images}
