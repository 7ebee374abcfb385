"""Work shared across ranks under torch.distributed: task-end statistics (every rank takes its own share of the work
and the sums are added up, so 2 processes give the same numbers as 1), evaluation (each rank scores its block of
the test batches, the counts are added up), the online approaches' gradients (averaged) and the samples their
memories receive (gathered, so every rank's memory is the same). Outside torch.distributed all of them are
no-ops."""
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


def rank_block(n: int) -> slice:
    """This rank's contiguous share of n items (evaluation batches): consecutive blocks in rank order, as equal as
    n allows; every item when not distributed."""
    rank, world = _world()
    return slice(rank * n // world, (rank + 1) * n // world)


def sum_over_ranks(counts: list[int], device) -> list[int]:
    """Integer counts added up over the ranks, exactly, in one all-reduce (a tensor on `device`, which the
    process group's backend must take: CUDA for nccl)."""
    if _world()[1] == 1:
        return counts
    total = torch.tensor(counts, dtype=torch.int64, device=device)
    dist.all_reduce(total)
    return total.tolist()


def all_reduce_sums(sums: dict[str, torch.Tensor], count: int) -> tuple[dict[str, torch.Tensor], int]:
    """Add up every rank's sums (in place) and counts (each rank summed over its own share)."""
    if _world()[1] == 1:
        return sums, count
    for value in sums.values():
        dist.all_reduce(value)
    total = torch.tensor([count], dtype=torch.float64, device=next(iter(sums.values())).device)
    dist.all_reduce(total)
    return sums, int(total.item())


def world_size() -> int:
    return _world()[1]


def rank() -> int:
    return _world()[0]


def average_gradients(params: list[torch.Tensor]) -> None:
    """Average `.grad` over the ranks, in one all-reduce of the flattened gradients."""
    world = world_size()
    grads = [p.grad for p in params if p.grad is not None]
    if world == 1 or not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat.div_(world)
    torch._foreach_copy_(grads, [chunk.view_as(g) for chunk, g in zip(flat.split([g.numel() for g in grads]), grads)])


def gather_from_ranks(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Every rank's tensors concatenated in rank order (each rank's must have the same shape)."""
    world = world_size()
    if world == 1:
        return tensors
    out = []
    for t in tensors:
        parts = [torch.empty_like(t) for _ in range(world)]
        dist.all_gather(parts, t.contiguous())
        out.append(torch.cat(parts))
    return tuple(out)


def same_on_every_rank(value: torch.Tensor) -> bool:
    """Whether every rank holds this same (float64-summable) value."""
    if world_size() == 1:
        return True
    parts = gather_from_ranks(value.double().reshape(1))[0]
    return bool((parts == parts[0]).all())
