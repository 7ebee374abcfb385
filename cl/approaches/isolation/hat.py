"""HAT: hard attention to the task (Serrà et al., ICML 2018; docs/hat.md).

Every hidden unit i of every unit layer l of the trunk has one embedding e^t_{l,i} per task; its mask
a^t_{l,i} = σ(s·e^t_{l,i}) multiplies the unit's output. During training s grows linearly over each epoch's batches
from 1/s_max to s_max; at test time s = s_max, where the masks are (numerically) binary. After task t the cumulative
mask a^{≤t} = max(a^{≤t−1}, a^t) scales the weight gradients of every later task by 1 − min(a^{≤t}_i, a^{≤t}_j)
(output unit i, input unit j), so the weights between units an earlier task uses stay exactly as they were.

The masks are this approach's state: one [n_tasks, units] embedding parameter and one cumulative-mask buffer, both
flat over all unit layers, applied by forward hooks on the existing trunk (no HAT copy of the network).

Unit layers and where their masks multiply
- A unit layer is the output of a Linear/Conv2d after every per-unit module that follows it up to the next weight
  layer (ReLU, Dropout, BatchNorm, pooling). Its mask multiplies the output of the last of those modules, as the
  original code masks after dropout and max-pool; after a BatchNorm in particular, so that a masked unit is 0.
  MLP: after each hidden ReLU (or its Dropout). AlexNet: after each conv block's max-pool and each FC's Dropout.
- ResNet (BasicBlock): the stem's units are masked after its ReLU (or max-pool). Each block has two unit layers:
  conv1's (after bn1 → relu1) and the block output (after relu2, i.e. after the residual sum). The block output's
  units are the output units of conv2 and of the shortcut conv alike, since both are summed into them; an identity
  shortcut carries the block input, already masked by the previous block. So every tensor a weight reads has been
  multiplied by exactly one mask, the residual stream included.

Which units a weight connects (its gradient scale 1 − min(a_out, a_in))
- output units: the unit layer its output belongs to (conv2 and the shortcut conv: the block output);
- input units: the unit layer whose masked output it reads (conv1 and the shortcut conv: the block input's, i.e.
  the previous block output or the stem; conv2: conv1's); a Linear after a flattened conv map reads channel c's
  mask at each of the map's H·W positions; the trunk's first layer has no input mask (scale 1 − a_out);
- biases: their output unit (1 − a_out).
With binary masks, task τ's output depends only on the weights between units τ uses (and the input), the biases of
those units and the task's own head; all of them have scale 0 from task τ on, so they are unchanged bit for bit.
Not covered: BatchNorm. Its statistics and affine parameters are not masked or protected; resnet18 (BLIP) freezes
the statistics after task 1 and has no affine parameters, so the guarantee holds there; resnet18_reduced does not.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from cl.approaches.base import ContinualApproach
from cl.config.options import Float, options
from cl.errors import ConfigError
from cl.models.network import TaskNetwork
from cl.models.resnet import BasicBlock

WEIGHT_LAYERS = (nn.Linear, nn.Conv2d)
# modules that act on each unit (channel) separately: a unit's mask may multiply after them
PER_UNIT = (nn.ReLU, nn.Dropout, nn.BatchNorm1d, nn.BatchNorm2d, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d,
            nn.Identity)


@dataclass(frozen=True)
class UnitLayer:
    gate: str  # trunk module whose output the layer's mask multiplies
    units: int


@dataclass(frozen=True)
class MaskedWeight:
    layer: str  # trunk module name of the Linear/Conv2d
    output: int  # index of the unit layer of its output units
    input: int | None  # index of the unit layer whose output it reads (None: the trunk input)
    repeat: int  # input features per input unit (the H·W positions of a flattened conv map; else 1)


def _out_units(module: nn.Module) -> int:
    return module.out_features if isinstance(module, nn.Linear) else module.out_channels


def _in_features(module: nn.Module) -> int:
    return module.in_features if isinstance(module, nn.Linear) else module.in_channels


class UnitPlan:
    """The unit layers of a trunk and the unit layers each of its weights connects, found by walking the trunk in
    forward order, as the trunk's `layers_in_order()` gives them (a ResNet's: its stem and BasicBlocks)."""

    def __init__(self, trunk: nn.Module):
        self.layers: list[UnitLayer] = []
        self.weights: list[MaskedWeight] = []
        self._modules = dict(trunk.named_modules())
        self._current: int | None = None  # unit layer the next weight layer reads
        self._open: list[tuple[str, int | None]] = []  # weight layers whose units are not closed yet, with inputs
        self._gate = ""
        if not hasattr(trunk, "layers_in_order"):  # a trunk tells its layers in forward order, or HAT cannot mask it
            raise ConfigError(f"approach=hat cannot find the units of a {type(trunk).__name__} trunk; use "
                              f"model=mlp, alexnet, alexnet84, resnet18 or resnet18_reduced")
        self._walk(trunk.layers_in_order())

    def _walk(self, children: Iterable[tuple[str, nn.Module]]) -> None:
        for name, module in children:
            if isinstance(module, WEIGHT_LAYERS):
                self._close()
                self._add(name, self._current)
            elif isinstance(module, BasicBlock):
                self._block(name, module)
            elif isinstance(module, nn.Flatten):
                self._close()  # the mask goes on the [C, H, W] map, before flattening
            elif isinstance(module, PER_UNIT):
                if self._open:
                    self._gate = name
            else:
                raise ConfigError(f"approach=hat cannot mask through a {type(module).__name__} layer ({name}); "
                                  f"use model=mlp, alexnet, alexnet84, alexnet_imagenet, resnet18 or resnet18_reduced")
        self._close()

    def _block(self, name: str, block: BasicBlock) -> None:
        """relu2(bn2(conv2(relu1(bn1(conv1(x))))) + shortcut(x)), as BasicBlock.forward computes it."""
        self._close()
        block_input = self._current
        self._add(f"{name}.conv1", block_input)
        self._gate = f"{name}.relu1"
        self._close()
        self._add(f"{name}.conv2", self._current)
        for sub, module in block.shortcut.named_children():
            if isinstance(module, WEIGHT_LAYERS):
                self._add(f"{name}.shortcut.{sub}", block_input)
        self._gate = f"{name}.relu2"
        self._close()

    def _add(self, name: str, source: int | None) -> None:
        self._open.append((name, source))
        self._gate = name  # the weight layer's own output, unless per-unit modules follow it

    def _close(self) -> None:
        if not self._open:
            return
        units = {_out_units(self._modules[name]) for name, _ in self._open}
        if len(units) != 1:
            raise ConfigError(f"approach=hat: layers {[n for n, _ in self._open]} are summed but differ in width")
        index = len(self.layers)
        self.layers.append(UnitLayer(self._gate, units.pop()))
        for name, source in self._open:
            self.weights.append(MaskedWeight(name, index, source, self._repeat(name, source)))
        self._current, self._open = index, []

    def _repeat(self, name: str, source: int | None) -> int:
        if source is None:
            return 1
        features, units = _in_features(self._modules[name]), self.layers[source].units
        if features % units:
            raise ConfigError(f"approach=hat: {name} reads {features} features from a layer of {units} units; "
                              f"use model=mlp, alexnet, alexnet84, alexnet_imagenet, resnet18 or resnet18_reduced")
        return features // units


class _Gate:
    """Forward hook multiplying a unit layer's output by its mask of the current forward pass."""

    def __init__(self, masks: "_ActiveMasks", index: int):
        self.masks, self.index = masks, index

    def __call__(self, module, inputs, output: torch.Tensor) -> torch.Tensor:
        if self.masks.per_layer is None:
            raise RuntimeError("a HAT-masked trunk was called outside HAT.forward: call the approach, not its net")
        mask = self.masks.per_layer[self.index]  # [1 or batch, units]
        return output * mask.view(*mask.shape, *(1,) * (output.dim() - 2))


