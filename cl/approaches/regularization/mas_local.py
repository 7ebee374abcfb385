"""MAS-local: the local (Hebbian) variant of MAS in Aljundi et al. (ECCV 2018, "connection to Hebbian learning"),
which neither the original code nor the re-implementation implements.

The global criterion is applied layer by layer, F replaced by each layer's own output. For a weight θ_ij connecting
input activation y_j to output activation y_i = f(Σ_j θ_ij y_j + b_i), |∂(y_i²)/∂θ_ij| = 2|y_i·y_j| (f = ReLU, where
it fires; f = identity otherwise), so

    Ω_ij = mean over samples (and positions) of |y_i · y_j|   — "neurons that fire together".

Which activations, exactly (cl.stats.per_sample.hebbian_sums):
- y_j: what the layer receives (the input image for the first layer, the previous layer's pooled/flattened ReLU
  output after that);
- y_i: the layer's output after its ReLU when an nn.ReLU directly follows the layer in an nn.Sequential (every hidden
  Linear/Conv2d of the MLP and AlexNet trunks, the BatchNorm of the ResNet stem); otherwise the layer's raw output
  (ResNet convolutions feed a BatchNorm, a shared head gives logits);
- Conv2d: a kernel weight (o, c, kh, kw) connects input channel c at offset (kh, kw) of every receptive field to
  output channel o at that position: unfold gives the inputs per position, and Ω averages |y_o·y_c| over the L output
  positions and the samples;
- biases connect a constant input 1: Ω_bias_i = mean |y_i|;
- BatchNorm's weight connects each normalized input x̂_c to its output, channel by channel: Ω = mean |x̂_c·y_c|.

As in MAS, Ω ← Ω + Ω_new on each task's training inputs (eval mode) and the penalty is λ·Σ Ω (θ − θ*)², applied at
each step as cl/approaches/regularization/regularizer.py describes.
"""
from __future__ import annotations

import torch
from torch import nn

from cl.approaches.regularization.regularizer import ImportanceRegularizer
from cl.config.options import Int, options
from cl.errors import ConfigError
from cl.stats.importance import hebbian_omega
from cl.models.network import TaskNetwork
from cl.stats.per_sample import HEBBIAN_TYPES, BatchNorm


def followed_by_relu(root: nn.Module) -> set[str]:
    """Names (in root) of the modules that an nn.ReLU directly follows inside an nn.Sequential."""
    fires = set()
    for name, module in root.named_modules():
        if isinstance(module, nn.Sequential):
            children = list(module.named_children())
            for (child, _), (_, following) in zip(children, children[1:]):
                if isinstance(following, nn.ReLU):
                    fires.add(f"{name}.{child}" if name else child)
    return fires


@options(omega_batch_size=Int(ge=1), omega_samples=Int(ge=1, optional=True))
class MASLocal(ImportanceRegularizer):
    def __init__(self, net: TaskNetwork, lamb: float = 1.0, omega_batch_size: int = 200,
                 omega_samples: int | None = None, **optimizer):
        super().__init__(net, lamb=lamb, **optimizer)
        self.omega_batch_size, self.omega_samples = omega_batch_size, omega_samples
        self.terms.add()
        self.fires = followed_by_relu(net)

    def setup_stream(self, stream) -> None:
        super().setup_stream(stream)
        for name, module in self.stat_modules.items():
            without_statistics = isinstance(module, BatchNorm) and not module.track_running_stats
            if not isinstance(module, HEBBIAN_TYPES) or without_statistics:
                raise ConfigError(f"approach=mas_local computes Hebbian importances for Linear, Conv2d and BatchNorm "
                                  f"(with running statistics) layers; {name} of model {self.net.name} is a "
                                  f"{type(module).__name__}; use approach=mas")

    @property
    def penalty_scale(self) -> float:
        return self.lamb

    @torch.no_grad()
    def consolidate(self, t: int) -> None:
        term = self.terms[0]
        omega = hebbian_omega(self.net, self.stat_modules, self.task_logits(t), self.task_source(t), self.fires,
                              self.omega_batch_size, self.omega_samples)
        torch._foreach_add_(term.importance.tensors(), [omega[n] for n in term.importance.names])
        term.anchor.copy_(self.parameter_values())
