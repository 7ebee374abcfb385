"""SI's faster bookkeeping for plain SGD steps: the speed-ups that `SI.on_before_optimizer_step`
(cl/approaches/regularization/si.py) takes when a step is plain SGD (no momentum, weight decay, gradient clipping or
loss scaler) at the lr the task's earlier such steps had.

Such a step is Δθ = −lr·U with U = g + G ⊙ (θ − θ̃) (g the task gradient, G = 2c·Ω, θ̃ the anchor, which is θ at the
start of the task), and over the task Σ −g·Δθ = (1 − lr·G/2)·Σ lr·U² + G/2·(θ_end − θ̃)² (derived in
docs/regularizers.md, section "si"). So a step only adds lr·U² to ω, with no copy of g and no pass after the step;
the two corrections wait until the task ends, or until a step is not plain SGD at that lr: from there on SI's
general accounting runs. `telescoped_lr` (a buffer of SI) holds that lr: 0 before the first step with a penalty, −1
once the task's accounting is general. Without a penalty U = g, and ω = Σ lr·g² needs no correction whatever the lr.

With a penalty the step is taken one of two ways, which compute the same up to float rounding:
- foreach: torch's foreach ops add the penalty's gradient to p.grad (U) and lr·U² to ω; the optimizer steps;
- fused (`fused_step`, the default): one C pass per parameter (cl/stats/kernels/si_step.c) adds lr·U² to ω, takes the
  step θ − lr·U itself and sets p.grad to None, so that the optimizer skips the parameter. It runs on contiguous CPU
  float32 parameters, where the kernel builds (cl/stats/kernels); elsewhere the foreach ops run.
"""
from __future__ import annotations

import ctypes
import functools
from typing import TYPE_CHECKING

import torch

from cl.approaches.regularization.regularizer import FoldedQuadratic
from cl.stats import kernels

if TYPE_CHECKING:
    from cl.approaches.regularization.si import SI


def plain_sgd_step(si: "SI", optimizer, params: list[torch.Tensor], grads: list[torch.Tensor],
                   folded: FoldedQuadratic | None) -> bool:
    """The step's share of ω when the step is plain SGD at the task's lr: ω += lr·U², with U in p.grad (foreach) or
    the step taken (fused); True. Otherwise False, after applying the pending corrections: SI's general accounting
    takes the task's steps from here on."""
    lr = si._plain_sgd_lr(optimizer)
    telescoped_lr = float(si.telescoped_lr)
    if lr is not None and (folded is None or telescoped_lr in (0.0, lr)):
        if folded is not None and telescoped_lr == 0.0:
            si.telescoped_lr.fill_(lr)
        if folded is not None and _take_fused_step(si, params, grads, folded, lr):
            return True
        if folded is not None:
            folded.add_gradient()  # p.grad becomes U = g + the penalty's gradient
        torch._foreach_addcmul_(si.path.tensors(), grads, grads, value=lr)
        return True
    if telescoped_lr > 0:
        end_telescoped_steps(si)
    elif telescoped_lr == 0.0:
        si.telescoped_lr.fill_(-1.0)
    return False


def _take_fused_step(si: "SI", params: list[torch.Tensor], grads: list[torch.Tensor], folded: FoldedQuadratic,
                     lr: float) -> bool:
    """ω += lr·U² and θ ← θ − lr·U in one C pass per parameter, p.grad set to None (the step is taken); False
    where it does not apply (`fused_step` off, no kernel, a parameter that is not contiguous CPU float32)."""
    kernel = _sgd_step_kernel() if si.fused_step else None
    if kernel is None or not all(p.device.type == "cpu" and p.dtype == g.dtype == torch.float32
                                 and p.is_contiguous() and g.is_contiguous() for p, g in zip(params, grads)):
        return False
    for p, g, factor, anchor, path in zip(params, grads, folded.gradient_factor, folded.anchor, si.path.tensors()):
        kernel(p.data_ptr(), g.data_ptr(), factor.data_ptr(), anchor.data_ptr(), path.data_ptr(), p.numel(), lr)
        p.grad = None
    return True


@torch.no_grad()
def corrected_path(si: "SI") -> list[torch.Tensor]:
    """ω with the pending corrections of the task's plain SGD steps (lr = telescoped_lr > 0),
    (1 − lr·G/2)·ω + G/2·(θ − θ̃)², as a new list (the buffer is left as it is)."""
    lr = float(si.telescoped_lr)
    factor = si.folded().gradient_factor  # G
    corrected = torch._foreach_add(torch._foreach_mul(factor, -lr / 2), 1.0)
    torch._foreach_mul_(corrected, si.path.tensors())
    change = torch._foreach_sub(si.parameter_values(), si.terms[0].anchor.tensors())
    torch._foreach_mul_(change, change)
    torch._foreach_addcmul_(corrected, factor, change, value=0.5)
    return corrected


@torch.no_grad()
def end_telescoped_steps(si: "SI") -> None:
    """Applies the pending corrections to ω; the task's later steps take the general accounting."""
    torch._foreach_copy_(si.path.tensors(), corrected_path(si))
    si.telescoped_lr.fill_(-1.0)


@functools.cache
def _sgd_step_kernel():
    library = kernels.load("si_step")
    if library is None:
        return None
    step = library.si_sgd_step
    step.argtypes = [ctypes.c_void_p] * 5 + [ctypes.c_int64, ctypes.c_float]
    step.restype = None
    return step
