"""The shared mechanism of the importance-based regularizers (EWC, online EWC, SI, MAS, MAS-local, IMM): at the end of
each task an approach stores anchors θ* and importances Ω of the shared parameters, and while it trains later tasks
the loss gets

    penalty = scale · Σ_k Σ_i Ω_k,i · (θ_i − θ*_k,i)²

(k: one term per earlier task for offline EWC, a single running term for every other approach; scale: λ/2 for EWC
and IMM, λ for MAS, c for SI; IMM's L2-transfer term has Ω = 1).

Regularized parameters are the shared ones: the trunk, plus the head when model.head=shared. The heads of a
multi-head network belong to their tasks and are not regularized.

State: one buffer per regularized parameter and per kind (importance, anchor, SI's path integral, ...), keyed by the
parameter's name (`ParamTensors`), never by the Parameter object (the MAS re-implementation's bug M1), so checkpoints
carry it and a freshly built approach loads it.

Per step: once per task the terms are folded into one quadratic,
    Σ_k Ω_k (θ − θ*_k)² = A (θ − θ̄)² + c,   A = Σ_k Ω_k,   θ̄ = Σ_k Ω_k θ*_k / A,   c = Σ_k Ω_k (θ̄ − θ*_k)²,
and `_AnchoredQuadratic` evaluates it with a few `torch._foreach_*` ops over the list of parameters and returns its
gradient 2·scale·A(θ − θ̄) analytically (no autograd graph through the penalty, whatever the number of terms).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import torch
from torch import nn

from cl.approaches.base import ContinualApproach
from cl.errors import ConfigError
from cl.importance import owning_modules
from cl.models.network import TaskNetwork
from data.tensor_loader import BatchSource

if TYPE_CHECKING:
    from cl.task_data import DeviceStream


def buffer_key(param_name: str) -> str:
    return param_name.replace(".", "__")  # buffer names cannot contain dots


class ParamTensors(nn.Module):
    """One tensor per regularized parameter (an importance, an anchor, a path integral, ...), registered as buffers
    keyed by the parameter's name."""

    def __init__(self, params: dict[str, torch.Tensor], fill: float = 0.0):
        super().__init__()
        self.names = list(params)
        self._keys = [buffer_key(n) for n in self.names]
        for key, p in zip(self._keys, params.values()):
            self.register_buffer(key, torch.full_like(p, fill, requires_grad=False))

    def __getitem__(self, name: str) -> torch.Tensor:
        return self._buffers[buffer_key(name)]

    def tensors(self) -> list[torch.Tensor]:
        return [self._buffers[k] for k in self._keys]

    def as_dict(self) -> dict[str, torch.Tensor]:
        return dict(zip(self.names, self.tensors()))

    @torch.no_grad()
    def copy_(self, values: dict[str, torch.Tensor] | list[torch.Tensor]) -> "ParamTensors":
        values = [values[n] for n in self.names] if isinstance(values, dict) else values
        torch._foreach_copy_(self.tensors(), values)
        return self


class QuadraticTerm(nn.Module):
    """One Ω·(θ − θ*)² term: an importance per parameter (none: Ω = 1, IMM's L2-transfer) and an anchor."""

    def __init__(self, params: dict[str, torch.Tensor], uniform: bool = False):
        super().__init__()
        self.importance = None if uniform else ParamTensors(params)
        self.anchor = ParamTensors(params)


