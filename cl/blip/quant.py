"""BLIP's per-parameter state on a shared trunk: quantization grid, frozen bits, projection, bit growth.

Every weight and bias of the trunk's `nn.Linear` / `nn.Conv2d` modules is a *quantized parameter*:
it lives in (-bound, bound) and, after task t, sits on the grid bound·k/2^b of its b frozen bits. Per parameter
we keep three persistent buffers (9 bytes, constant in the number of tasks):

- `prev`   float32: the value after the last task-end re-quantization,
- `bits`   uint8:   the number of frozen bits b (0 … max_bit),
- `fisher` float32: the running mean of the Fisher over the tasks so far, the prior counted as one entry.

During training, the projection after each optimizer step clamps every parameter into
[prev - bound·2^-b, prev + bound·2^-b] ∩ [-bound·(1-2^-max_bit), bound·(1-2^-max_bit)] (docs/blip.md, "What
happens"). The two limits are precomputed once per task (`prepare_box`), so the step costs one `clamp_` per
tensor; that cache (8 bytes per parameter) is transient, dropped at task end (`drop_box`) and never checkpointed.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from cl.config.options import Choice, Float, Int
from cl.errors import ConfigError

QUANTIZED_TYPES = (nn.Linear, nn.Conv2d)
INITS = ("normal", "default", "orthogonal")
PRIOR_FANS = ("fan_in", "max")

# BLIP's quantization knobs, the same for the supervised and the RL approach
QUANT_OPTIONS = {"F_prior": Float(gt=0), "max_bit": Int(ge=1, le=30), "bound_scale": Float(gt=0),
                 "init": Choice(INITS), "prior_fan": Choice(PRIOR_FANS)}
BIAS_BOUND = 1.0  # biases live in (-1, 1) in every official code base


@dataclass(frozen=True)
class QuantSettings:
    """The quantization constants (docs/blip.md, "Configuration").

    F_prior: prior precision per parameter in the official 1/B² scale (see `cl.stats.fisher`); per layer it is
      F_prior·fan (fan = fan_in, or max(fan_in, fan_out) with prior_fan="max").
    bound_scale: weights live in ±bound_scale/√fan (6: ImageClassification after the fix; 20: miniImageNet).
    init: "normal" = normal(0, 1/√fan_in) clamped to ±bound; "default" = PyTorch's init; "orthogonal" = orthogonal
      with relu gain, clamped (RL). Biases start at 0 except with "default".
    prior_fan: which fan scales the bound and the prior: "fan_in" (classification) or "max" (RL).
    """

    F_prior: float = 1e-15
    max_bit: int = 20
    bound_scale: float = 6.0
    init: str = "normal"
    prior_fan: str = "fan_in"


def layer_fan(module: nn.Module, prior_fan: str) -> int:
    fan_in = module.weight[0].numel()  # in_features, or C_in/groups·k·k
    return fan_in if prior_fan == "fan_in" else max(fan_in, module.weight.shape[0])


def quantized_layers(trunk: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(name, m) for name, m in trunk.named_modules() if isinstance(m, QUANTIZED_TYPES)]


def quantize(value: torch.Tensor, bits: torch.Tensor, bound: float) -> torch.Tensor:
    """Nearest point of the grid bound·k/2^bits (integer k); 0 where bits = 0."""
    scale = torch.exp2(bits.to(value.dtype))
    q = torch.round(value / bound * scale) / scale * bound
    return q.masked_fill_(bits == 0, 0.0)


def grid_index(value: torch.Tensor, bits: torch.Tensor, bound: float) -> torch.Tensor:
    """The integer k of a value that is on its grid (value = bound·k/2^bits), as int64."""
    return torch.round(value.double() / bound * torch.exp2(bits.double())).long().masked_fill_(bits == 0, 0)


def bit_growth(fisher_mean: torch.Tensor, fisher_task: torch.Tensor, t: int) -> torch.Tensor:
    """Bits to freeze after task t (0-based): max(0, ceil(IG)), IG = ½·log2(F̄_new / F̄),
    F̄_new = ((t+1)·F̄ + F_t)/(t+2) (docs/blip.md, "What happens")."""
    new_mean = ((t + 1) * fisher_mean + fisher_task) / (t + 2)
    gain = 0.5 * torch.log2(new_mean / fisher_mean)
    return torch.ceil(gain).clamp_(min=0)


class ParamState(nn.Module):
    """The BLIP state of one quantized parameter (a weight or a bias)."""

    def __init__(self, param: nn.Parameter, bound: float, prior: float):
        super().__init__()
        self.bound = bound
        self.register_buffer("prev", torch.zeros_like(param.data, dtype=torch.float32))
        self.register_buffer("bits", torch.zeros_like(param.data, dtype=torch.uint8))
        self.register_buffer("fisher", torch.full_like(param.data, prior, dtype=torch.float32))
        self.low: torch.Tensor | None = None  # the projection box of the current task (transient)
        self.high: torch.Tensor | None = None

    def prepare_box(self, max_bit: int):
        clip = self.bound * (1.0 - 2.0 ** -max_bit)
        half_width = torch.ldexp(torch.full_like(self.prev, self.bound), -self.bits.to(torch.int32))
        self.low = (self.prev - half_width).clamp_(min=-clip)
        self.high = (self.prev + half_width).clamp_(max=clip)

    def drop_box(self):
        self.low = self.high = None

    def freeze(self, param: torch.Tensor, fisher_task: torch.Tensor, t: int, max_bit: int) -> None:
        """Task end: grow the bits by the information gain, re-quantize the parameter to them (0 bits → 0) and
        remember it as `prev`, then fold the task's Fisher into the running mean, in this order (docs/blip.md, "What
        happens")."""
        grow = bit_growth(self.fisher, fisher_task, t)
        self.bits.copy_((self.bits.float() + grow).clamp_(max=max_bit).to(torch.uint8))
        param.copy_(quantize(param, self.bits, self.bound))
        self.prev.copy_(param)
        self.fisher.mul_(t + 1).add_(fisher_task).div_(t + 2)


