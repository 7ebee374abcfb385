"""MAS, memory aware synapses (Aljundi et al., ECCV 2018): the importance of a parameter is how much the network's
output moves with it, measured without labels,

    Ω = (1/N) Σ_k | ∂‖F(x_k)‖₂² / ∂θ |,

F being the logits of the current task's head (the shared head with model.head=shared), on the task's training
inputs, in eval mode. While training later tasks the objective gets λ·Σ_i Ω_i (θ_i − θ*_i)² (no ½; λ = 1 in the
paper), θ* being the parameters at the end of the last task; it acts at each step as
cl/approaches/regularization/regularizer.py describes (a step toward θ* before a plain SGD step, else its gradient
added to p.grad, the original code's "local gradient"). Ω and θ* are keyed by parameter name (the re-implementation
keys them by Parameter object and loses the penalty from task 2 on: its bug M1).

The original code's variants (docs/regularizers.md): `norm` (l2, l1, or vector = Σ_j |∂F_j/∂θ|),
`omega_per_sample: false` for the codes' per-batch |Σ_batch g| averaged as (1/N) Σ_batches |g_batch|, and
`accumulate`: sum (Ω ← Ω + Ω_new on the latest task, `MAS_Omega_Acuumelation`) or sequence (Ω recomputed on every
task so far, each through its own head, and summed, `MAS_sequence`).
"""
from __future__ import annotations

import torch

from cl.approaches.regularization.regularizer import ImportanceRegularizer
from cl.config.options import Bool, Choice, Int, options
from cl.stats.importance import mas_omega
from cl.models.network import TaskNetwork


@options(norm=Choice(("l2", "l1", "vector")), omega_per_sample=Bool(), omega_batch_size=Int(ge=1),
         omega_samples=Int(ge=1, optional=True), accumulate=Choice(("sum", "sequence")))
class MAS(ImportanceRegularizer):
    def __init__(self, net: TaskNetwork, lamb: float = 1.0, norm: str = "l2", omega_per_sample: bool = True,
                 omega_batch_size: int = 200, omega_samples: int | None = None, accumulate: str = "sum", **optimizer):
        super().__init__(net, lamb=lamb, **optimizer)
        self.norm, self.omega_per_sample, self.accumulate = norm, omega_per_sample, accumulate
        self.omega_batch_size, self.omega_samples = omega_batch_size, omega_samples
        self.terms.add()

    @property
    def penalty_scale(self) -> float:
        return self.lamb

    def task_omega(self, t: int) -> dict[str, torch.Tensor]:
        return mas_omega(self.net, self.stat_modules, self.task_logits(t), self.task_source(t), self.norm,
                         self.omega_per_sample, self.omega_batch_size, self.omega_samples)

    @torch.no_grad()
    def consolidate(self, t: int) -> None:
        term = self.terms[0]
        if self.accumulate == "sequence":
            torch._foreach_zero_(term.importance.tensors())
        for task in range(t + 1) if self.accumulate == "sequence" else [t]:
            omega = self.task_omega(task)
            torch._foreach_add_(term.importance.tensors(), [omega[n] for n in term.importance.names])
        term.anchor.copy_(self.parameter_values())
