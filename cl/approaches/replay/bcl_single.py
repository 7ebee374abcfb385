"""BCL-Single (Pham et al., "Bilevel Continual Learning", 2020; `model/bcl_single.py`): Reptile-smoothed experience
replay with knowledge distillation. Per incoming batch of task t:
    θ₀ ← θ;  inner_steps × [ L = CE(batch) + CE(replay) + memory_strength · KL(replay) ; SGD step ];
    θ ← θ₀ + β (θ − θ₀)
The replay batch comes from the memories of tasks < t (ring of the last samples of each task); KL compares
log_softmax(z / T) of each replayed sample's own head with its soft target softmax(z_end / T), recorded once from
the network as it was at the end of that sample's task. KL as the code computes it: PyTorch's 'mean' reduction
(over samples × classes), no T² factor.

Test-time adaptation (`adapt`, see `MetaReplay`).

Fixed against the code (docs/replay.md): soft targets in eval mode (`soft_targets_train_mode` restores the code's
train-mode pass), BatchNorm buffers not interpolated (`interpolate_buffers` restores it), memories filled as the
samples arrive (not with copies of a task's first sample), every random draw seeded."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from cl.approaches.replay.base import MetaReplay
from cl.config.options import Bool, Float, options
from cl.models.modes import in_mode
from cl.models.network import TaskNetwork


def distillation_kl(logits: torch.Tensor, soft_targets: torch.Tensor, T: float) -> torch.Tensor:
    """nn.KLDivLoss()(log_softmax(z / T), targets) with the default 'mean' reduction: Σ p (log p − log q) over
    samples × classes, divided by their number."""
    log_q = F.log_softmax(logits / T, dim=1)
    return (torch.xlogy(soft_targets, soft_targets) - soft_targets * log_q).sum() / soft_targets.numel()


@options(temperature=Float(gt=0), memory_strength=Float(ge=0), soft_targets_train_mode=Bool())
class BCLSingle(MetaReplay):
    def __init__(self, net: TaskNetwork, temperature: float = 5.0, memory_strength: float = 100.0,
                 soft_targets_train_mode: bool = False, **kwargs):
        super().__init__(net, **kwargs)
        self.temperature, self.memory_strength = temperature, memory_strength
        self.soft_targets_train_mode = soft_targets_train_mode

    def setup_stream(self, stream):
        super().setup_stream(stream)
        width = max(h.out_features for h in self.net.heads)
        self.register_buffer("soft_targets", torch.zeros(len(stream), self.memory.per_task, width))

    # --- one incoming batch -------------------------------------------------------------------------------------------
    def observe(self, x, y, t):
        start = self.weights()
        for _ in range(self.inner_steps):
            loss = self.inner_loss(x, y, t)
            self.sgd_step(loss)
        self.interpolate(start)
        return loss.detach()

    def inner_loss(self, x, y, t) -> torch.Tensor:
        """CE on the incoming batch, plus CE and distillation on a replay batch of the earlier tasks."""
        loss = F.cross_entropy(self(x, t), y)
        replay = self.replay_batch(t, min(self.memory.per_task, self.replay_batch_size))
        if replay is not None:
            logits = self(replay.x, replay.task)
            loss = loss + F.cross_entropy(logits, replay.y)
            if self.memory_strength:
                targets = self.soft_targets[replay.task, replay.slot, :logits.shape[1]]
                loss = loss + self.memory_strength * distillation_kl(logits, targets, self.temperature)
        return loss

    # --- task end: the soft targets of the task's memory ---------------------------------------------------------------
    def on_train_end(self):
        super().on_train_end()
        t = self.task_id
        x, _ = self.memory.task(t)
        with in_mode(self, self.soft_targets_train_mode), torch.no_grad():
            logits = self(x, t)
        self.soft_targets[t, :len(x), :logits.shape[1]] = F.softmax(logits / self.temperature, dim=1)
