"""Online EWC (Schwarz et al., "Progress & Compress", ICML 2018; Huszár 2018): one anchor, the parameters at the end
of the last task, and one running Fisher F̃ ← γ·F̃ + F_t; while training the next task the loss gets
(λ/2)·Σ_i F̃_i (θ_i − θ*_i)². The state does not grow with the tasks. γ = 1 sums the Fishers, as BLIP's RL baseline
does. The Fisher estimator and its knobs are EWC's (cl/approaches/regularization/ewc.py)."""
from __future__ import annotations

from cl.approaches.regularization.ewc import FisherRegularizer
from cl.models.network import TaskNetwork


class OnlineEWC(FisherRegularizer):
    def __init__(self, net: TaskNetwork, lamb: float = 5000.0, gamma: float = 1.0, **fisher_and_optimizer):
        super().__init__(net, lamb=lamb, **fisher_and_optimizer)
        self.gamma = gamma
        self.terms.add()

    @property
    def penalty_scale(self) -> float:
        return self.lamb / 2

    def consolidate(self, t: int) -> None:
        fisher = self.task_fisher(t)
        term = self.terms[0]
        for name, value in term.importance.as_dict().items():
            value.mul_(self.gamma).add_(fisher[name])
        term.anchor.copy_(self.parameter_values())