class _ActiveMasks:
    per_layer: tuple[torch.Tensor, ...] | None = None


def annealed_s(batch_idx: int, n_batches: int, smax: float) -> float:
    """s for batch `batch_idx` (from 0) of an epoch of `n_batches`: 1/s_max on the first, s_max on the last."""
    progress = batch_idx / (n_batches - 1) if n_batches > 1 else 0.0
    return 1 / smax + (smax - 1 / smax) * progress


@options(lamb=Float(ge=0), smax=Float(ge=1), clipgrad=Float(gt=0), thres_cosh=Float(gt=0), thres_emb=Float(gt=0))
class HAT(ContinualApproach):
    def __init__(self, net: TaskNetwork, lr: float = 0.01, momentum: float = 0.0, weight_decay: float = 0.0,
                 batch_size: int = 64, eval_batch_size: int = 1000, name: str | None = None, lamb: float = 0.75,
                 smax: float = 400.0, clipgrad: float = 10000.0, thres_cosh: float = 50.0, thres_emb: float = 6.0):
        super().__init__(net, lr=lr, momentum=momentum, weight_decay=weight_decay, batch_size=batch_size,
                         eval_batch_size=eval_batch_size, name=name or "hat")
        self.lamb, self.smax, self.clipgrad = lamb, smax, clipgrad
        self.thres_cosh, self.thres_emb = thres_cosh, thres_emb
        # created in setup_stream, once the task count is known; state_dict carries both
        self.register_parameter("embedding", None)  # [n_tasks, units of all layers]
        self.register_buffer("cumulative_mask", None)  # [units of all layers]: a^{≤t} after task t
        self.unit_layers: list[UnitLayer] = []
        self.masked_weights: list[MaskedWeight] = []
        self._active = _ActiveMasks()
        self.s = smax  # the mask slope of the current training batch (annealed over each epoch)
        self._protected: list[nn.Parameter] = []  # weights/biases of the trunk and their gradient scales
        self._grad_scales: list[torch.Tensor] = []
        self._trained: list[nn.Parameter] = []  # what the task trains: the gradient norm is clipped over these

    def setup_stream(self, stream) -> None:
        super().setup_stream(stream)
        if not self.net.multi_head:
            raise ConfigError("approach=hat needs one head per task (its masks protect the trunk, not a shared head); "
                              "use model.head=multi")
        if self.hparams.weight_decay:
            raise ConfigError(f"approach=hat needs approach.weight_decay=0 (got {self.hparams.weight_decay:g}): "
                              f"weight decay would shrink the weights HAT's masks freeze")
        if self.unit_layers:
            return  # hooks already in place
        plan = UnitPlan(self.net.trunk)
        if not plan.layers:
            raise ConfigError(f"approach=hat has no hidden layer to mask in model {self.net.name}; give the trunk a "
                              f"hidden layer (e.g. model.trunk.hidden_sizes=[1200])")
        self.unit_layers, self.masked_weights = plan.layers, plan.weights
        units = sum(self.unit_sizes)
        device = next(self.net.parameters()).device
        self.embedding = nn.Parameter(torch.randn(self.n_tasks, units, device=device))  # nn.Embedding's N(0, 1)
        self.cumulative_mask = torch.zeros(units, device=device)
        modules = dict(self.net.trunk.named_modules())
        for index, layer in enumerate(plan.layers):
            modules[layer.gate].register_forward_hook(_Gate(self._active, index))

    def trainable_parameters(self) -> list:
        return super().trainable_parameters() + [self.embedding]

    @property
    def unit_sizes(self) -> list[int]:
        return [layer.units for layer in self.unit_layers]

    # --- masks ------------------------------------------------------------------------------------------------
    def task_masks(self, task: int | torch.Tensor, s: float) -> torch.Tensor:
        """a^t = σ(s·e^t) of every unit: [1, units] for one task, [batch, units] for a task id per sample."""
        e = self.embedding[task:task + 1] if isinstance(task, int) else self.embedding[task]
        return torch.sigmoid(s * e)

    def masked_forward(self, x: torch.Tensor, task: int | torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        self._active.per_layer = masks.split(self.unit_sizes, dim=1)
        try:
            return self.net(x, task)
        finally:
            self._active.per_layer = None

    def forward(self, x: torch.Tensor, task: int | torch.Tensor) -> torch.Tensor:
        return self.masked_forward(x, task, self.task_masks(task, self.s if self.training else self.smax))

    def sparsity(self, masks: torch.Tensor) -> torch.Tensor:
        """Σ a^t (1 − a^{<t}) / Σ (1 − a^{<t}) over all units: on the first task (a^{<t} = 0) the mean of a^t."""
        free = 1 - self.cumulative_mask
        return (masks * free).sum(1).mean() / free.sum().clamp_min(torch.finfo(free.dtype).tiny)

    def training_loss(self, x: torch.Tensor, y: torch.Tensor, task: int | torch.Tensor) -> torch.Tensor:
        masks = self.task_masks(task, self.s)
        return F.cross_entropy(self.masked_forward(x, task, masks), y) + self.lamb * self.sparsity(masks)

    # --- every step -------------------------------------------------------------------------------------------
    def on_train_start(self):
        """Gradient scales 1 − min(a_out, a_in) of this task, from the cumulative mask of the earlier tasks."""
        self._trained = self.trainable_parameters()
        self._protected, self._grad_scales = [], []
        if not bool(self.cumulative_mask.any()):
            return  # nothing to protect yet: every scale would be 1
        modules = dict(self.net.trunk.named_modules())
        per_layer = self.cumulative_mask.split(self.unit_sizes)
        trained = {id(p) for p in self._trained}
        for w in self.masked_weights:
            module = modules[w.layer]
            if id(module.weight) not in trained:  # a layer the trunk keeps frozen (alexnet_imagenet)
                continue
            trailing = (1,) * (module.weight.dim() - 2)  # a conv's kernel positions share the scale
            used_out = per_layer[w.output].view(-1, 1, *trailing)
            if w.input is not None:
                used_in = per_layer[w.input].repeat_interleave(w.repeat).view(1, -1, *trailing)
                used_out = torch.minimum(used_out, used_in)
            self._protected.append(module.weight)
            self._grad_scales.append(1 - used_out)
            if module.bias is not None:
                self._protected.append(module.bias)
                self._grad_scales.append(1 - per_layer[w.output])

    def on_train_batch_start(self, batch, batch_idx):
        self.s = annealed_s(batch_idx, self.trainer.num_training_batches, self.smax)

    def on_before_optimizer_step(self, optimizer):
        self.protect_gradients()
        self.compensate_embedding_gradient()
        torch.nn.utils.clip_grad_norm_(self._trained, self.clipgrad)

    def protect_gradients(self) -> None:
        if self._protected:
            torch._foreach_mul_([p.grad for p in self._protected], self._grad_scales)

    def compensate_embedding_gradient(self) -> None:
        """Scale ∂L/∂e by (s_max/s)·(cosh(s·e) + 1)/(cosh(e) + 1): the embedding then learns as if s = s_max
        (with s·e clamped to ±thres_cosh against overflow)."""
        e, s = self.embedding.detach()[self.task_id], self.s
        factor = torch.cosh((s * e).clamp(-self.thres_cosh, self.thres_cosh)).add_(1).div_(torch.cosh(e).add_(1))
        self.embedding.grad[self.task_id].mul_(factor.mul_(self.smax / s))

    def on_after_optimizer_step(self):
        with torch.no_grad():
            self.embedding[self.task_id].clamp_(-self.thres_emb, self.thres_emb)

    # --- task end ---------------------------------------------------------------------------------------------
    def on_train_end(self):
        """a^{≤t} = max(a^{≤t−1}, a^t) at s_max, on the best-validation embedding the schedule restored."""
        with torch.no_grad():
            task_mask = torch.sigmoid(self.smax * self.embedding[self.task_id])
            torch.maximum(self.cumulative_mask, task_mask, out=self.cumulative_mask)

    def approach_info(self) -> dict:
        """Fraction of units some task uses (cumulative mask > 0.5), overall and per unit layer."""
        used = (self.cumulative_mask > 0.5).float()
        per_layer = used.split(self.unit_sizes)
        return {"used_units": float(used.mean()),
                "used_units_per_layer": {layer.gate: float(u.mean()) for layer, u in zip(self.unit_layers, per_layer)}}
