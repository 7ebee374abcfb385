"""Run a function in 2 spawned processes joined by a gloo process group (CPU DDP), for tests that compare what each
rank computes with one process. A light module: spawned workers import only torch, this file and the test's own
module (which must not import the pipeline)."""
from __future__ import annotations

import socket
from typing import Callable

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _worker(rank: int, world: int, port: int, compute: Callable, queue):
    torch.set_num_threads(1)  # the processes share the cores
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        queue.put((rank, compute()))
    finally:
        dist.destroy_process_group()


def on_two_ranks(compute: Callable, timeout: float = 120) -> dict[int, object]:
    """compute() on ranks 0 and 1 (a module-level function returning something picklable); the results by rank."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(rank, 2, port, compute, queue)) for rank in range(2)]
    for p in procs:
        p.start()
    results = dict(queue.get(timeout=timeout) for _ in procs)
    for p in procs:
        p.join(timeout=30)
    return results
