"""The one diagonal-Fisher sampler (`sample_fisher`), which BLIP (`estimate_fisher`), EWC and its relatives
(`cl.stats.importance.fisher_diagonal`) and continual RL (`rl.approaches.policy_fisher`) all call: it draws the rows
and the label noise, forms the batches, takes this rank's share of them, sets the model's mode, sums the squared
gradients (`cl.stats.per_sample.gradient_statistics`), all-reduces the sums and normalizes them. What the callers
differ in is a `FisherSampling`: per-sample or per-minibatch gradients, labels sampled from the model or the true
ones, where the random draws come from, how the work is sharded, the mode, the normalization. Each caller keeps its
own draws and numbers (the choices are there because changing any of them would change a recipe's results).

BLIP's scale convention (docs/blip.md, "The F_prior convention"). The textbook (per-sample) Fisher of a parameter is
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
from typing import Callable, Iterator

import torch
from torch import nn

from cl.config.options import Int, options
from cl.models.modes import in_mode
from cl.run.distributed import all_reduce_sums, rank_share
from cl.stats.per_sample import gradient_statistics, sample_labels, sampled_label_nll, true_label_mean_ce
from data.image_cache import MemmapImages, take_rows

log = logging.getLogger(__name__)
__all__ = ["FisherSampling", "FisherSettings", "NORMALIZATIONS", "estimate_fisher", "normalized_over_ranks",
           "rank_batches", "sample_fisher", "sample_labels", "squared_gradient_sums", "task_generator"]

LEGACY_BATCH_FACTOR = 20  # the batch size hard-coded in HAT's fisher_matrix_diag (sbatch=20), kept by BLIP's copy

# what the all-reduced sums are divided by, from N (the samples summed over, all ranks) and B (the batch size)
NORMALIZATIONS: dict[str, Callable[[int, int], float]] = {
    "mean": lambda n, b: n,  # (1/N) Σ_i g_i²: the textbook Fisher
    "official_scale": lambda n, b: n * b ** 2,  # BLIP's official 1/B² scale (the module docstring)
    "minibatch_mean": lambda n, b: n * b,  # Σ_k (B·ḡ_k)² / (B·N) = (1/K) Σ_k ḡ_k²: BLIP's RL online-EWC baseline
    "hat_legacy": lambda n, b: n / LEGACY_BATCH_FACTOR,  # Σ_batches 20·g_b² / N
    "blip_legacy": lambda n, b: -(-n // b) / LEGACY_BATCH_FACTOR,  # Σ_batches 20·g_b² / #batches
    "sum": lambda n, b: 1,  # the sums as they are (GEM/BCL's one batch)
}
DRAWS = ("global", "device", "task", None)


@options(num_samples=Int(ge=1), batch_size=Int(ge=1))
@dataclass
class FisherSettings:
    """num_samples: training samples of the task used (capped at what the task has; official 8,000);
    batch_size: Fisher batch size B, which also fixes the official 1/B² scale (100; miniImageNet 10)."""

    num_samples: int = 8000
    batch_size: int = 100


def squared_gradient_sums(layers: dict[str, nn.Module], logits_fn, batches) -> tuple[dict[str, torch.Tensor], int]:
    """Σ_i g_i² (textbook per-sample gradients, labels sampled from the model) for every weight and bias of
    `layers` (name → module), over `batches` of (inputs, uniform noise per sample for `sample_labels`).
    `logits_fn(x)` must run the model so that every layer sees the batch.
    Returns ({"<layer>.weight": sum, …}, number of samples)."""
    return gradient_statistics(layers, logits_fn, batches, sampled_label_nll, "square")


@dataclass(frozen=True)
class FisherSampling:
    """How a diagonal Fisher is sampled: what the estimates of BLIP, EWC and RL differ in (see `sample_fisher`).

    samples: how many rows of the data are used (None: all; capped at what there is); batch_size: B, rows per
      batch (None: all of them in one batch);
    labels: `sampled`: the objective is Σ_i −log p(y_i | x_i), y_i drawn from the model by inverse CDF from a
      uniform per row (the true Fisher); `true`: the batch-mean cross-entropy against the data's own labels (the
      empirical Fisher of the legacy codes);
    per_sample: Σ_i g_i² over the rows, g_i row i's own gradient; False: Σ_b g_b² over the batches, g_b the
      gradient of batch b's objective;
    draws: where the rows and the label noise come from. `global`: torch's global RNG on the CPU (as the pipeline
      seeds every rank alike, every rank draws the same): the first rows of a permutation, then one uniform per row
      taken (BLIP); `device`: the same on the inputs' device (RL: CUDA's generator on a GPU); `task`: two
      generators seeded with the task's seed (`task_generator`: whatever training drew), one for the permutation,
      one for a uniform per row of the data, looked up by row (EWC); None: the first rows in their stored order and
      no noise (true labels; the legacy codes);
    shard: under torch.distributed each rank takes every W-th `batches` of the rows, or every W-th row (`samples`)
      and batches its share (BLIP); the sums are all-reduced either way;
    training: the model's mode during the estimate (None: as it is), restored afterwards;
    normalize: what the all-reduced sums are divided by (a key of NORMALIZATIONS)."""

    samples: int | None
    batch_size: int | None
    labels: str = "sampled"
    per_sample: bool = True
    draws: str | None = "global"
    shard: str = "batches"
    training: bool | None = False
    normalize: str = "mean"

    def __post_init__(self):
        if self.labels not in ("sampled", "true") or self.draws not in DRAWS or \
                self.shard not in ("batches", "samples") or self.normalize not in NORMALIZATIONS:
            raise ValueError(f"not a Fisher sampling: {self}")
        if self.labels == "sampled" and self.draws is None:
            raise ValueError("labels sampled from the model need random draws (draws=None takes true labels)")


def task_generator() -> torch.Generator:
    """The generator task-end estimates draw from: seeded with the task's seed, the same on every rank."""
    return torch.Generator().manual_seed(torch.initial_seed() % 2**63)


