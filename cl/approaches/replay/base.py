"""Online learning with an episodic memory (the GEM/BCL protocol: batch 10, one epoch, several optimizer steps per
incoming batch): the base of ER, A-GEM, GEM, iCaRL, BCL and FTML.

Each approach writes `observe(x, y, t)`: what happens to one incoming mini-batch, optimizer steps included (manual
optimization). At batch 10 a framework's per-step cost is as large as the step itself, so the loop hands each
`training_step` a chunk of `chunk_batches` consecutive mini-batches (the same samples in the same order as one
batch at a time) and `observe` runs on each slice of it: Lightning's per-batch hooks run once per chunk.
Mid-task checkpoints fall on chunk boundaries. A batch cap (debug mode's limit_train_batches) makes the loop hand
over single mini-batches, so that it caps mini-batches.

Under DDP each rank takes its share of the batches, gradients are averaged across ranks at every step, and every
memory receives the samples of all ranks (gathered), so it is the same on every rank, as are the replay draws (the
same seeded generator everywhere).

Approaches whose memory the current task reads while it trains (BCL-Dual's evaluation memory, FTML) write it in
`observe`, and iCaRL chooses its exemplars at the task's end: they override `remember`."""
from __future__ import annotations

import copy
from typing import Callable

import torch
import torch.nn.functional as F

from cl.approaches.base import ContinualApproach
from cl.config.options import Bool, Choice, Float, Int, options
from cl.run.distributed import average_gradients, gather_from_ranks, same_on_every_rank, world_size
from cl.errors import TrainingError
from cl.approaches.replay.memory import POLICIES, EpisodicMemory
from cl.models.network import TaskNetwork
from data.tensor_loader import BatchSource


@options(n_memories=Int(ge=1), memory_policy=Choice(POLICIES), replay_batch_size=Int(ge=1),
         inner_steps=Int(ge=1), chunk_batches=Int(ge=1), seed=Int(ge=0))
class ReplayApproach(ContinualApproach):
    def __init__(self, net: TaskNetwork, n_memories: int = 256, memory_policy: str = "ring",
                 replay_batch_size: int = 10, inner_steps: int = 1, chunk_batches: int = 50, seed: int = 0,
                 **optimizer):
        super().__init__(net, **optimizer)
        self.automatic_optimization = False
        self.n_memories, self.memory_policy = n_memories, memory_policy
        self.replay_batch_size, self.inner_steps = replay_batch_size, inner_steps
        self.batches_per_step = chunk_batches
        self.seed = seed

    def setup_stream(self, stream):
        super().setup_stream(stream)
        self.memory = self.make_memory(stream, self.replay_slots())

    def replay_slots(self) -> int:
        """Slots per task of the replay memory (BCL-Dual keeps some of `n_memories` for its evaluation memory)."""
        return self.n_memories

    def make_memory(self, stream, per_task: int) -> EpisodicMemory:
        return EpisodicMemory(stream, per_task, self.memory_policy, seed=self.seed)

    # --- the online loop ------------------------------------------------------------------------------------------
    def training_step(self, batch, batch_idx):
        x, y, task = batch
        losses = [self.observe(x[i:i + self.batch_size], y[i:i + self.batch_size], int(task))
                  for i in range(0, len(y), self.batch_size)]
        self.remember(x, y, int(task))
        total = torch.stack(losses).sum()
        self._loss_sum = total if self._loss_sum is None else self._loss_sum + total
        self._n_batches += len(losses)

    def observe(self, x: torch.Tensor, y: torch.Tensor, t: int) -> torch.Tensor:
        """Learn from one incoming mini-batch of task t; returns its (detached) training loss."""
        raise NotImplementedError

    def remember(self, x: torch.Tensor, y: torch.Tensor, t: int) -> None:
        """Offer a chunk's samples to the memory, after its steps. Nothing reads the current task's memory while
        the task trains (replay and constraints come from earlier tasks), and a ring or reservoir fed the chunk
        at once ends as if fed batch by batch: one write per chunk instead of one per batch."""
        self.memory.add(t, *gather_from_ranks(x, y))

    def on_train_start(self):
        super().on_train_start()
        # the bare optimizer, stepped directly: Lightning's wrapper costs as much as a batch-10 step; its step
        # counter (global_step, which logging and periodic checkpoints use) is advanced here instead
        self.optimizer = self.trainer.optimizers[0]
        self.step_progress = self.trainer.fit_loop.epoch_loop.manual_optimization.optim_step_progress

    def sgd_step(self, loss: torch.Tensor, zero_grad: bool = True, adjust: Callable[[], None] | None = None) -> None:
        """One optimizer step on `loss` (gradients accumulate onto what is there when `zero_grad` is false);
        `adjust` may rewrite the gradients between the backward pass and the step (A-GEM, GEM). The hooks Lightning
        runs around a step run here too, as there (a regularizer's penalty mixed into a replay approach acts)."""
        if zero_grad:
            self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if world_size() > 1:  # DDP's own hooks do not run inside training_step
            average_gradients(self.trained())
        if adjust is not None:
            adjust()
        self.step_progress.increment_ready()
        self.call_before_optimizer_step_hooks(self.optimizer)
        self.optimizer.step()
        self.step_progress.increment_completed()
        self.on_after_optimizer_step()

    def on_train_end(self):
        super().on_train_end()
        if world_size() > 1:  # every rank fed its memory the same gathered samples: check that it holds
            checksum = sum(float(b.double().sum()) for b in self.buffers()) + sum(self.memory.filled)
            if not same_on_every_rank(torch.tensor(checksum)):
                raise TrainingError(f"the episodic memories differ across ranks after task {self.task_id + 1}")

    # --- replay -----------------------------------------------------------------------------------------------------
    def replay_batch(self, t: int, n: int | None = None):
        """A batch drawn from the memories of the tasks before t (None for the first task)."""
        return self.memory.sample(range(t), n or self.replay_batch_size) if t > 0 else None

    def replay_loss(self, replay) -> torch.Tensor | float:
        """Cross-entropy on a replay batch, each sample through its own task's head."""
        if replay is None:
            return 0.0
        return F.cross_entropy(self(replay.x, replay.task), replay.y)

    def forward(self, x, task):
        if isinstance(task, torch.Tensor) and not self.net.multi_head:
            task = 0  # a shared head: one forward for the whole mixed batch
        return self.net(x, task)

    # --- gradients as flat vectors (A-GEM, GEM) ------------------------------------------------------------------
    def trained(self) -> list[torch.nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def flat_gradient(self, loss: torch.Tensor | None = None) -> torch.Tensor:
        """The gradient of `loss` (default: what `.grad` holds) over the trained parameters, as one vector."""
        params = self.trained()
        grads = torch.autograd.grad(loss, params, allow_unused=True) if loss is not None else [p.grad for p in params]
        return torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1) for p, g in zip(params, grads)])

    def set_gradient(self, flat: torch.Tensor) -> None:
        """Write a flat vector back into the trained parameters' `.grad`."""
        offset = 0
        for p in self.trained():
            n = p.numel()
            p.grad = flat[offset:offset + n].view_as(p).clone()
            offset += n

    def approach_info(self) -> dict:
        return {"memory_samples": sum(self.memory.filled), "memory_policy": self.memory_policy}