class QuadraticTerms(nn.ModuleList):
    """The terms of the penalty. Offline EWC adds one per task: loading a checkpoint into a freshly built approach
    first adds the terms the checkpoint has, so `load_state_dict` accepts it."""

    def __init__(self, params: dict[str, nn.Parameter]):
        super().__init__()
        self._params = params

    def add(self, uniform: bool = False) -> QuadraticTerm:
        self.append(QuadraticTerm({n: p.detach() for n, p in self._params.items()}, uniform))
        return self[-1]

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        stored = {int(k[len(prefix):].split(".", 1)[0]) for k in state_dict if k.startswith(prefix)}
        while len(self) < max(stored, default=-1) + 1:  # only offline EWC's terms grow
            self.add()
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class FoldedQuadratic:
    """The terms folded into scale·(Σ ‖u‖² + c), u = √A ⊙ θ − √A ⊙ θ̄, for one task (transient: rebuilt from the
    buffers). Kept per parameter: √A, −√A ⊙ θ̄ and the gradient factor 2·scale·√A, so that a step costs one fused
    pass for u, one read for ‖u‖² and one pass for the gradient 2·scale·√A ⊙ u (uniform Ω: u = θ − θ̄)."""

    def __init__(self, params: list[torch.Tensor], terms: list[QuadraticTerm], scale: float, record_gradient: bool):
        self.params, self.scale, self.record_gradient = params, scale, record_gradient
        self.recorded: list[torch.Tensor] | None = None  # the penalty's share of p.grad since the last step
        with torch.no_grad():
            if len(terms) == 1:
                importance = None if terms[0].importance is None else terms[0].importance.tensors()
                anchor, self.offset = terms[0].anchor.tensors(), torch.zeros((), device=params[0].device)
            else:
                importance, anchor, self.offset = _fold(terms)
            if importance is None:
                self.root, self.shift, self.gradient_factor = None, anchor, None
            else:
                self.root = torch._foreach_sqrt(importance)
                self.shift = torch._foreach_mul(self.root, anchor)
                torch._foreach_neg_(self.shift)
                self.gradient_factor = torch._foreach_mul(self.root, 2.0 * scale)

    def residual(self, params) -> list[torch.Tensor]:
        """u = √A ⊙ (θ − θ̄)."""
        if self.root is None:
            return torch._foreach_sub(params, self.shift)
        return torch._foreach_addcmul(self.shift, self.root, params)

    def gradient(self, residual: list[torch.Tensor], grad_output: torch.Tensor) -> list[torch.Tensor]:
        """grad_output · 2·scale·√A ⊙ u."""
        if self.gradient_factor is None:
            return torch._foreach_mul(residual, grad_output * (2.0 * self.scale))
        gradient = torch._foreach_mul(residual, self.gradient_factor)
        if grad_output.device.type != "cpu" or grad_output.item() != 1.0:  # 1 for a loss's summand: skip the pass
            torch._foreach_mul_(gradient, grad_output)
        return gradient

    def record(self, gradient: list[torch.Tensor]):
        if self.recorded is None:
            self.recorded = gradient
        else:  # several backward passes per optimizer step (gradient accumulation)
            torch._foreach_add_(self.recorded, gradient)

    def take_recorded(self) -> list[torch.Tensor] | None:
        recorded, self.recorded = self.recorded, None
        return recorded


def _fold(terms: list[QuadraticTerm]) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
    """(A, θ̄, c) of Σ_k Ω_k (θ − θ*_k)² = A (θ − θ̄)² + c."""
    importances = [t.importance.tensors() for t in terms]
    anchors = [t.anchor.tensors() for t in terms]
    total = [t.clone() for t in importances[0]]
    weighted = torch._foreach_mul(importances[0], anchors[0])
    for importance, anchor in zip(importances[1:], anchors[1:]):
        torch._foreach_add_(total, importance)
        torch._foreach_addcmul_(weighted, importance, anchor)
    # θ̄ = Σ Ω_k θ*_k / A; where A = 0 the weighted sum is 0 too and θ̄ = 0 (its weight in the penalty is 0)
    mean = torch._foreach_div(weighted, torch._foreach_clamp_min(total, torch.finfo(total[0].dtype).tiny))
    offset = sum(_weighted_square_sum(importance, torch._foreach_sub(mean, anchor))
                 for importance, anchor in zip(importances, anchors))
    return total, mean, offset


def _weighted_square_sum(weights: list[torch.Tensor], values: list[torch.Tensor]) -> torch.Tensor:
    """Σ w·v² over lists (w ≥ 0), by foreach ops."""
    torch._foreach_mul_(values, values)
    torch._foreach_mul_(values, weights)
    return torch.stack(torch._foreach_norm(values, 1)).sum()


class _AnchoredQuadratic(torch.autograd.Function):
    """scale·(Σ ‖u‖² + c) over the list of parameters (FoldedQuadratic); its gradient is formed in the backward from
    the residual u the forward kept: a few foreach passes, no per-parameter graph."""

    @staticmethod
    def forward(ctx, quadratic: FoldedQuadratic, *params):
        residual = quadratic.residual(params)
        ctx.quadratic, ctx.residual = quadratic, residual
        squares = torch.stack(torch._foreach_norm(residual)).square().sum()
        return squares.add_(quadratic.offset).mul_(quadratic.scale)

    @staticmethod
    def backward(ctx, grad_output):
        quadratic, residual = ctx.quadratic, ctx.residual
        del ctx.residual
        gradient = quadratic.gradient(residual, grad_output)
        if quadratic.record_gradient:
            quadratic.record(gradient)
        return (None, *gradient)


