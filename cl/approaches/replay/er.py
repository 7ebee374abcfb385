"""ER, experience replay (the ER of the GEM/BCL/CTN codes; Chaudhry et al. 2019, "On tiny episodic memories"): every
incoming batch trains together with a batch drawn from the memories of the earlier tasks, `inner_steps` times,
loss = CE(incoming batch) + CE(replay batch); then the batch is offered to the memory (ring or reservoir)."""
from __future__ import annotations

import torch.nn.functional as F

from cl.approaches.replay.base import ReplayApproach


class ER(ReplayApproach):
    def observe(self, x, y, t):
        for _ in range(self.inner_steps):
            loss = F.cross_entropy(self(x, t), y) + self.replay_loss(self.replay_batch(t))
            self.sgd_step(loss)
        return loss.detach()
