"""torchvision's ImageNet ResNet-18 as a trunk (BCL fine-tunes it on CUB), without torchvision.

Same layers, shapes and state-dict keys as `torchvision.models.resnet18`: a 7×7 stride-2 stem (`conv1`, `bn1`) and a
3×3 stride-2 max-pool, `layer1`…`layer4` of two BasicBlocks each (widths 64, 128, 256, 512; `downsample` where the
shape changes), global average pooling. torchvision's `fc` (the 1000 ImageNet classes) is what the task heads
replace, so a torchvision state dict loads here with `fc.*` ignored (`pretrained`). Images are resized to
`input_size` per batch on the device (null = as the stream gives them)."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from cl.config.options import Int, Text, options
from cl.errors import ConfigError
from cl.models.imagenet import load_torchvision_state, resize_batch

WIDTHS = (64, 128, 256, 512)


class _Block(nn.Module):
    """torchvision's BasicBlock, under its attribute names."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.downsample = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                                            nn.BatchNorm2d(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


@options(input_size=Int(ge=63, optional=True), pretrained=Text(optional=True))
class ResNet18ImageNet(nn.Module):
    def __init__(self, input_shape: Sequence[int], input_size: int | None = 224, pretrained: str | None = None):
        super().__init__()
        if len(input_shape) != 3:
            raise ConfigError(f"model resnet18_imagenet needs image inputs [C, H, W]; the stream gives "
                              f"{tuple(input_shape)}")
        self.input_size = input_size
        self.conv1 = nn.Conv2d(input_shape[0], 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        widths = (64, *WIDTHS)
        for i in range(4):
            stride = 1 if i == 0 else 2
            setattr(self, f"layer{i + 1}", nn.Sequential(_Block(widths[i], widths[i + 1], stride),
                                                         _Block(widths[i + 1], widths[i + 1], 1)))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.out_dim = WIDTHS[-1]
        if pretrained is not None:
            load_torchvision_state(self, pretrained, "ResNet-18", "fc.", "resnet18-f37072fd.pth")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(resize_batch(x, self.input_size)))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)
