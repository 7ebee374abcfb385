"""SI, synaptic intelligence (Zenke, Poole & Ganguli, ICML 2017).

At every optimizer step each regularized parameter adds its share of the task loss's decrease to its path integral,
    ω ← ω − g·Δθ        (g: the task loss's gradient, without the penalty's; Δθ: the step the optimizer applies);
at the end of the task, with Δ the parameter's change over the task,
    Ω ← max(0, Ω + ω / (Δ² + ξ))        (clipped at 0, as the official code does),
and the anchor θ̃ becomes θ; while later tasks train, the penalty is c·Σ Ω (θ − θ̃)² (c = `lamb`, no ½).

Plain SGD steps take a faster accounting, equal in exact arithmetic, and by default a fused C step
(cl/approaches/regularization/si_fused.py). The derivations, the choices against the official code and the state:
docs/regularizers.md, section "si".
"""
from __future__ import annotations

import torch

from cl.approaches.regularization import si_fused
from cl.approaches.regularization.regularizer import ImportanceRegularizer, ParamTensors, grad_of
from cl.config.options import Bool, Float, options
from cl.errors import TrainingError
from cl.models.network import TaskNetwork


@options(xi=Float(gt=0), fused_step=Bool())
class SI(ImportanceRegularizer):
    direct_penalty_step = False  # the update SI reads from p.grad must include the penalty's share

    def __init__(self, net: TaskNetwork, lamb: float = 1.0, xi: float = 0.1, fused_step: bool = True, **optimizer):
        super().__init__(net, lamb=lamb, **optimizer)
        self.xi = xi
        self.fused_step = fused_step  # plain SGD steps with a penalty by one C pass (si_fused.py)
        self.terms.add()
        self.path = ParamTensors(self.regularized)  # ω of the current task
        self.register_buffer("path_task", torch.full((), -1, dtype=torch.long))  # the task ω belongs to
        # the lr of the task's plain SGD steps (si_fused.py): 0 none yet, −1 general accounting
        self.register_buffer("telescoped_lr", torch.zeros((), dtype=torch.float64))
        # transient, per step: the optimizer, and the task gradient when the penalty's joins p.grad
        self._optimizer: torch.optim.SGD | None = None
        self._task_gradient: list[torch.Tensor] | None = None
        self._kept_apart = False
        self._after_step = False  # the step's share of ω is added after the step

    @property
    def penalty_scale(self) -> float:
        return self.lamb  # the penalty c·Σ Ω (θ − θ̃)², which the parent class applies

    @torch.no_grad()
    def on_train_start(self):
        super().on_train_start()
        self._task_gradient = None
        if int(self.path_task) == self.task_id:  # resumed within the task: keep its path
            return
        torch._foreach_zero_(self.path.tensors())
        self.terms[0].anchor.copy_(self.parameter_values())  # the start of the path (the end of the previous task)
        self.path_task.fill_(self.task_id)
        self.telescoped_lr.fill_(0.0)

    # --- ω ← ω − g·Δθ, every step -----------------------------------------------------------------------------------
    @torch.no_grad()
    def on_before_optimizer_step(self, optimizer) -> None:
        """Until the penalty's gradient joins it here (the parent class), p.grad is g, the task loss's gradient
        (all-reduced under DDP). A plain SGD step is accounted for by si_fused.plain_sgd_step; any other step keeps
        a copy of g and adds −g·Δθ = lr·g·update after the step, reading the update from the torch.optim.SGD the
        approaches configure: Δθ = −lr·(momentum buffer) with momentum, else −lr·(p.grad + weight_decay·θ)."""
        group = _sgd_group(optimizer)
        params = list(self.regularized.values())
        grads = [grad_of(p) for p in params]
        self._optimizer = optimizer
        folded = self.folded()
        self._after_step = not si_fused.plain_sgd_step(self, optimizer, params, grads, folded)
        if not self._after_step:
            return
        self._kept_apart = folded is not None  # the penalty's gradient is about to join p.grad
        if self._kept_apart:
            if self._task_gradient is None:
                self._task_gradient = [torch.empty_like(p) for p in params]
            torch._foreach_copy_(self._task_gradient, grads)
        if group["weight_decay"] and not group["momentum"]:  # that part of the update needs θ before the step
            torch._foreach_addcmul_(self.path.tensors(), self._task_gradient if self._kept_apart else grads, params,
                                    value=float(group["lr"]) * group["weight_decay"])
        super().on_before_optimizer_step(optimizer)

    @torch.no_grad()
    def on_after_optimizer_step(self):
        if not self._after_step:
            return
        params = list(self.regularized.values())
        group = self._optimizer.param_groups[0]
        if group["momentum"]:
            update = [self._optimizer.state[p]["momentum_buffer"] for p in params]
        else:
            update = [grad_of(p) for p in params]
        task_gradient = self._task_gradient if self._kept_apart else [grad_of(p) for p in params]
        torch._foreach_addcmul_(self.path.tensors(), task_gradient, update, value=float(group["lr"]))  # −g·Δθ

    @torch.no_grad()
    def path_integral(self) -> list[torch.Tensor]:
        """ω of the task so far, with the plain SGD steps' corrections applied when they are pending (a new list;
        the buffer is left as it is)."""
        if float(self.telescoped_lr) > 0:
            return si_fused.corrected_path(self)
        return [w.clone() for w in self.path.tensors()]

    # --- Ω ← max(0, Ω + ω / (Δ² + ξ)), at the task end --------------------------------------------------------------
    @torch.no_grad()
    def consolidate(self, t: int) -> None:
        if float(self.telescoped_lr) > 0:
            si_fused.end_telescoped_steps(self)
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


def _sgd_group(optimizer) -> dict:
    """The one parameter group of the torch.optim.SGD whose update SI reads (what the approaches configure)."""
    group = optimizer.param_groups[0] if isinstance(optimizer, torch.optim.SGD) else None
    if group is None or len(optimizer.param_groups) > 1 or group["nesterov"] or group["dampening"] \
            or group["maximize"]:
        raise TrainingError("approach=si reads each step's update from a plain torch.optim.SGD (one parameter group, "
                            "no nesterov, dampening or maximize), as the approaches configure it; keep that optimizer")
    return group
