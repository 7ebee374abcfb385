"""BCL-Single (Pham et al., "Bilevel Continual Learning", 2020; `model/bcl_single.py`): Reptile-smoothed experience
replay with knowledge distillation. Per incoming batch of task t:
    θ₀ ← θ;  inner_steps × [ L = CE(batch) + CE(replay) + memory_strength · KL(replay) ; SGD step ];
    θ ← θ₀ + β (θ − θ₀)
The replay batch comes from the memories of tasks < t (ring of the last samples of each task); KL compares
log_softmax(z / T) of each replayed sample's own head with its soft target softmax(z_end / T), recorded once from
the network as it was at the end of that sample's task. KL as the code computes it: PyTorch's 'mean' reduction
(over samples × classes), no T² factor.

Test-time adaptation (`adapt`): each seen task is evaluated with a copy of the network adapted by `inner_steps`
full-batch SGD steps at `adapt_lr` on that task's memory; the network itself is left as it is.

Fixed against the code (docs/replay.md): soft targets in eval mode (`soft_targets_train_mode` restores the code's
train-mode pass), BatchNorm buffers not interpolated (`interpolate_buffers` restores it), memories filled as the
samples arrive (not with copies of a task's first sample), every random draw seeded."""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from cl.approaches.replay import ReplayApproach
from cl.models.network import TaskNetwork
from data.tensor_loader import BatchSource


def distillation_kl(logits: torch.Tensor, soft_targets: torch.Tensor, T: float) -> torch.Tensor:
    """nn.KLDivLoss()(log_softmax(z / T), targets) with the default 'mean' reduction: Σ p (log p − log q) over
    samples × classes, divided by their number."""
    log_q = F.log_softmax(logits / T, dim=1)
    return (torch.xlogy(soft_targets, soft_targets) - soft_targets * log_q).sum() / soft_targets.numel()


class BCLSingle(ReplayApproach):
    def __init__(self, net: TaskNetwork, beta: float = 0.3, temperature: float = 5.0, memory_strength: float = 100.0,
                 adapt: bool = False, adapt_lr: float = 0.1, soft_targets_train_mode: bool = False,
                 interpolate_buffers: bool = False, **kwargs):
        super().__init__(net, **kwargs)
        self.beta, self.temperature, self.memory_strength = beta, temperature, memory_strength
        self.adapt, self.adapt_lr = adapt, adapt_lr
        self.soft_targets_train_mode, self.interpolate_buffers = soft_targets_train_mode, interpolate_buffers

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

    # --- Reptile interpolation ------------------------------------------------------------------------------------------
    def interpolated(self) -> list[torch.Tensor]:
        tensors = [p for p in self.net.parameters()]
        if self.interpolate_buffers:  # the code interpolates its whole state_dict, BatchNorm statistics included
            tensors += [b for b in self.net.buffers() if b.is_floating_point()]
        return tensors

    def weights(self) -> list[torch.Tensor]:
        return [p.detach().clone() for p in self.interpolated()]

    @torch.no_grad()
    def interpolate(self, start: list[torch.Tensor]) -> None:
        """θ ← θ₀ + β(θ − θ₀), as a lerp: β = 1 keeps θ exactly."""
        now = [p.detach() for p in self.interpolated()]
        torch._foreach_lerp_(start, now, self.beta)
        torch._foreach_copy_(now, start)

    # --- task end: the soft targets of the task's memory ---------------------------------------------------------------
    def on_train_end(self):
        super().on_train_end()
        t = self.task_id
        x, _ = self.memory.task(t)
        was_training = self.training
        self.train(self.soft_targets_train_mode)
        with torch.no_grad():
            logits = self(x, t)
        self.train(was_training)
        self.soft_targets[t, :len(x), :logits.shape[1]] = F.softmax(logits / self.temperature, dim=1)

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
