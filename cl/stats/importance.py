"""Task-end importance estimates on a task's training data: the Fisher (exact, or one of the legacy estimators of the
official baseline codes), MAS's Ω and MAS-local's Hebbian Ω. Each returns {"<module>.<parameter>": tensor} for the
parameters of the given modules (names as the caller gives them, e.g. relative to the network).

Samples are drawn from a generator seeded with `torch.initial_seed()` (the task's seed in the pipeline), so every
rank and a resumed run draw the same ones whatever training consumed. Under torch.distributed every rank takes its
share of the batches (the same batches as one process would form) and the sums are all-reduced. The Fisher is the
one sampler's (`cl.stats.fisher.sample_fisher`), as are the batching, the sharding and the all-reduce of MAS's Ω.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

import torch
from torch import nn

from cl.models.modes import evaluating
from cl.stats.fisher import FisherSampling, normalized_over_ranks, rank_batches, sample_fisher, task_generator
from cl.stats.per_sample import gradient_statistics, hebbian_sums, output_norm
from data.tensor_loader import BatchSource


@dataclass(frozen=True)
class FisherOptions:
    """estimator:
    - exact: the true Fisher, (1/N) Σ_i g_i², labels sampled from the model, eval mode, `samples` random samples;
    - hat_legacy: joansj/hat `fisher_matrix_diag`: empirical (true labels), train mode, gradients of the batch-mean
      loss over consecutive batches of `batch_size` (HAT: 20), F = Σ_batches 20·g_b² / N;
    - blip_legacy: BLIP's miniImageNet copy of it: the same with F = Σ_batches 20·g_b² / #batches (its loader's
      batch is 32, the factor stays 20; docs/regularizers.md, ewc);
    - gem_legacy: GEM/BCL `ewc.py`: F = (gradient of the mean cross-entropy over the first `samples` samples of the
      task)², one batch, train mode, true labels.
    samples: how many of the task's training samples (null: all; capped at what the task has); the legacy
    estimators take the first ones, in the stored order, as their codes do."""

    estimator: str = "exact"
    samples: int | None = 8000
    batch_size: int = 100


def owning_modules(root: nn.Module, names) -> dict[str, nn.Module]:
    """The modules of `root` that directly own the parameters called `names` (as in root.named_parameters())."""
    wanted = set(names)
    return {name: m for name, m in root.named_modules()
            if any((f"{name}.{kind}" if name else kind) in wanted for kind, _ in m.named_parameters(recurse=False))}


def _rows(available: int, samples: int | None, random: bool) -> torch.Tensor:
    n = available if samples is None else min(samples, available)
    return torch.randperm(available, generator=task_generator())[:n] if random else torch.arange(n)


def _batches(source: BatchSource, rows: torch.Tensor, batch_size: int) -> Iterator[tuple[torch.Tensor, None]]:
    """This rank's share of the batches of `rows` (in order), each as (inputs, None)."""
    return rank_batches(source.x, rows, batch_size, transform=source.transform)


def _mean(sums: dict[str, torch.Tensor], count: int) -> dict[str, torch.Tensor]:
    return normalized_over_ranks(sums, count, lambda total: total)


def fisher_diagonal(model: nn.Module, modules: dict[str, nn.Module], logits_fn: Callable, source: BatchSource,
                    options: FisherOptions) -> dict[str, torch.Tensor]:
    """The diagonal Fisher of the modules' parameters on the task's training data `source` (see FisherOptions)."""
    return sample_fisher(model, modules, logits_fn, source.x, fisher_sampling(options), source.y, source.transform)


def fisher_sampling(options: FisherOptions) -> FisherSampling:
    """EWC's estimators as samplings of the one Fisher sampler."""
    if options.estimator == "exact":  # random rows and label noise from the task's seed, eval mode, (1/N) Σ g_i²
        return FisherSampling(options.samples, options.batch_size, draws="task", training=False, normalize="mean")
    return FisherSampling(options.samples, None if options.estimator == "gem_legacy" else options.batch_size,
                          labels="true", per_sample=False, draws=None, training=True,
                          normalize="sum" if options.estimator == "gem_legacy" else options.estimator)


def mas_omega(model: nn.Module, modules: dict[str, nn.Module], logits_fn: Callable, source: BatchSource, norm: str,
              per_sample: bool, batch_size: int, samples: int | None) -> dict[str, torch.Tensor]:
    """MAS's Ω = (1/N) Σ_i |∂‖F(x_i)‖²/∂θ| (l2; l1: ‖F‖₁; vector: Σ_j |∂F_j/∂θ|) on the task's training inputs, no
    labels, eval mode; with per_sample=False the official codes' (1/N) Σ_batches |∂ Σ_{i∈batch} ‖F(x_i)‖²/∂θ|."""
    rows = _rows(len(source.y), samples, random=samples is not None)
    with evaluating(model):
        sums, count = gradient_statistics(modules, logits_fn, _batches(source, rows, batch_size), output_norm(norm),
                                          "abs", per_sample=per_sample)
    return _mean(sums, count)


def hebbian_omega(model: nn.Module, modules: dict[str, nn.Module], logits_fn: Callable, source: BatchSource,
                  fires: set[str], batch_size: int, samples: int | None) -> dict[str, torch.Tensor]:
    """MAS-local's Ω_ij = mean over samples and positions of |y_i·y_j| (see `cl.stats.per_sample.hebbian_sums`), eval
    mode."""
    rows = _rows(len(source.y), samples, random=samples is not None)
    with evaluating(model):
        sums, positions, count = hebbian_sums(modules, logits_fn, _batches(source, rows, batch_size), fires)
    return {k: v.div_(positions[k.rpartition(".")[0]]) for k, v in _mean(sums, count).items()}
