"""Under DDP the online approaches average their gradients and feed every rank's memory the samples of all ranks:
2 gloo processes hold the same memory, equal to 1 process fed the same samples in rank order. Kept in its own light
module: spawned workers import only torch, cl.run.distributed and cl.approaches.replay.memory."""
import torch

from cl.run.distributed import average_gradients, gather_from_ranks, rank
from cl.approaches.replay.memory import EpisodicMemory
from data.stream import InputTransform, Split, Stream, Task
from tests.gloo import on_two_ranks


def _stream() -> Stream:
    empty = Split(torch.zeros(0, 1, 2, 2, dtype=torch.uint8), torch.zeros(0, dtype=torch.long))
    tasks = [Task(f"t{t}", [0, 1], empty, empty, empty, InputTransform((0.5,), (0.25,))) for t in range(2)]
    return Stream("tiny", tasks, (1, 2, 2))


def _batch(r: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    pixels = (torch.arange(12) * 7 + 31 * r + 5 * step) % 256
    x = InputTransform((0.5,), (0.25,)).normalize(pixels.view(3, 1, 2, 2).to(torch.uint8))
    return x, torch.arange(3) % 2 + r


def _memories_and_gradient() -> dict:
    memory = EpisodicMemory(_stream(), per_task=8, policy="reservoir", seed=4)
    for step in range(5):
        memory.add(1, *gather_from_ranks(*_batch(rank(), step)))
    weight = torch.nn.Parameter(torch.zeros(3))
    weight.grad = torch.full((3,), float(rank() + 1))
    average_gradients([weight])
    return {"x": memory.x.numpy(), "y": memory.y.numpy(), "filled": memory.filled, "grad": weight.grad.numpy()}


def test_two_ranks_hold_the_memory_one_process_builds_from_all_their_samples():
    results = on_two_ranks(_memories_and_gradient)
    single = EpisodicMemory(_stream(), per_task=8, policy="reservoir", seed=4)
    for step in range(5):
        parts = [_batch(r, step) for r in range(2)]
        single.add(1, torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]))
    for r in (0, 1):
        assert (results[r]["x"] == single.x.numpy()).all() and (results[r]["y"] == single.y.numpy()).all()
        assert results[r]["filled"] == single.filled == [0, 8]
        assert (results[r]["grad"] == 1.5).all()  # (1 + 2) / 2
