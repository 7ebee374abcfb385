"""BLIP's Fisher estimate: exact per-sample squared gradients of every trunk Linear/Conv2d, computed fast.

Scale convention (reference §5, Q18). The textbook (per-sample) Fisher of a parameter is
    F = (1/N) Σ_i g_i²,   g_i = ∂ℓ_i/∂θ,   ℓ_i = -log p(y_i | x_i),  y_i ~ p(· | x_i)  (labels sampled from
the model, not the true labels). The official code differentiates the batch-*mean* loss, so each of its
per-sample gradients is g_i / B and its Fisher is F / B², B being its Fisher batch size (100 for image
classification, 10 for miniImageNet). The official F_prior values (1e-15 …) are calibrated to that scale, so this
module returns F / B² with B = `FisherSettings.batch_size`: `approach.F_prior=1e-15` here allocates the same
bits as `--F-prior 1e-15` there.

How it is fast. For a Linear layer with input x_i and output gradient δ_i (per sample, from the summed loss),
g_i = δ_i x_iᵀ and g_i² = (δ_i²)(x_i²)ᵀ, so Σ_i g_i² = (δ²)ᵀ(x²): one matrix product per batch. A Conv2d's
per-sample gradient is δ_i (C_out×L) @ unfold(x_i)ᵀ (L×C_in·k·k): a batched matmul over chunks of the batch,
then squared and summed. Inputs and output gradients are captured with forward hooks on the trunk's layers and
one `torch.autograd.grad` call per batch; parameter gradients are never formed.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from cl.errors import ConfigError
from data.image_cache import MemmapImages, take_rows

log = logging.getLogger(__name__)
CHUNK_BYTES = 256 * 2**20  # bound on the per-sample conv gradients held at once


@dataclass
class FisherSettings:
    """num_samples: training samples of the task used (capped at what the task has; official 8,000);
    batch_size: Fisher batch size B, which also fixes the official 1/B² scale (100; miniImageNet 10)."""

    num_samples: int = 8000
    batch_size: int = 100

    def __post_init__(self):
        if self.num_samples < 1 or self.batch_size < 1:
            raise ConfigError(f"approach.fisher needs num_samples >= 1 and batch_size >= 1 "
                              f"(got {self.num_samples}, {self.batch_size})")


class _LayerRecorder:
    """Forward hooks that keep each layer's input and output for one batch."""

    def __init__(self, layers: dict[str, nn.Module]):
        self.inputs: dict[str, torch.Tensor] = {}
        self.outputs: dict[str, torch.Tensor] = {}
        self.handles = [m.register_forward_hook(self._hook(name)) for name, m in layers.items()]

    def _hook(self, name: str):
        def hook(module, args, output):
            self.inputs[name] = args[0].detach()
            self.outputs[name] = output
            # hand on a copy: an in-place op downstream (ReLU(inplace=True)) must not overwrite the tensor whose
            # gradient we take
            return output.clone()
        return hook

    def remove(self):
        for h in self.handles:
            h.remove()