def state_key(param_name: str) -> str:
    return param_name.replace(".", "__")  # ModuleDict keys cannot contain dots


class TrunkQuantizer(nn.Module):
    """The BLIP state of every quantized parameter of a trunk, keyed by the parameter's name in the trunk
    (`state[state_key("0.weight")]`). Kept outside the network, so the network's own state_dict stays that of
    a plain model; the approach's state_dict (checkpoints) carries it."""

    def __init__(self, trunk: nn.Module, settings: QuantSettings):
        super().__init__()
        self.settings = settings
        self.layers = quantized_layers(trunk)
        if not self.layers:
            raise ConfigError(f"BLIP needs nn.Linear or nn.Conv2d layers in the model's trunk; "
                              f"{type(trunk).__name__} has none")
        self.params: dict[str, nn.Parameter] = {}
        self.layer_params: dict[str, list[str]] = {}  # layer name → names of its quantized parameters
        self.state = nn.ModuleDict()
        for name, module in self.layers:
            self.layer_params[name] = []
            fan = layer_fan(module, settings.prior_fan)
            prior = settings.F_prior * fan
            bounds = {"weight": settings.bound_scale / math.sqrt(fan), "bias": BIAS_BOUND}
            for kind, bound in bounds.items():
                param = getattr(module, kind)
                if param is None:
                    continue
                full = f"{name}.{kind}" if name else kind
                self.params[full] = param
                self.layer_params[name].append(full)
                self.state[state_key(full)] = ParamState(param, bound, prior)

    def named_states(self):
        for name, param in self.params.items():
            yield name, param, self.state[state_key(name)]

    @torch.no_grad()
    def initialize(self):
        """Initialize the trunk's quantized parameters as the chosen official code base does."""
        init = self.settings.init
        if init == "default":
            return
        for layer, module in self.layers:
            bound = self.state[state_key(self.layer_params[layer][0])].bound
            w = module.weight
            if init == "normal":
                w.normal_(0.0, 1.0 / math.sqrt(module.weight[0].numel()))
            else:
                nn.init.orthogonal_(w, gain=nn.init.calculate_gain("relu"))
            w.clamp_(-bound, bound)
            if module.bias is not None:
                module.bias.zero_()

    # --- training ---------------------------------------------------------------------------------------------
    def prepare_box(self):
        for _, _, state in self.named_states():
            state.prepare_box(self.settings.max_bit)

    def drop_box(self):
        for _, _, state in self.named_states():
            state.drop_box()

    @torch.no_grad()
    def project_(self):
        """Clamp every parameter into its box (after each optimizer step): one in-place op per tensor."""
        for _, param, state in self.named_states():
            if state.low is None:
                raise RuntimeError("TrunkQuantizer.project_ called outside a task (prepare_box not run)")
            torch.clamp(param, state.low, state.high, out=param)

    # --- task end ---------------------------------------------------------------------------------------------
    @torch.no_grad()
    def freeze(self, fisher_task: dict[str, torch.Tensor], t: int):
        for name, param, state in self.named_states():
            state.freeze(param, fisher_task[name], t, self.settings.max_bit)

    # --- reporting --------------------------------------------------------------------------------------------
    def capacity_per_layer(self) -> dict[str, float]:
        """Frozen bits ÷ (max_bit × parameters), per layer (weight and bias together), keyed by module path."""
        return {layer: self._capacity(names) for layer, names in self.layer_params.items()}

    def capacity(self) -> float:
        return self._capacity(list(self.params))

    def _capacity(self, names: list[str]) -> float:
        states = [self.state[state_key(n)] for n in names]
        bits = sum(int(s.bits.sum(dtype=torch.int64)) for s in states)
        return bits / (self.settings.max_bit * sum(s.bits.numel() for s in states))

    def bit_histograms(self) -> dict[str, list[int]]:
        """Per layer: how many parameters have 0, 1, …, max_bit frozen bits."""
        hist = {}
        for layer, names in self.layer_params.items():
            counts = sum(torch.bincount(self.state[state_key(n)].bits.flatten().long().cpu(),
                                        minlength=self.settings.max_bit + 1) for n in names)
            hist[layer] = counts.tolist()
        return hist
