"""BLIP's Fisher estimate: exact per-sample squared gradients of every trunk Linear/Conv2d, computed fast.

Scale convention (reference §5, Q18). The textbook (per-sample) Fisher of a parameter is
    F = (1/N) Σ_i g_i²,   g_i = ∂ℓ_i/∂θ,   ℓ_i = -log p(y_i | x_i),  y_i ~ p(· | x_i)  (labels sampled from
the model, not the true labels). The official code differentiates the batch-*mean* loss, so each of its
per-sample gradients is g_i / B and its Fisher is F / B², B being its Fisher batch size (100 for image
classification, 10 for miniImageNet). The official F_prior values (1e-15 …) are calibrated to that scale, so this
module returns F / B² with B = `FisherSettings.batch_size`: `approach.F_prior=1e-15` here allocates the same
bits as `--F-prior 1e-15` there.

How it is fast: `cl.stats.per_sample.gradient_statistics` (shared with EWC and MAS). For a Linear layer with input x_i and
output gradient δ_i, Σ_i g_i² = (δ²)ᵀ(x²): one matrix product per batch; a Conv2d's per-sample gradients come from
unfold and a batched matmul over chunks of the batch; parameter gradients are never formed per sample.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn

from cl.run.distributed import all_reduce_sums, rank_share
from cl.errors import ConfigError
from cl.stats.per_sample import gradient_statistics, sample_labels, sampled_label_nll
from data.image_cache import MemmapImages, take_rows

log = logging.getLogger(__name__)
__all__ = ["FisherSettings", "estimate_fisher", "official_scale_fisher", "sample_labels", "squared_gradient_sums"]


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


def squared_gradient_sums(layers: dict[str, nn.Module], logits_fn, batches) -> tuple[dict[str, torch.Tensor], int]:
    """Σ_i g_i² (textbook per-sample gradients, labels sampled from the model) for every weight and bias of
    `layers` (name → module), over `batches` of (inputs, uniform noise per sample for `sample_labels`).
    `logits_fn(x)` must run the model so that every layer sees the batch.
    Returns ({"<layer>.weight": sum, …}, number of samples)."""
    return gradient_statistics(layers, logits_fn, batches, sampled_label_nll, "square")


def official_scale_fisher(sums: dict[str, torch.Tensor], count: int, batch_size: int) -> dict[str, torch.Tensor]:
    """Mean squared per-sample gradient in the official scale: Σ g_i² / (N·B²) (see the module docstring)."""
    return {k: v / (count * batch_size ** 2) for k, v in sums.items()}


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

