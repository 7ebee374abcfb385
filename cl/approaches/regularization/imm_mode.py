"""Mode-IMM, incremental moment matching (Lee et al., NeurIPS 2017): training as mean-IMM (L2-transfer from the merged
model, cl/approaches/regularization/imm_mean.py), but the merge weights each task model by its diagonal Fisher,

    θ = Σ_k F_k θ_k / Σ_k F_k,   in running form   θ ← (F_{<t}·θ_{t−1} + F_t·θ) / (F_{<t} + F_t),

keeping θ where no task has Fisher information (F_{<t} + F_t = 0). The Fisher estimator and its knobs are EWC's.

The HAT and BLIP baseline codes assign the merged value to a local name, so their merge changes nothing and the
method is L2-transfer alone (docs/regularizers.md, imm_mode). `merge_noop: true` reproduces that, for their
published numbers.
"""
from __future__ import annotations

import torch

from cl.approaches.regularization.ewc import FisherRegularizer
from cl.approaches.regularization.imm_mean import IMMMean
from cl.approaches.regularization.regularizer import ParamTensors
from cl.config.options import Bool, options
from cl.models.network import TaskNetwork


@options(merge_noop=Bool())
class IMMMode(IMMMean, FisherRegularizer):
    def __init__(self, net: TaskNetwork, lamb: float = 0.01, merge_noop: bool = False, **fisher_and_optimizer):
        super().__init__(net, lamb=lamb, **fisher_and_optimizer)
        self.merge_noop = merge_noop
        self.fisher_sum = ParamTensors(self.regularized)  # Σ_k F_k over the tasks merged so far

    @torch.no_grad()
    def merge(self, merged: int) -> None:
        fisher = self.task_fisher(self.task_id)
        fisher = [fisher[n] for n in self.fisher_sum.names]
        earlier = self.fisher_sum.tensors()
        if merged and not self.merge_noop:
            for param, anchor, f_old, f_new in zip(self.parameter_values(), self.terms[0].anchor.tensors(), earlier,
                                                   fisher):
                total = f_old + f_new
                mode = (f_old * anchor + f_new * param) / total.clamp(min=torch.finfo(total.dtype).tiny)
                param.copy_(torch.where(total > 0, mode, param))
        torch._foreach_add_(earlier, fisher)

    def importances(self) -> dict[str, torch.Tensor]:
        """The summed Fisher that weights the merge (the training penalty itself is an unweighted L2 pull)."""
        return {n: v.clone() for n, v in self.fisher_sum.as_dict().items()}
