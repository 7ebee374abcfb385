"""ResNet-18 trunks: BLIP's miniImageNet network and the reduced (nf = 20) network of GEM and BCL.

Both are the same BasicBlock [2, 2, 2, 2] network; they differ in width, stem, BatchNorm and pooling:

| config            | widths                   | stem                  | BatchNorm    | pooling                 |
|-------------------|--------------------------|-----------------------|--------------|-------------------------|
| resnet18 (BLIP)   | int(64·mul)·(1, 2, 4, 8) | 3×3 stride 2, no pool | affine=False | adaptive avg (or avg4)  |
| resnet18_reduced  | 20·(1, 2, 4, 8)          | 3×3 stride 1, no pool | affine       | avg_pool 4 (GEM)        |
| BCL's variant     | as reduced               | + max-pool 3/2        | affine       | adaptive avg            |

Convolutions have no bias. The trunk is built from nn.Conv2d / nn.BatchNorm2d / nn.ReLU / pooling only, so per-layer
mechanisms (BLIP's quantized parameters) attach to every conv.
"""
from __future__ import annotations

import warnings
from typing import Sequence

import torch
from torch import nn

from cl.config.options import Bool, Choice, Float, Int, ListOf, options
from cl.errors import ConfigError

POOLS = ("avg", "avg4")


def _conv_out(side: int, stride: int) -> int:
    """Side after a 3×3 (or 1×1) convolution with padding 1 (0) and `stride`: same formula for both."""
    return (side - 1) // stride + 1


class BasicBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int, bn_affine: bool):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels, affine=bn_affine)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels, affine=bn_affine)
        self.relu2 = nn.ReLU()
        self.shortcut = nn.Sequential()  # identity unless the shape changes
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                                          nn.BatchNorm2d(out_channels, affine=bn_affine))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        return self.relu2(self.bn2(self.conv2(out)) + self.shortcut(x))


@options(mul=Float(gt=0), base_width=Int(ge=1), blocks=ListOf(Int(ge=1), min_len=1), stem_stride=Int(ge=1),
         stem_maxpool=Bool(), bn_affine=Bool(), pool=Choice(POOLS), freeze_bn_after_first_task=Bool())
class ResNet(nn.Module):
    """BasicBlock ResNet trunk. `pool='avg'` averages the whole last feature map (out_dim = last width);
    `pool='avg4'` is a fixed 4×4 average pool as in the official code (on BLIP's 6×6 miniImageNet map it keeps only
    the top-left 4×4 window; on GEM's 32×32 inputs the map is exactly 4×4).

    `freeze_bn_after_first_task`: BatchNorm statistics are learnt on the first task only (BLIP miniImageNet;
    docs/streams.md, "Models").
    The approach calls `start_task(t)` at each task start; from t > 0 on, BatchNorm layers stay in eval mode
    whatever `train()` is asked."""

    def __init__(self, input_shape: Sequence[int], mul: float = 1.0, base_width: int = 64,
                 blocks: Sequence[int] = (2, 2, 2, 2), stem_stride: int = 2, stem_maxpool: bool = False,
                 bn_affine: bool = False, pool: str = "avg", freeze_bn_after_first_task: bool = False):
        super().__init__()
        if len(input_shape) != 3:
            raise ConfigError(f"model resnet needs image inputs [C, H, W]; the stream gives {tuple(input_shape)}")
        channels, height, width = input_shape
        widths = [int(base_width * 2 ** i * mul) for i in range(len(blocks))]
        if min(widths) < 1:
            raise ConfigError(f"model.trunk.mul={mul} leaves a ResNet stage without channels; raise mul")
        self.freeze_bn_after_first_task = freeze_bn_after_first_task
        self.bn_frozen = False

        stem: list[nn.Module] = [nn.Conv2d(channels, widths[0], 3, stem_stride, 1, bias=False),
                                 nn.BatchNorm2d(widths[0], affine=bn_affine), nn.ReLU()]
        sides = [_conv_out(height, stem_stride), _conv_out(width, stem_stride)]
        if stem_maxpool:
            stem.append(nn.MaxPool2d(3, 2, 1))
            sides = [_conv_out(s, 2) for s in sides]
        stages: list[nn.Module] = []
        in_channels = widths[0]
        for i, (out_channels, n_blocks) in enumerate(zip(widths, blocks)):
            stride = 1 if i == 0 else 2
            for b in range(n_blocks):
                stages.append(BasicBlock(in_channels, out_channels, stride if b == 0 else 1, bn_affine))
                in_channels = out_channels
            sides = [_conv_out(s, stride) for s in sides]
        self.features = nn.Sequential(*stem, *stages)
        if pool == "avg":
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.out_dim = in_channels
        else:
            if min(sides) < 4:
                raise ConfigError(f"model.trunk.pool=avg4 needs a last feature map of at least 4×4, but "
                                  f"{height}×{width} inputs give {sides[0]}×{sides[1]}; use model.trunk.pool=avg")
            self.pool = nn.AvgPool2d(4)
            self.out_dim = in_channels * (sides[0] // 4) * (sides[1] // 4)
        self.flatten = nn.Flatten()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.flatten(self.pool(self.features(x)))

    def layers_in_order(self) -> list[tuple[str, nn.Module]]:
        """The trunk's layers in the order forward applies them (HAT finds its unit layers in these)."""
        return [(f"features.{n}", m) for n, m in self.features.named_children()]

    def start_task(self, task_id: int) -> None:
        self.bn_frozen = self.freeze_bn_after_first_task and task_id > 0
        if self.bn_frozen:  # Lightning warns at every task's fit about modules in eval mode: here they are meant to be
            warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode at the start of training")
        self.train(self.training)

    def train(self, mode: bool = True) -> "ResNet":
        super().train(mode)
        if self.bn_frozen:
            for m in self.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.eval()
        return self
