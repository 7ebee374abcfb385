"""Online EWC (Schwarz et al., "Progress & Compress", ICML 2018; Huszár 2018): one anchor, the parameters at the end
of the last task, and one running Fisher F̃ ← γ·F̃ + F_t; while training the next task the objective gets
(λ/2)·Σ_i F̃_i (θ_i − θ*_i)², applied at each step as cl/approaches/regularization/regularizer.py describes (a step
toward the anchor before a plain SGD step, else its gradient added to p.grad). The state does not grow with the
tasks. γ = 1 sums the Fishers, as BLIP's RL baseline does. The Fisher estimator and its knobs are EWC's
(cl/approaches/regularization/ewc.py). `online_update` is the update itself, which RL's online EWC
(rl/approaches.py) applies too."""
from __future__ import annotations

import torch

from cl.approaches.regularization.ewc import FisherRegularizer
from cl.approaches.regularization.regularizer import QuadraticTerm
from cl.config.options import Float, options
from cl.models.network import TaskNetwork


@torch.no_grad()
def online_update(term: QuadraticTerm, fisher: dict[str, torch.Tensor], gamma: float,
                  anchor: list[torch.Tensor]) -> None:
    """Online EWC's consolidation of a task into its one running term: F̃ ← γ·F̃ + F_t (in place, per parameter
    name) and θ* ← `anchor` (the parameters now)."""
    for name, value in term.importance.as_dict().items():
        value.mul_(gamma).add_(fisher[name])
    term.anchor.copy_(anchor)


@options(gamma=Float(ge=0, le=1))
class OnlineEWC(FisherRegularizer):
    def __init__(self, net: TaskNetwork, lamb: float = 5000.0, gamma: float = 1.0, **fisher_and_optimizer):
        super().__init__(net, lamb=lamb, **fisher_and_optimizer)
        self.gamma = gamma
        self.terms.add()

    @property
    def penalty_scale(self) -> float:
        return self.lamb / 2

    def consolidate(self, t: int) -> None:
        online_update(self.terms[0], self.task_fisher(t), self.gamma, self.parameter_values())
