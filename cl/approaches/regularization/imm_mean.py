"""Mean-IMM, incremental moment matching (Lee et al., NeurIPS 2017), as in the HAT baseline code (joansj/hat
src/approaches/imm_mean.py): task t trains from the merged model θ_{t−1} with L2-transfer, loss + λ·½‖θ − θ_{t−1}‖²
(the pull acts at each step, a step toward θ_{t−1} before a plain SGD step, else its gradient added to p.grad:
cl/approaches/regularization/regularizer.py), and at its end the model becomes the running uniform mean of the task
models,

    θ_t ← (θ + t·θ_{t−1}) / (t + 1).

HAT's merge really changes the weights (it rewrites the state dict and loads it), so unlike mode-IMM there is no
no-op switch. Only the shared parameters are merged and pulled: HAT averages every parameter, which for a multi-head
net also shrinks the new task's head towards its initialization (docs/regularizers.md).
"""
from __future__ import annotations

import torch

from cl.approaches.regularization.regularizer import ImportanceRegularizer
from cl.models.network import TaskNetwork


class IMMMean(ImportanceRegularizer):
    def __init__(self, net: TaskNetwork, lamb: float = 1e-4, **optimizer):
        super().__init__(net, lamb=lamb, **optimizer)
        self.terms.add(uniform=True)  # L2-transfer: Ω = 1, anchor = the merged model

    @property
    def penalty_scale(self) -> float:
        return self.lamb / 2

    @torch.no_grad()
    def merge(self, merged: int) -> None:
        """Fold the model just trained into the merge of the `merged` earlier task models (the anchor)."""
        if merged:
            torch._foreach_lerp_(self.parameter_values(), self.terms[0].anchor.tensors(), merged / (merged + 1))

    @torch.no_grad()
    def consolidate(self, t: int) -> None:
        self.merge(int(self.tasks_consolidated))
        self.terms[0].anchor.copy_(self.parameter_values())
