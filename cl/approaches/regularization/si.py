"""SI, synaptic intelligence (Zenke, Poole & Ganguli, ICML 2017).

During task μ, at every optimizer step, each parameter accumulates its share of the loss decrease along the path:
    ω ← ω − g·Δθ,
g being the gradient of the task loss (without the penalty) and Δθ the update the optimizer applies at that step. At
the end of the task, with Δ the parameter's total change over the task,
    Ω ← max(0, Ω + ω / (Δ² + ξ)),
as the official code does (it clips Ω at 0), and the anchor θ̃ becomes the current parameters. While training later
tasks the penalty is c·Σ_i Ω_i (θ_i − θ̃_i)² (c = `lamb`, no ½).

The task-loss gradient: the shared regularizer adds the penalty's gradient to p.grad in `on_before_optimizer_step`
(cl/approaches/regularization/regularizer.py), so until then p.grad is exactly the task loss's gradient (all-reduced under DDP). SI
keeps a copy of it there when a penalty is about to join it. No second backward pass, no subtraction.

The update: like the official code, which takes its optimizer's update values, SI reads Δθ from the torch.optim.SGD
step the approach configures: Δθ = −lr·(momentum buffer) with momentum, else −lr·(p.grad + weight_decay·θ). That is
one fused pass per step (ω += lr·g·update) instead of keeping and differencing a copy of the parameters.

Plain SGD at a constant lr (no momentum, weight decay or clipping; the usual case) needs neither the copy of g nor
the pass after the step. There the step is Δθ = −lr·U with U = g + G ⊙ (θ − θ̃) (G = 2c·Ω, θ̃ = the parameters at
the start of the task), and summing −g·Δθ = lr·U² + G ⊙ (θ − θ̃)·Δθ over the task's steps telescopes:
    Σ_t G (θ_t − θ̃) Δθ_t = G/2 · (θ_T − θ̃)² − G/2 · Σ_t Δθ_t²,   so   ω = (1 − lr·G/2) · Σ_t lr·U_t² + G/2 · (θ_T − θ̃)².
Each step adds lr·U² (U is p.grad once the penalty's gradient is in it: one pass), and the two per-parameter
corrections are applied once, when the task ends or when the step stops being plain SGD at that lr (an lr schedule):
from there on the steps take the general accounting above. Exact in exact arithmetic; the tests compare both ways
with Σ −g·Δθ summed step by step.

Those steps, in the tasks with a penalty, are SI's whole cost per step: torch's foreach ops take four passes over
the parameters (U into p.grad, ω, then the optimizer's step), about twice EWC's. With `fused_step` (the default) a
C loop (cl/stats/kernels/si_step.c) does all of it in one pass on CPU float32 parameters: it adds lr·U² to ω, takes the
SGD step θ − lr·U itself and sets p.grad to None, so that the optimizer skips the parameter. Where the kernel cannot
be built (cl/stats/kernels) the foreach path runs; both compute the same, up to float rounding.

State in buffers, so a checkpoint taken within a task resumes exactly (with the optimizer state Lightning saves): ω,
the task it belongs to, the lr of the telescoped steps (0 before the first step, −1 once the task's accounting is
general), and the anchor, which doubles as the parameters at the start of the task.
"""
from __future__ import annotations

import ctypes
import functools

import torch

from cl.stats import kernels
from cl.approaches.regularization.regularizer import ImportanceRegularizer, ParamTensors, grad_of
from cl.errors import TrainingError
from cl.models.network import TaskNetwork


