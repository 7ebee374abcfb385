"""EWC, elastic weight consolidation (Kirkpatrick et al., PNAS 2017): while training task t the objective gets

    (λ/2) · Σ_{τ<t} Σ_i F_τ,i (θ_i − θ*_τ,i)²

with θ*_τ the parameters at the end of task τ and F_τ the diagonal Fisher there (docs/regularizers.md). The penalty
acts at each step, not through the loss: a step toward the anchors before a plain SGD step, else its gradient added
to p.grad (cl/approaches/regularization/regularizer.py).

fisher_merge:
- none (offline EWC, the paper): one (F_τ, θ*_τ) term per task; the state grows linearly with the tasks.
- mean (the HAT/BLIP baseline code): a single anchor, the last model, and F ← (F·t + F_new)/(t+1).

The Fisher is by default the true one, exact, per sample (`fisher_estimator: exact`); the estimators of the official
baseline codes are kept behind `fisher_estimator` because their published numbers came from them (cl/stats/importance.py).
The GEM/BCL code's penalty has no ½: its memory_strength s is λ = 2s here.
"""
from __future__ import annotations

from cl.approaches.regularization.regularizer import ImportanceRegularizer
from cl.config.options import Choice, Int, options
from cl.stats.importance import FisherOptions, fisher_diagonal
from cl.models.network import TaskNetwork


@options(fisher_estimator=Choice(("exact", "hat_legacy", "blip_legacy", "gem_legacy")), fisher_samples=Int(ge=1,
         optional=True), fisher_batch_size=Int(ge=1))
class FisherRegularizer(ImportanceRegularizer):
    """What EWC, online EWC and IMM-mode share: a Fisher estimated at the end of each task (the fisher_* knobs)."""

    def __init__(self, net: TaskNetwork, lamb: float, fisher_estimator: str = "exact",
                 fisher_samples: int | None = 8000, fisher_batch_size: int = 100, **optimizer):
        super().__init__(net, lamb=lamb, **optimizer)
        self.fisher_options = FisherOptions(fisher_estimator, fisher_samples, fisher_batch_size)

    def task_fisher(self, t: int):
        return fisher_diagonal(self.net, self.stat_modules, self.task_logits(t), self.task_source(t),
                               self.fisher_options)


@options(fisher_merge=Choice(("none", "mean")))
class EWC(FisherRegularizer):
    def __init__(self, net: TaskNetwork, lamb: float = 5000.0, fisher_merge: str = "none", **fisher_and_optimizer):
        super().__init__(net, lamb=lamb, **fisher_and_optimizer)
        self.fisher_merge = fisher_merge
        if fisher_merge == "mean":
            self.terms.add()  # the one running term

    @property
    def penalty_scale(self) -> float:
        return self.lamb / 2

    def consolidate(self, t: int) -> None:
        fisher = self.task_fisher(t)
        if self.fisher_merge == "none":
            term = self.terms.add()
            term.importance.copy_(fisher)
        else:
            merged = int(self.tasks_consolidated)  # tasks already in the mean
            importance = self.terms[0].importance
            for name, value in importance.as_dict().items():
                value.mul_(merged).add_(fisher[name]).div_(merged + 1)
            term = self.terms[0]
        term.anchor.copy_(self.parameter_values())