class ImportanceRegularizer(ContinualApproach):
    """Base of the importance × squared-distance regularizers. A subclass gives `penalty_scale` and `consolidate(t)`
    (the end of task t: estimate importances, update the terms and anchors); this class keeps the terms, folds them
    once per task and adds the penalty. `optimizer` are the shared knobs of conf/approach/sgd.yaml."""

    records_penalty_gradient = False  # SI subtracts the penalty's share of p.grad to get the task-loss gradient

    def __init__(self, net: TaskNetwork, lamb: float = 1.0, **optimizer):
        super().__init__(net, **optimizer)
        self.lamb = lamb
        self.regularized = self._shared_parameters()  # parameter name (in net) → Parameter
        self.terms = QuadraticTerms(self.regularized)
        self.register_buffer("tasks_consolidated", torch.zeros((), dtype=torch.long))
        self._folded: FoldedQuadratic | None | bool = None  # None: to build; False: no penalty yet
        self._stat_modules: dict[str, nn.Module] | None = None
        self._data: DeviceStream | None = None

    @property
    def penalty_scale(self) -> float:
        raise NotImplementedError

    def consolidate(self, t: int) -> None:
        raise NotImplementedError

    def _shared_parameters(self) -> dict[str, nn.Parameter]:
        shared = [(f"trunk.{n}", p) for n, p in self.net.trunk.named_parameters()]
        if not self.net.multi_head:
            shared += [(f"heads.0.{n}", p) for n, p in self.net.heads[0].named_parameters()]
        trainable = {id(p) for p in self.trainable_parameters()}
        return {n: p for n, p in shared if id(p) in trainable}

    def setup_stream(self, stream) -> None:
        super().setup_stream(stream)
        if not self.regularized:
            raise ConfigError(f"approach={self.name} found no trainable shared parameters to regularize in model "
                              f"{self.net.name}; use a model whose trunk trains")

    # --- data and statistics for the task end -----------------------------------------------------------------------
    def train_sources(self, data: "DeviceStream", t: int) -> list[BatchSource]:
        self._data = data  # a handle only: task ends read the tasks' training inputs from it
        return super().train_sources(data, t)

    def task_source(self, t: int) -> BatchSource:
        if self._data is None:
            raise RuntimeError(f"approach={self.name} needs the tasks' training data at task end: train through "
                               f"cl.pipeline, which calls train_sources() before fit")
        return self._data.source(t, "train")

    def task_logits(self, t: int) -> Callable[[torch.Tensor], torch.Tensor]:
        return lambda x: self(x, t)

    @property
    def stat_modules(self) -> dict[str, nn.Module]:
        """The modules (names in net) that own the regularized parameters: where task-end statistics hook in."""
        if self._stat_modules is None:
            self._stat_modules = owning_modules(self.net, self.regularized)
        return self._stat_modules

    def parameter_values(self) -> list[torch.Tensor]:
        return [p.detach() for p in self.regularized.values()]

    # --- the penalty ------------------------------------------------------------------------------------------------
    def _invalidate(self):
        self._folded = None

    def folded(self) -> FoldedQuadratic | None:
        if self._folded is None:
            active = len(self.terms) > 0 and int(self.tasks_consolidated) > 0
            self._folded = FoldedQuadratic(list(self.regularized.values()), list(self.terms), self.penalty_scale,
                                           self.records_penalty_gradient) if active else False
        return self._folded or None

    def penalty(self) -> torch.Tensor | float:
        folded = self.folded()
        return 0.0 if folded is None else _AnchoredQuadratic.apply(folded, *folded.params)

    def on_train_start(self):
        self._invalidate()

    def on_train_end(self):
        self.consolidate(self.task_id)
        self.tasks_consolidated += 1
        self._invalidate()

    def importances(self) -> dict[str, torch.Tensor]:
        """Parameter name (in net) → the importance the penalty applies now (Σ over the terms; 1 for an L2 term)."""
        with torch.no_grad():
            if not len(self.terms) or self.terms[0].importance is None:
                return {n: torch.ones_like(p) for n, p in self.regularized.items()}
            total = [t.clone() for t in self.terms[0].importance.tensors()]
            for term in list(self.terms)[1:]:
                torch._foreach_add_(total, term.importance.tensors())
        return dict(zip(self.regularized, total))

    # --- keeping the folded penalty in step with the buffers --------------------------------------------------------
    def _apply(self, fn, *args, **kwargs):
        self._invalidate()  # moved buffers: fold again from the new ones
        return super()._apply(fn, *args, **kwargs)

    def _load_from_state_dict(self, *args, **kwargs):
        self._invalidate()
        super()._load_from_state_dict(*args, **kwargs)