@options(beta=Float(gt=0, le=1), adapt=Bool(), adapt_lr=Float(gt=0), interpolate_buffers=Bool())
class MetaReplay(ReplayApproach):
    """Replay with Reptile-style interpolation θ ← θ₀ + β(θ − θ₀) after each batch's inner steps (BCL, FTML), and
    their test-time adaptation (`adapt`): each seen task is evaluated with a copy of the network after `inner_steps`
    full-batch SGD steps at `adapt_lr` on that task's memory (in eval mode, as the code's copy of a network in
    evaluation); the network itself is left as it is."""

    def __init__(self, net: TaskNetwork, beta: float = 0.3, adapt: bool = False, adapt_lr: float = 0.1,
                 interpolate_buffers: bool = False, **kwargs):
        super().__init__(net, **kwargs)
        self.beta, self.adapt, self.adapt_lr, self.interpolate_buffers = beta, adapt, adapt_lr, interpolate_buffers

    # --- Reptile interpolation ------------------------------------------------------------------------------------------
    def on_train_start(self):
        super().on_train_start()
        # listed once per task (the network's tensors stay the same objects): twice per step is a cost at batch 10
        tensors = [p.detach() for p in self.net.parameters()]
        if self.interpolate_buffers:  # the code interpolates its whole state_dict, BatchNorm statistics included
            tensors += [b for b in self.net.buffers() if b.is_floating_point()]
        self.interpolated = tensors

    def weights(self) -> list[torch.Tensor]:
        return [p.clone() for p in self.interpolated]

    @torch.no_grad()
    def interpolate(self, start: list[torch.Tensor]) -> None:
        """θ ← θ₀ + β(θ − θ₀), as a lerp: β = 1 keeps θ exactly."""
        torch._foreach_lerp_(start, self.interpolated, self.beta)
        torch._foreach_copy_(self.interpolated, start)

    # --- test-time adaptation --------------------------------------------------------------------------------------------
    def adapted_copy(self, task: int) -> torch.nn.Module:
        """A copy of the network after `inner_steps` full-batch SGD steps on `task`'s memory (in eval mode, as the
        code's copy of a network in evaluation)."""
        net = copy.deepcopy(self.net).eval()
        x, y = self.memory.task(task)
        opt = torch.optim.SGD(net.parameters(), lr=self.adapt_lr)
        with torch.enable_grad():
            for _ in range(self.inner_steps):
                opt.zero_grad(set_to_none=True)
                F.cross_entropy(net(x, task), y).backward()
                opt.step()
        return net

    def accuracy(self, source: BatchSource) -> float:
        if not (self.adapt and source.task <= self.task_id and self.memory.filled[source.task]):
            return super().accuracy(source)
        own, self.net = self.net, self.adapted_copy(source.task)
        try:
            return super().accuracy(source)
        finally:
            self.net = own

    def approach_info(self) -> dict:
        return {**super().approach_info(), "adapt": self.adapt}
