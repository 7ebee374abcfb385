"""Mini-batches drawn by index from tensors that already live on the training device.

`TaskBatches` replaces a DataLoader for datasets that fit in memory (MNIST, CIFAR scale): one randperm per epoch,
one gather + one vectorized transform per batch. Under DDP each rank takes an equal, disjoint share of the
epoch's permutation (every rank draws the same permutation from the shared seed).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import torch
import torch.distributed as dist


@dataclass
class BatchSource:
    """One task's share of a batch stream: inputs, the labels to train on, the task id and the input transform."""

    x: torch.Tensor
    y: torch.Tensor
    task: int
    transform: Callable[[torch.Tensor], torch.Tensor]

    def to(self, device) -> "BatchSource":
        return BatchSource(self.x.to(device), self.y.to(device), self.task, self.transform)

    def head(self, n: int | None) -> "BatchSource":
        """The first `n` samples (all when `n` is None), e.g. to cap evaluation in debug runs."""
        if n is None or n >= len(self.y):
            return self
        return BatchSource(self.x[:n], self.y[:n], self.task, self.transform)


class TaskBatches:
    """Iterable of `(x, y, task)` batches; `task` is an int when the batch holds one task, else a LongTensor."""

    def __init__(self, sources: Sequence[BatchSource], batch_size: int, shuffle: bool = False, seed: int = 0,
                 drop_last: bool = False):
        if not sources:
            raise ValueError("TaskBatches needs at least one source")
        self.sources = list(sources)
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.epoch = 0
        sizes = torch.tensor([len(s.y) for s in self.sources])
        self.offsets = torch.cat([torch.zeros(1, dtype=torch.long), sizes.cumsum(0)])
        self.n = int(self.offsets[-1])
        self.single = len(self.sources) == 1

    # --- distributed sharding -------------------------------------------------------------------------------
    @staticmethod
    def _world() -> tuple[int, int]:
        if dist.is_available() and dist.is_initialized():
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

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, int | torch.Tensor]]:
        order = self._rank_indices()
        self.epoch += 1
        device = self.sources[0].x.device
        order = order.to(device)
        for start in range(0, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            if self.drop_last and len(idx) < self.batch_size:
                break
            yield self._gather(idx)

    def _gather(self, idx: torch.Tensor):
        if self.single:
            s = self.sources[0]
            return s.transform(s.x[idx]), s.y[idx], s.task
        # several tasks: group the batch by source so each gets its own transform
        offsets = self.offsets.to(idx.device)
        part = torch.bucketize(idx, offsets[1:], right=True)
        xs, ys, ts = [], [], []
        for p in part.unique().tolist():
            s = self.sources[p]
            local = idx[part == p] - offsets[p]
            xs.append(s.transform(s.x[local]))
            ys.append(s.y[local])
            ts.append(torch.full((len(local),), s.task, dtype=torch.long, device=idx.device))
        return torch.cat(xs), torch.cat(ys), torch.cat(ts)
