"""The HAT/BLIP AlexNet trunk: three conv blocks and two fully connected layers, for any square-ish input.

Kernel sizes follow the input size as in HAT (size//8, size//10, 2), so the same class gives the 32×32 network
(kernels 4, 3, 2) and the 84×84 miniImageNet one (kernels 10, 8, 2). Only nn.Conv2d / nn.Linear / nn.ReLU /
nn.Dropout / nn.MaxPool2d are used, so per-layer mechanisms (BLIP's quantized parameters) attach to every layer.
"""
from __future__ import annotations

from typing import Sequence

from torch import nn

from cl.config.options import Bool, Float, Int, ListOf, PROBABILITY, options
from cl.errors import ConfigError


def _kernels(height: int) -> tuple[int, int, int]:
    return height // 8, height // 10, 2


def _map_side(side: int, kernels: Sequence[int]) -> int:
    """Side of the last feature map for an input side `side` (0 when some layer cannot be built)."""
    for kernel in kernels:
        if kernel < 1 or side < kernel:
            return 0
        side = (side - kernel + 1) // 2  # valid conv, then 2×2 max-pool
    return side


def _smallest_working_size() -> int:
    return next(s for s in range(1, 1000) if _map_side(s, _kernels(s)) >= 1)


@options(mul=Float(gt=0), fc_sizes=ListOf(Int(ge=1), length=2), scale_fc=Bool(), dropout=PROBABILITY |
         ListOf(PROBABILITY, length=5))
class AlexNet(nn.Sequential):
    """conv(k=H//8) → conv(k=H//10) → conv(k=2), each ReLU → Dropout → MaxPool2, then 2 × (Linear → ReLU →
    Dropout). Conv widths are round(64·mul), round(128·mul), round(256·mul); FC widths are `fc_sizes`, scaled by
    `mul` only when `scale_fc` (BLIP's mixture5 net scales them, its CIFAR net does not).

    `dropout` lists the five rates after conv1, conv2, conv3, fc1, fc2: 0.2 everywhere in the HAT/BLIP 32×32 net and
    in the miniImageNet baselines; BLIP's miniImageNet Q-AlexNet uses 0.2, 0.2, 0.5, 0.5, 0.5 (docs/streams.md,
    "Models")."""

    def __init__(self, input_shape: Sequence[int], mul: float = 1.0, fc_sizes: Sequence[int] = (2048, 2048),
                 scale_fc: bool = False, dropout: Sequence[float] = (0.2, 0.2, 0.2, 0.2, 0.2)):
        if len(input_shape) != 3:
            raise ConfigError(f"model alexnet needs image inputs [C, H, W]; the stream gives {tuple(input_shape)}")
        channels, height, width = input_shape
        kernels = _kernels(height)
        map_h, map_w = _map_side(height, kernels), _map_side(width, kernels)
        if min(map_h, map_w) < 1:
            raise ConfigError(f"model alexnet needs inputs of at least {_smallest_working_size()}×"
                              f"{_smallest_working_size()} pixels; the stream gives {height}×{width} "
                              f"(use model=mlp or model=resnet18 for small images)")
        if len(dropout) != 5 or len(fc_sizes) != 2:
            raise ConfigError(f"model.trunk.dropout needs 5 rates (conv1..3, fc1, fc2) and fc_sizes 2 widths; "
                              f"got {list(dropout)} and {list(fc_sizes)}")
        conv_widths = [round(64 * mul), round(128 * mul), round(256 * mul)]
        fc_widths = [round(s * mul) if scale_fc else int(s) for s in fc_sizes]
        layers: list[nn.Module] = []
        in_ch = channels
        for out_ch, kernel, rate in zip(conv_widths, kernels, dropout[:3]):
            layers += [nn.Conv2d(in_ch, out_ch, kernel), nn.ReLU(), nn.Dropout(rate), nn.MaxPool2d(2)]
            in_ch = out_ch
        layers.append(nn.Flatten())
        features = in_ch * map_h * map_w
        for out_features, rate in zip(fc_widths, dropout[3:]):
            layers += [nn.Linear(features, out_features), nn.ReLU(), nn.Dropout(rate)]
            features = out_features
        super().__init__(*layers)
        self.out_dim = features

    def layers_in_order(self) -> list[tuple[str, nn.Module]]:
        """The trunk's layers in the order forward applies them (HAT finds its unit layers in these)."""
        return list(self.named_children())
