"""SI, synaptic intelligence (Zenke, Poole & Ganguli, ICML 2017).

During task μ, after every optimizer step, each parameter accumulates its share of the loss decrease along the path:
    ω ← ω − g·Δθ,
g being the gradient of the task loss (without the penalty) and Δθ the update the optimizer actually made. At the end
of the task, with Δ the parameter's total change over the task,
    Ω ← max(0, Ω + ω / (Δ² + ξ)),
as the official code does (it clips Ω at 0), and the anchor θ̃ becomes the current parameters. While training later
tasks the loss gets c·Σ_i Ω_i (θ_i − θ̃_i)² (c = `lamb`, no ½).

The task-loss gradient: the penalty is part of the loss, so p.grad = g + g_penalty. The penalty's gradient is formed
analytically by the shared regularizer (cl/approaches/regularizer.py), which hands it over, so ω subtracts it
exactly: ω ← ω − p.grad·Δθ + g_penalty·Δθ. No second backward pass.

The running state (ω, the parameters after the previous step, the task the path belongs to) lives in buffers, so a
checkpoint taken within a task resumes exactly; the anchor doubles as the parameters at the start of the task.
"""
from __future__ import annotations

import torch

from cl.approaches.regularizer import ImportanceRegularizer, ParamTensors
from cl.models.network import TaskNetwork


class SI(ImportanceRegularizer):
    records_penalty_gradient = True

    def __init__(self, net: TaskNetwork, lamb: float = 1.0, xi: float = 0.1, **optimizer):
        super().__init__(net, lamb=lamb, **optimizer)
        self.xi = xi
        self.terms.add()
        self.path = ParamTensors(self.regularized)  # ω of the current task
        self.previous = ParamTensors(self.regularized)  # the parameters after the previous optimizer step
        self.register_buffer("path_task", torch.full((), -1, dtype=torch.long))  # task whose path ω holds

    @property
    def penalty_scale(self) -> float:
        return self.lamb

    @torch.no_grad()
    def on_train_start(self):
        super().on_train_start()
        if int(self.path_task) == self.task_id:  # resumed within the task: keep its path
            return
        values = self.parameter_values()
        torch._foreach_zero_(self.path.tensors())
        self.previous.copy_(values)
        self.terms[0].anchor.copy_(values)  # the start of the path (also the end of the previous task)
        self.path_task.fill_(self.task_id)

    @torch.no_grad()
    def on_after_optimizer_step(self):
        params = list(self.regularized.values())
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        backwards = self.previous.tensors()
        torch._foreach_sub_(backwards, params)  # −Δθ, in place: `previous` is reset to θ below
        path = self.path.tensors()
        torch._foreach_addcmul_(path, grads, backwards)  # ω −= p.grad·Δθ
        folded = self.folded()
        penalty_gradient = folded.take_recorded() if folded is not None else None
        if penalty_gradient is not None:
            torch._foreach_addcmul_(path, penalty_gradient, backwards, value=-1.0)  # ... + g_penalty·Δθ
        torch._foreach_copy_(backwards, params)

    @torch.no_grad()
    def consolidate(self, t: int) -> None:
        term = self.terms[0]
        values = self.parameter_values()
        change = torch._foreach_sub(values, term.anchor.tensors())
        torch._foreach_mul_(change, change)
        torch._foreach_add_(change, self.xi)
        contribution = torch._foreach_div(self.path.tensors(), change)
        importance = term.importance.tensors()
        torch._foreach_add_(importance, contribution)
        torch._foreach_clamp_min_(importance, 0.0)
        term.anchor.copy_(values)
        self.path_task.fill_(-1)
