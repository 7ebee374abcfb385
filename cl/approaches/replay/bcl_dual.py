"""BCL-Dual (Pham et al., "Bilevel Continual Learning", 2020; `model/bcl_dual.py`): BCL-Single's distilled replay as
the inner problem of a bilevel step whose outer problem is a held-out evaluation memory. Each task's memory is split
in two: `n_val` of the slots (a fraction) hold the evaluation ("generalisation") memory, the rest the replay memory.

Per incoming batch (x, y) of task t:
1. x[0] goes to task t's evaluation memory (a ring); once that is full, the sample it evicts joins the training
   batch in its place, so every sample is held out for a while and trained on once, and the evaluation memory never
   holds a sample of the step's own training batch. The training batch then goes to the replay memory (a ring).
2. `n_meta` rounds of: θ₀ ← θ; `inner_steps` SGD steps on CE(batch) + CE(replay) + memory_strength · KL(replay)
   (replay from tasks < t, min(replay slots, replay_batch_size) samples); one outer SGD step on the CE of
   min((t+1)·evaluation slots, replay_batch_size) samples of the evaluation memories of tasks ≤ t (first order: the
   gradient taken at the fast weights); θ ← θ₀ + β(θ − θ₀).

`accumulate_inner_grads: true` keeps the code's gradients, never zeroed between the inner steps nor before the outer
step (so each step also re-applies the earlier ones' gradients); false zeroes them before every step.
`fill_with_first_sample: true` keeps the code's start of a task: on its first batch every slot of both memories
holds a copy of one sample (the evaluation memory's of the batch's first, held-out sample, the replay memory's of the
first training sample), so the evaluation memory's first n_val − 1 evictions train that sample again and the first
outer steps see only it; false fills the memories as the samples arrive. The evaluation memory draw no longer filters
the replay positions (the code's index filter mixed two position spaces, dropping replay samples at random)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from cl.approaches.replay.bcl_single import BCLSingle
from cl.config.options import Bool, Float, Int, options
from cl.run.distributed import gather_from_ranks, rank, world_size
from cl.errors import ConfigError
from cl.models.network import TaskNetwork


@options(n_val=Float(gt=0, lt=1), n_meta=Int(ge=1), accumulate_inner_grads=Bool(), fill_with_first_sample=Bool())
class BCLDual(BCLSingle):
    def __init__(self, net: TaskNetwork, n_val: float = 0.2, n_meta: int = 2, accumulate_inner_grads: bool = False,
                 fill_with_first_sample: bool = False, **kwargs):
        super().__init__(net, **kwargs)
        self.n_val, self.n_meta, self.accumulate_inner_grads = n_val, n_meta, accumulate_inner_grads
        self.fill_with_first_sample = fill_with_first_sample
        self.val_slots = int(n_val * self.n_memories)
        if self.val_slots < 1 or self.val_slots >= self.n_memories:
            raise ConfigError(f"approach.n_val={n_val} of approach.n_memories={self.n_memories} leaves "
                              f"{self.val_slots} evaluation and {self.n_memories - self.val_slots} replay slots; "
                              f"both need at least 1")

    def setup_stream(self, stream):
        super().setup_stream(stream)
        self.eval_memory = self.make_memory(stream, self.val_slots)

    def replay_slots(self) -> int:
        return self.n_memories - self.val_slots

    def observe(self, x, y, t):
        held_out = gather_from_ranks(x[:1], y[:1])  # every rank's first sample
        if self.fill_with_first_sample and self.eval_memory.seen[t] == 0:
            self.eval_memory.fill(t, *held_out)
            self.eval_memory.add(t, *held_out)
            evicted = None  # the code trains on no copy in the task's first batch
        else:
            evicted = self.eval_memory.add(t, *held_out).evicted
        x, y = x[1:], y[1:]
        if evicted is not None:  # what this rank's sample pushed out joins its training batch
            x, y = torch.cat([x, evicted[0][rank()::world_size()]]), torch.cat([y, evicted[1][rank()::world_size()]])
        training = gather_from_ranks(x, y)
        if self.fill_with_first_sample and self.memory.seen[t] == 0 and len(training[1]):
            self.memory.fill(t, *training)
        self.memory.add(t, *training)
        self.optimizer.zero_grad(set_to_none=True)
        for _ in range(self.n_meta):
            start = self.weights()
            for _ in range(self.inner_steps):
                if len(y):
                    self.sgd_step(self.inner_loss(x, y, t), zero_grad=not self.accumulate_inner_grads)
            outer = self.eval_memory.sample(range(t + 1), min((t + 1) * self.val_slots, self.replay_batch_size))
            outer_loss = F.cross_entropy(self(outer.x, outer.task), outer.y)
            self.sgd_step(outer_loss, zero_grad=not self.accumulate_inner_grads)
            self.optimizer.zero_grad(set_to_none=True)
            self.interpolate(start)
        return outer_loss.detach()

    def remember(self, x, y, t):
        """Both memories were written batch by batch in `observe` (the evaluation memory decides what trains)."""

    def approach_info(self) -> dict:
        return {**super().approach_info(), "eval_memory_samples": sum(self.eval_memory.filled)}
