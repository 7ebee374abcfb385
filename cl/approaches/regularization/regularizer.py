"""The shared mechanism of the importance-based regularizers (EWC, online EWC, SI, MAS, MAS-local, IMM): at the end of
each task an approach stores anchors θ* and importances Ω of the shared parameters, and while it trains later tasks
the objective gets (applied at each step, see "Per step" below)

    penalty = scale · Σ_k Σ_i Ω_k,i · (θ_i − θ*_k,i)²

(k: one term per earlier task for offline EWC, a single running term for every other approach; scale: λ/2 for EWC
and IMM, λ for MAS, c for SI; IMM's L2-transfer term has Ω = 1).

Regularized parameters are the shared ones: the trunk, plus the head when model.head=shared. The heads of a
multi-head network belong to their tasks and are not regularized.

State: one buffer per regularized parameter and per kind (importance, anchor, SI's path integral, ...), keyed by the
parameter's name (`ParamTensors`), never by the Parameter object (the MAS re-implementation's bug M1), so checkpoints
carry it and a freshly built approach loads it.

Per step. Once per task the terms are folded into one quadratic,
    Σ_k Ω_k (θ − θ*_k)² = A (θ − θ̄)² + c,   A = Σ_k Ω_k,   θ̄ = Σ_k Ω_k θ*_k / A,   c = Σ_k Ω_k (θ̄ − θ*_k)²,
so a step costs the same whatever the number of terms. The penalty is not back-propagated (no autograd graph): its
gradient 2·scale·A ⊙ (θ − θ̄) acts in `on_before_optimizer_step`, after backward, in one of two ways.
- Plain SGD (one torch.optim.SGD group without momentum, weight decay or maximize, no gradient clipping, no loss
  scaler: the approaches' default): the penalty's share of the step is taken on θ directly, θ ← θ − lr·2·scale·A ⊙
  (θ − θ̄), one lerp pass toward θ̄ (`FoldedQuadratic.step_toward_anchor`); p.grad keeps the task gradient, and the
  optimizer's step on it completes the SGD step on the task gradient plus the penalty's, both taken at θ before the
  step.
- Otherwise (momentum, weight decay, clipping, a loss scaler, another optimizer), and always for SI, which reads the
  step's update from p.grad (`direct_penalty_step = False`): the penalty's gradient is added to p.grad in place
  (`FoldedQuadratic.add_gradient`, two foreach passes), before gradient clipping and the optimizer's momentum: the
  "local gradient" of the original MAS code, mathematically the same as back-propagating the penalty.
The training loss is the task loss; the penalty's value (`penalty()`) is logged once per epoch as train/penalty,
because evaluating it every step costs more passes over the parameters than its gradient. Under DDP the hook runs
after the all-reduce and every rank applies the same penalty, which equals all-reducing its gradient. Code that steps
an optimizer by hand calls `on_before_optimizer_step` before `optimizer.step()`, as Lightning does: the replay
approaches' `sgd_step` through `ContinualApproach.call_before_optimizer_step_hooks`, so a replay approach with a
penalty mixed in keeps it (tests/test_hooks.py).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import torch
import torch.nn.functional as F
from torch import nn

from cl.approaches.base import ContinualApproach
from cl.config.options import Float, options
from cl.errors import ConfigError
from cl.stats.importance import owning_modules
from cl.models.network import TaskNetwork
from data.tensor_loader import BatchSource

if TYPE_CHECKING:
    from data.device_stream import DeviceStream


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
    """The terms folded into scale·(Σ A (θ − θ̄)² + c) for one task (transient: rebuilt from the buffers). A step
    applies the gradient 2·scale·A ⊙ θ − 2·scale·A ⊙ θ̄ (with a uniform Ω, IMM's L2-transfer: 2·scale·θ − 2·scale·θ̄)
    either as the penalty's share of a plain SGD step on θ (`step_toward_anchor`, one lerp pass) or into p.grad
    (`add_gradient`, two fused foreach passes with both factors kept per parameter). Every parameter-sized pass
    costs a few percent of an SGD step of a small MLP on CPU, so the value is computed only when asked for."""

    def __init__(self, params: list[torch.Tensor], terms: list[QuadraticTerm], scale: float):
        self.params, self.scale = params, scale
        with torch.no_grad():
            if len(terms) == 1:
                self.importance = None if terms[0].importance is None else terms[0].importance.tensors()
                self.anchor, self.offset = terms[0].anchor.tensors(), torch.zeros((), device=params[0].device)
            else:
                self.importance, self.anchor, self.offset = _fold(terms)
            if self.importance is None:
                self.gradient_factor = self.gradient_shift = None
            else:
                self.gradient_factor = torch._foreach_mul(self.importance, 2.0 * scale)
                self.gradient_shift = torch._foreach_mul(self.gradient_factor, self.anchor)
        self._lerp_lr: float | None = None
        self._lerp_weights: list[torch.Tensor] | None = None

    @torch.no_grad()
    def value(self) -> torch.Tensor:
        distance = torch._foreach_sub(self.params, self.anchor)
        if self.importance is None:
            squares = torch.stack(torch._foreach_norm(distance)).square().sum()
        else:
            squares = _weighted_square_sum(self.importance, distance)
        return (squares + self.offset) * self.scale

    @torch.no_grad()
    def step_toward_anchor(self, lr: float) -> None:
        """θ ← θ − lr·2·scale·A ⊙ (θ − θ̄): the penalty's share of a plain SGD step, applied to θ directly (one fused
        lerp pass instead of two passes into p.grad). Plain SGD then takes θ − lr·g_task, which is exactly the step
        on g_task + the penalty's gradient, both evaluated at θ before the step."""
        if self.gradient_factor is None:
            torch._foreach_lerp_(self.params, self.anchor, 2.0 * self.scale * lr)
            return
        if self._lerp_lr != lr:  # once per task, and again when a schedule changes the learning rate
            self._lerp_weights = torch._foreach_mul(self.gradient_factor, lr)
            self._lerp_lr = lr
        torch._foreach_lerp_(self.params, self.anchor, self._lerp_weights)

    @torch.no_grad()
    def add_gradient(self) -> None:
        """p.grad += 2·scale·A ⊙ (θ − θ̄)."""
        grads = [grad_of(p) for p in self.params]
        if self.gradient_factor is None:
            torch._foreach_add_(grads, self.params, alpha=2.0 * self.scale)
            torch._foreach_add_(grads, self.anchor, alpha=-2.0 * self.scale)
        else:
            torch._foreach_addcmul_(grads, self.gradient_factor, self.params)
            torch._foreach_sub_(grads, self.gradient_shift)


