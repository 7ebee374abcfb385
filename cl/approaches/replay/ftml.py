"""FTML, the BCL code's Reptile meta-replay (`model/ftml.py`; its header says "MER Algorithm 1", but it is not MER).
Per incoming batch of task t (after the batch enters task t's memory):
    θ₀ ← θ; inner_steps × SGD on CE(batch); θ ← θ₀ + β(θ − θ₀)
    n_meta × [ u ~ uniform{0..t}; θ₀ ← θ; inner_steps × full-batch SGD on task u's whole memory; θ ← θ₀ + β(θ − θ₀) ]
The current task's memory is read while it trains (u may be t), so it is written batch by batch.
Test-time adaptation (`adapt`) as BCL's (`MetaReplay`)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from cl.approaches.replay.base import MetaReplay
from cl.config.options import Int, options
from cl.run.distributed import gather_from_ranks
from cl.models.network import TaskNetwork


@options(n_meta=Int(ge=1))
class FTML(MetaReplay):
    def __init__(self, net: TaskNetwork, n_meta: int = 1, **kwargs):
        super().__init__(net, **kwargs)
        self.n_meta = n_meta

    def observe(self, x, y, t):
        self.memory.add(t, *gather_from_ranks(x, y))
        start = self.weights()
        for _ in range(self.inner_steps):
            loss = F.cross_entropy(self(x, t), y)
            self.sgd_step(loss)
        self.interpolate(start)
        for _ in range(self.n_meta):
            u = int(torch.randint(t + 1, ()))
            memory_x, memory_y = self.memory.task(u)
            start = self.weights()
            for _ in range(self.inner_steps):
                self.sgd_step(F.cross_entropy(self(memory_x, u), memory_y))
            self.interpolate(start)
        return loss.detach()

    def remember(self, x, y, t):
        """Written batch by batch in `observe`: the meta steps may read the current task's memory."""
