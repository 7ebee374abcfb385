"""DER, dark experience replay (Buzzega et al., NeurIPS 2020, "Dark Experience for General Continual Learning: a
Strong, Simple Baseline"): the memory keeps, with each sample, the logits the network gave it when the sample went by,
and every incoming batch trains with a batch replayed from the earlier tasks' memories on
    loss = CE(incoming batch) + alpha · MSE(net(x_mem), stored logits of x_mem).
DER++ (derpp.py) adds beta · CE on a second, independently drawn replay batch.

- Each sample's logits are those of its own task's head, from the training pass its batch's first step took (before
  that step). Heads of different widths (multi-head streams with unequal class counts): stored zero-padded to the
  widest head, and the MSE averages only the columns of the sample's own head.
- The memory is this project's: `n_memories` slots per task filled by reservoir sampling within the task (not
  the paper's one reservoir over the whole stream), and replay draws from the tasks before the current one, as ER's; the
  samples and logits of a chunk enter the memory after its steps (base.py)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from cl.approaches.replay.base import ReplayApproach
from cl.approaches.replay.memory import EpisodicMemory
from cl.config.options import Float, options
from cl.models.network import TaskNetwork
from cl.run.distributed import gather_from_ranks


def masked_mse(logits: torch.Tensor, stored: torch.Tensor, widths: torch.Tensor) -> torch.Tensor:
    """Mean squared error over each sample's first widths[i] columns (its head's): the plain MSE when every head has
    the full width. `logits` may be narrower than `stored` (a mixed batch pads to its widest head only) and hold
    -inf beyond a sample's head."""
    stored = stored[:, :logits.shape[1]]
    inside = torch.arange(logits.shape[1], device=logits.device) < widths[:, None]
    return torch.where(inside, logits - stored, 0.0).pow(2).sum() / inside.sum()


@options(alpha=Float(ge=0))
class DER(ReplayApproach):
    def __init__(self, net: TaskNetwork, alpha: float = 1.0, **kwargs):
        super().__init__(net, **kwargs)
        self.alpha = alpha
        self._seen_logits: list[torch.Tensor] = []  # the logits of the chunk's batches, until `remember` stores them

    def setup_stream(self, stream):
        widths = [self.net.head_for(t).out_features for t in range(len(stream))]
        self.logit_width = max(widths)
        super().setup_stream(stream)  # the memory: make_memory below
        self.register_buffer("head_width", torch.tensor(widths), persistent=False)

    def make_memory(self, stream, per_task: int) -> EpisodicMemory:
        return EpisodicMemory(stream, per_task, self.memory_policy, seed=self.seed,
                              extra={"logits": (self.logit_width,)})

    # --- training ---------------------------------------------------------------------------------------------------
    def observe(self, x, y, t):
        for step in range(self.inner_steps):
            logits = self(x, t)
            if step == 0:
                self._seen_logits.append(F.pad(logits.detach(), (0, self.logit_width - logits.shape[1])))
            loss = F.cross_entropy(logits, y) + self.replay_terms(t)
            self.sgd_step(loss)
        return loss.detach()

    def replay_terms(self, t: int) -> torch.Tensor | float:
        """alpha · MSE between the network's logits for a replay batch and the ones stored with it (0 on task 0)."""
        replay = self.replay_batch(t)
        if replay is None:
            return 0.0
        logits = self(replay.x, replay.task)
        return self.alpha * masked_mse(logits, replay.extra["logits"], self.head_width[replay.task])

    def remember(self, x, y, t):
        """The chunk's samples with the logits their batches' first steps saw."""
        logits = torch.cat(self._seen_logits)
        self._seen_logits.clear()
        x, y, logits = gather_from_ranks(x, y, logits)
        self.memory.add(t, x, y, logits=logits)

    def approach_info(self) -> dict:
        return {**super().approach_info(), "alpha": self.alpha}