def grad_of(p: torch.Tensor) -> torch.Tensor:
    if p.grad is None:  # a parameter the task loss did not reach
        p.grad = torch.zeros_like(p)
    return p.grad


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


@options(lamb=Float(ge=0))
class ImportanceRegularizer(ContinualApproach):
    """Base of the importance × squared-distance regularizers. A subclass gives `penalty_scale` and `consolidate(t)`
    (the end of task t: estimate importances, update the terms and anchors); this class keeps the terms, folds them
    once per task and applies the penalty. `optimizer` are the shared knobs of conf/approach/sgd.yaml."""

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
                               f"cl.run.supervised, which calls train_sources() before fit")
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
    def folded(self) -> FoldedQuadratic | None:
        if self._folded is None:
            active = len(self.terms) > 0 and int(self.tasks_consolidated) > 0
            self._folded = FoldedQuadratic(list(self.regularized.values()), list(self.terms),
                                           self.penalty_scale) if active else False
        return self._folded or None

    def penalty(self) -> torch.Tensor | float:
        """The penalty's value at the current parameters (no autograd graph: see `on_before_optimizer_step`)."""
        folded = self.folded()
        return 0.0 if folded is None else folded.value()

    def training_loss(self, x: torch.Tensor, y: torch.Tensor, task: int | torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self(x, task), y)  # the task loss; the penalty acts in on_before_optimizer_step

    # False where a subclass needs the penalty's gradient in p.grad (SI reads the update from it)
    direct_penalty_step = True

    def on_before_optimizer_step(self, optimizer) -> None:
        """The penalty's share of the coming step (see the module): before a plain SGD step θ steps toward the
        anchor directly; otherwise the penalty's gradient joins p.grad."""
        folded = self.folded()
        if folded is None:
            return
        lr = self._plain_sgd_lr(optimizer) if self.direct_penalty_step else None
        if lr is not None:
            folded.step_toward_anchor(lr)
        else:  # momentum, weight decay, clipping or another optimizer: the penalty goes through the gradient
            folded.add_gradient()

    def _plain_sgd_lr(self, optimizer) -> float | None:
        """The learning rate when the coming step is plain SGD on the gradient as it is (no momentum, weight decay
        or gradient clipping, which would treat the penalty's gradient differently from a separate step, and no loss
        scaler, which may skip the step after the penalty's share was taken)."""
        if not isinstance(optimizer, torch.optim.SGD) or len(optimizer.param_groups) != 1:
            return None
        group = optimizer.param_groups[0]
        if group["momentum"] or group["weight_decay"] or group["maximize"]:
            return None
        if self._trainer is not None and (self.trainer.gradient_clip_val
                                          or getattr(self.trainer.precision_plugin, "scaler", None) is not None):
            return None  # clipping, or a loss scaler that skips the steps with non-finite gradients
        return float(group["lr"])

    def on_train_epoch_end(self):
        super().on_train_epoch_end()
        if self.folded() is not None:
            self.log_to_loggers({"train/penalty": float(self.penalty())})

    def on_train_start(self):
        self._folded = None

    def on_train_end(self):
        self.consolidate(self.task_id)
        self.tasks_consolidated += 1
        self._folded = None

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
        self._folded = None  # moved buffers: fold again from the new ones
        return super()._apply(fn, *args, **kwargs)

    def _load_from_state_dict(self, *args, **kwargs):
        self._folded = None
        super()._load_from_state_dict(*args, **kwargs)