class SI(ImportanceRegularizer):
    direct_penalty_step = False  # the update SI reads from p.grad must include the penalty's share

    def __init__(self, net: TaskNetwork, lamb: float = 1.0, xi: float = 0.1, fused_step: bool = True, **optimizer):
        super().__init__(net, lamb=lamb, **optimizer)
        self.xi = xi
        self.fused_step = fused_step
        self.terms.add()
        self.path = ParamTensors(self.regularized)  # ω of the current task
        self.register_buffer("path_task", torch.full((), -1, dtype=torch.long))  # the task ω belongs to
        # the lr of the task's telescoped steps: 0 none yet, −1 general accounting (see the module's docstring)
        self.register_buffer("telescoped_lr", torch.zeros((), dtype=torch.float64))
        # transient, per step: the optimizer, and the task gradient when the penalty's joins p.grad
        self._optimizer: torch.optim.SGD | None = None
        self._task_gradient: list[torch.Tensor] | None = None
        self._kept_apart = False
        self._after_step = False  # the general accounting's pass after the step is due

    @property
    def penalty_scale(self) -> float:
        return self.lamb

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

    @torch.no_grad()
    def on_before_optimizer_step(self, optimizer) -> None:
        group = _sgd_group(optimizer)
        params = list(self.regularized.values())
        grads = [grad_of(p) for p in params]
        self._optimizer = optimizer
        folded = self.folded()
        lr = self._plain_sgd_lr(optimizer)
        telescoped_lr = float(self.telescoped_lr)
        # without a penalty U = g and ω = Σ lr·g² needs no correction, whatever the lr does
        if lr is not None and (folded is None or telescoped_lr in (0.0, lr)):
            if folded is not None and telescoped_lr == 0.0:
                self.telescoped_lr.fill_(lr)
            self._after_step = False
            if folded is not None and self._take_fused_step(params, grads, folded, lr):
                return
            super().on_before_optimizer_step(optimizer)  # p.grad becomes U = g + the penalty's gradient
            torch._foreach_addcmul_(self.path.tensors(), grads, grads, value=lr)
            return
        if telescoped_lr > 0:
            self._end_telescoped_steps()  # the general accounting from here to the task end
        elif telescoped_lr == 0.0:
            self.telescoped_lr.fill_(-1.0)
        self._after_step = True
        self._kept_apart = folded is not None  # the penalty's gradient is about to join p.grad
        if self._kept_apart:
            if self._task_gradient is None:
                self._task_gradient = [torch.empty_like(p) for p in params]
            torch._foreach_copy_(self._task_gradient, grads)
        if group["weight_decay"] and not group["momentum"]:  # that part of the update needs θ before the step
            torch._foreach_addcmul_(self.path.tensors(), self._task_gradient if self._kept_apart else grads, params,
                                    value=float(group["lr"]) * group["weight_decay"])
        super().on_before_optimizer_step(optimizer)

    def _take_fused_step(self, params: list[torch.Tensor], grads: list[torch.Tensor], folded, lr: float) -> bool:
        """ω += lr·U² and θ ← θ − lr·U in one C pass per parameter, p.grad set to None (the step is taken); False
        where it does not apply (switched off, no kernel, a parameter that is not contiguous CPU float32)."""
        kernel = _sgd_step_kernel() if self.fused_step else None
        if kernel is None or not all(p.device.type == "cpu" and p.dtype == g.dtype == torch.float32
                                     and p.is_contiguous() and g.is_contiguous() for p, g in zip(params, grads)):
            return False
        for p, g, factor, anchor, path in zip(params, grads, folded.gradient_factor, folded.anchor,
                                              self.path.tensors()):
            kernel(p.data_ptr(), g.data_ptr(), factor.data_ptr(), anchor.data_ptr(), path.data_ptr(), p.numel(), lr)
            p.grad = None
        return True

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
        """ω of the task so far: the path buffer, with the telescoped steps' corrections when they are pending,
        (1 − lr·G/2)·ω + G/2·(θ − θ̃)² (a new list; the buffer is left as it is)."""
        lr, path = float(self.telescoped_lr), self.path.tensors()
        if lr <= 0:
            return [w.clone() for w in path]
        factor = self.folded().gradient_factor  # G
        corrected = torch._foreach_add(torch._foreach_mul(factor, -lr / 2), 1.0)
        torch._foreach_mul_(corrected, path)
        change = torch._foreach_sub(self.parameter_values(), self.terms[0].anchor.tensors())
        torch._foreach_mul_(change, change)
        torch._foreach_addcmul_(corrected, factor, change, value=0.5)
        return corrected

    @torch.no_grad()
    def _end_telescoped_steps(self) -> None:
        torch._foreach_copy_(self.path.tensors(), self.path_integral())
        self.telescoped_lr.fill_(-1.0)

    @torch.no_grad()
    def consolidate(self, t: int) -> None:
        if float(self.telescoped_lr) > 0:
            self._end_telescoped_steps()
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


@functools.cache
def _sgd_step_kernel():
    library = kernels.load("si_step")
    if library is None:
        return None
    step = library.si_sgd_step
    step.argtypes = [ctypes.c_void_p] * 5 + [ctypes.c_int64, ctypes.c_float]
    step.restype = None
    return step


def _sgd_group(optimizer) -> dict:
    """The one parameter group of the torch.optim.SGD whose update SI reads (what the approaches configure)."""
    group = optimizer.param_groups[0] if isinstance(optimizer, torch.optim.SGD) else None
    if group is None or len(optimizer.param_groups) > 1 or group["nesterov"] or group["dampening"] \
            or group["maximize"]:
        raise TrainingError("approach=si reads each step's update from a plain torch.optim.SGD (one parameter group, "
                            "no nesterov, dampening or maximize), as the approaches configure it; keep that optimizer")
    return group