def _draw(sampling: FisherSampling, inputs, n: int,
          labels: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The rows taken, in order, and per row taken its label noise (sampled labels) or its true label."""
    available = len(inputs)
    device = inputs.device if sampling.draws == "device" else None
    if sampling.draws is None:
        rows = torch.arange(n)
    else:
        generator = task_generator() if sampling.draws == "task" else None
        rows = torch.randperm(available, generator=generator, device=device)[:n]
    if sampling.labels == "true":
        return rows, labels[rows.to(labels.device)]
    if sampling.draws == "task":  # a uniform per row of the data, from its own generator
        return rows, torch.rand(available, generator=task_generator())[rows]
    return rows, torch.rand(n, device=device)


def rank_batches(inputs, rows: torch.Tensor, batch_size: int, extra: torch.Tensor | None = None,
                 transform: Callable | None = None, shard: str = "batches") -> Iterator[tuple[torch.Tensor, object]]:
    """This rank's share of the batches of `rows` of `inputs` (a tensor or a disk cache) in order, each as (model
    inputs, the batch's part of `extra`, which holds a value per row taken): consecutive batches of `batch_size`
    rows, every W-th of them (shard='batches'), or every W-th row, batched (shard='samples'); all of them outside
    torch.distributed. `transform` turns stored rows into model inputs."""
    if shard == "samples":
        share = rank_share(len(rows))
        rows, extra = rows[share], None if extra is None else extra[share]
        starts = range(0, len(rows), batch_size)
    else:
        starts = list(range(0, len(rows), batch_size))[rank_share(-(-len(rows) // batch_size))]
    for start in starts:
        x = take_rows(inputs, rows[start:start + batch_size].to(inputs.device))
        yield ((x if transform is None else transform(x)),
               None if extra is None else extra[start:start + batch_size].to(inputs.device))


def normalized_over_ranks(sums: dict[str, torch.Tensor], count: int,
                          divisor: Callable[[int], float]) -> dict[str, torch.Tensor]:
    """Every rank's sums added up, then divided (in place) by `divisor(N)`, N the samples summed over."""
    sums, count = all_reduce_sums(sums, count)
    if count == 0:
        raise RuntimeError("no samples to estimate the statistics on")
    d = divisor(count)
    return {k: v.div_(d) for k, v in sums.items()}


def sample_fisher(model: nn.Module, modules: dict[str, nn.Module], logits_fn: Callable[[torch.Tensor], torch.Tensor],
                  inputs: torch.Tensor | MemmapImages, sampling: FisherSampling, labels: torch.Tensor | None = None,
                  transform: Callable | None = None) -> dict[str, torch.Tensor]:
    """The diagonal Fisher of the parameters the `modules` (name → module) own, {"<module>.<parameter>": tensor},
    on rows of `inputs` (in memory or a disk cache; `transform` turns stored rows into model inputs; `labels`: the
    rows' true labels, for labels='true'), sampled as `sampling` says. `logits_fn(x)` runs the model so that the
    modules see the batch. Every rank draws the same rows and noise and takes its share; the sums are all-reduced,
    so the Fisher is one process's."""
    available = len(inputs)
    n = available if sampling.samples is None else min(sampling.samples, available)
    batch_size = sampling.batch_size or max(n, 1)
    rows, extra = _draw(sampling, inputs, n, labels)
    objective = sampled_label_nll if sampling.labels == "sampled" else true_label_mean_ce
    with in_mode(model, sampling.training):
        sums, count = gradient_statistics(modules, logits_fn,
                                          rank_batches(inputs, rows, batch_size, extra, transform, sampling.shard),
                                          objective, "square", per_sample=sampling.per_sample)
    normalization = NORMALIZATIONS[sampling.normalize]
    return normalized_over_ranks(sums, count, lambda total: normalization(total, batch_size))


def estimate_fisher(model: nn.Module, layers: dict[str, nn.Module], logits_fn, x: torch.Tensor | MemmapImages,
                    settings: FisherSettings, transform=None) -> dict[str, torch.Tensor]:
    """BLIP's Fisher of `layers` on up to `settings.num_samples` random rows of `x` (a task's training inputs, in
    memory or in a disk cache), in the official 1/B² scale, with the model in eval mode (dropout off, BatchNorm on
    running statistics). The rows and their label noise come from torch's global RNG; each rank takes every W-th
    row."""
    if len(x) < settings.num_samples:
        log.debug("BLIP Fisher: the task has %d training samples; using %d instead of fisher.num_samples=%d",
                  len(x), len(x), settings.num_samples)
    sampling = FisherSampling(settings.num_samples, settings.batch_size, shard="samples", normalize="official_scale")
    return sample_fisher(model, layers, logits_fn, x, sampling, transform=transform)