def _linear_sums(x: torch.Tensor, delta: torch.Tensor, has_bias: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    if x.dim() == 2:
        weight = delta.square().t() @ x.square()
        bias = delta.square().sum(0) if has_bias else None
        return weight, bias
    # extra dims (e.g. tokens): the per-sample gradient is a sum over them, so it no longer factorizes
    x, delta = x.flatten(1, -2), delta.flatten(1, -2)
    weight = torch.einsum("bto,bti->boi", delta, x).square().sum(0)
    bias = delta.sum(1).square().sum(0) if has_bias else None
    return weight, bias


def _conv_input_columns(module: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    if module.padding_mode != "zeros":
        raise ConfigError(f"BLIP's Fisher supports Conv2d with padding_mode='zeros' only (got "
                          f"{module.padding_mode!r}); use zero padding in the model")
    padding = module.padding
    if isinstance(padding, str):  # 'valid' or 'same': pad explicitly, then unfold without padding
        x = F.pad(x, module._reversed_padding_repeated_twice)
        padding = 0
    return F.unfold(x, module.kernel_size, dilation=module.dilation, padding=padding, stride=module.stride)


def _conv_sums(module: nn.Conv2d, x: torch.Tensor, delta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    groups = module.groups
    cols = _conv_input_columns(module, x)  # B × (C_in·k·k) × L
    B, L = cols.shape[0], cols.shape[2]
    cols = cols.view(B, groups, -1, L)
    delta = delta.reshape(B, groups, -1, L)  # B × G × C_out/G × L
    weight = torch.zeros(groups, delta.shape[2], cols.shape[2], dtype=x.dtype, device=x.device)
    per_sample_bytes = weight.numel() * x.element_size()
    chunk = max(1, CHUNK_BYTES // per_sample_bytes)
    for start in range(0, B, chunk):
        g = torch.einsum("bgol,bgil->bgoi", delta[start:start + chunk], cols[start:start + chunk])
        weight += g.square_().sum(0)
    weight = weight.view(module.weight.shape)
    bias = delta.sum(3).square().sum(0).flatten() if module.bias is not None else None
    return weight, bias


def sample_labels(logits: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """y_i ~ softmax(logits_i), drawn by inverse CDF from the uniform `noise[i]`: a sample's label depends on its
    own noise only, so splitting the samples over ranks draws the same labels as one process."""
    cdf = torch.softmax(logits.detach().double(), dim=1).cumsum(1)
    return (cdf < noise.double().unsqueeze(1)).sum(1).clamp_(max=logits.shape[1] - 1)


def squared_gradient_sums(layers: dict[str, nn.Module], logits_fn, batches) -> tuple[dict[str, torch.Tensor], int]:
    """Σ_i g_i² (textbook per-sample gradients, labels sampled from the model) for every weight and bias of
    `layers` (name → module, each nn.Linear or nn.Conv2d), over `batches` of (inputs, uniform noise per sample
    for `sample_labels`). `logits_fn(x)` must run the model so that every layer sees the batch.
    Returns ({"<layer>.weight": sum, …}, number of samples)."""
    for name, m in layers.items():
        if not isinstance(m, (nn.Linear, nn.Conv2d)):
            raise TypeError(f"layer {name!r} is a {type(m).__name__}; only nn.Linear and nn.Conv2d are supported")
    sums = {}  # every parameter present, even one the forward skipped: ranks all-reduce the same keys
    for name, m in layers.items():
        for kind in ("weight", "bias"):
            if getattr(m, kind) is not None:
                sums[f"{name}.{kind}" if name else kind] = torch.zeros_like(getattr(m, kind))
    count = 0
    recorder = _LayerRecorder(layers)
    try:
        for x, noise in batches:
            with torch.enable_grad():
                logits = logits_fn(x)
                y = sample_labels(logits, noise)
                loss = F.cross_entropy(logits, y, reduction="sum")  # summed: δ_i is sample i's own gradient
                names = list(recorder.outputs)
                deltas = torch.autograd.grad(loss, [recorder.outputs[n] for n in names])
            for name, delta in zip(names, deltas):
                m, x_in = layers[name], recorder.inputs[name]
                if isinstance(m, nn.Linear):
                    w, b = _linear_sums(x_in, delta, m.bias is not None)
                else:
                    w, b = _conv_sums(m, x_in, delta)
                for kind, value in (("weight", w), ("bias", b)):
                    if value is not None:
                        sums[f"{name}.{kind}" if name else kind] += value
            count += len(x)
            recorder.inputs.clear()
            recorder.outputs.clear()
    finally:
        recorder.remove()
    return sums, count


def all_reduce_sums(sums: dict[str, torch.Tensor], count: int) -> tuple[dict[str, torch.Tensor], int]:
    """Under torch.distributed, add up every rank's sums and sample counts (each rank saw its own share)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return sums, count
    for value in sums.values():
        dist.all_reduce(value)
    total = torch.tensor([count], dtype=torch.float64, device=next(iter(sums.values())).device)
    dist.all_reduce(total)
    return sums, int(total.item())


def official_scale_fisher(sums: dict[str, torch.Tensor], count: int, batch_size: int) -> dict[str, torch.Tensor]:
    """Mean squared per-sample gradient in the official scale: Σ g_i² / (N·B²) (see the module docstring)."""
    return {k: v / (count * batch_size ** 2) for k, v in sums.items()}


def rank_share(n: int) -> slice:
    """This rank's disjoint share of n samples (everything outside torch.distributed)."""
    if dist.is_available() and dist.is_initialized():
        return slice(dist.get_rank(), n, dist.get_world_size())
    return slice(0, n)


def estimate_fisher(model: nn.Module, layers: dict[str, nn.Module], logits_fn, x: torch.Tensor | MemmapImages,
                    settings: FisherSettings, transform=None) -> dict[str, torch.Tensor]:
    """BLIP's Fisher of `layers` on up to `settings.num_samples` random rows of `x` (a task's training inputs, in
    memory or in a disk cache),
    in the official 1/B² scale, with the model in eval mode (dropout off, BatchNorm on running statistics).
    The samples and their label noise come from torch's global RNG: every rank draws the same ones and takes its
    share, so the all-reduced Fisher equals a single process's."""
    available = len(x)
    n = min(settings.num_samples, available)
    if n < settings.num_samples:
        log.debug("BLIP Fisher: the task has %d training samples; using %d instead of fisher.num_samples=%d",
                  available, n, settings.num_samples)
    share = rank_share(n)
    chosen = torch.randperm(available)[:n][share].to(x.device)
    noise = torch.rand(n)[share].to(x.device)
    was_training = model.training
    model.eval()
    try:
        def batches():
            for start in range(0, len(chosen), settings.batch_size):
                xb = take_rows(x, chosen[start:start + settings.batch_size])
                yield (transform(xb) if transform is not None else xb), noise[start:start + settings.batch_size]

        sums, count = squared_gradient_sums(layers, logits_fn, batches())
    finally:
        model.train(was_training)
    sums, count = all_reduce_sums(sums, count)
    if count == 0:
        raise RuntimeError("BLIP Fisher: no samples to estimate the Fisher on")
    return official_scale_fisher(sums, count, settings.batch_size)

