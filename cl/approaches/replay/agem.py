"""A-GEM, averaged GEM (Chaudhry et al., ICLR 2019): one reference gradient g_ref, from a batch drawn from the
memories of all earlier tasks; when the incoming batch's gradient g points against it (g·g_ref < 0) the step uses
its projection g − (g·g_ref / g_ref·g_ref) g_ref, which has a zero dot product with g_ref."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from cl.approaches.replay.base import ReplayApproach


def project_on_reference(g: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """A-GEM's projection; no host sync: the correction is scaled by min(g·g_ref, 0)."""
    dot = torch.dot(g, reference)
    return g - (dot.clamp(max=0) / torch.dot(reference, reference).clamp_min(1e-12)) * reference


class AGEM(ReplayApproach):
    def observe(self, x, y, t):
        for _ in range(self.inner_steps):
            replay = self.replay_batch(t)
            reference = self.flat_gradient(self.replay_loss(replay)) if replay is not None else None
            project = (lambda: self.set_gradient(project_on_reference(self.flat_gradient(), reference))
                       ) if reference is not None else None
            loss = F.cross_entropy(self(x, t), y)
            self.sgd_step(loss, adjust=project)
        return loss.detach()
