"""Task-end statistics under torch.distributed: every rank takes its own share of the work and the sums are added
up across ranks, so 2 processes give the same numbers as 1 (outside torch.distributed both are no-ops)."""
from __future__ import annotations

import torch
import torch.distributed as dist


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def rank_share(n: int) -> slice:
    """This rank's disjoint share of n items (samples, or batches): every item when not distributed."""
    rank, world = _world()
    return slice(rank, n, world)


def all_reduce_sums(sums: dict[str, torch.Tensor], count: int) -> tuple[dict[str, torch.Tensor], int]:
    """Add up every rank's sums (in place) and counts (each rank summed over its own share)."""
    if _world()[1] == 1:
        return sums, count
    for value in sums.values():
        dist.all_reduce(value)
    total = torch.tensor([count], dtype=torch.float64, device=next(iter(sums.values())).device)
    dist.all_reduce(total)
    return sums, int(total.item())
