"""torchvision's ImageNet AlexNet as a trunk (the MAS re-implementation fine-tunes it), without torchvision.

Same layers, shapes and state-dict keys as `torchvision.models.alexnet`: convolutions `features.0/3/6/8/10`, a 6×6
adaptive average pool, then `classifier.1` and `classifier.4` (Linear 4096, each after a dropout). torchvision's
last layer `classifier.6` (the 1000 ImageNet classes) is what the project's per-task heads replace, so a torchvision
state dict loads here with `classifier.6.*` ignored (`pretrained`).

Images are resized to `input_size` on the device, per batch (Tiny-ImageNet's 64×64 → 224×224 as the
re-implementation), instead of decoding a 224×224 cache. `trainable_layers` names the layers that train; the others
keep their (pretrained) weights, and every approach leaves them out of what it trains and regularizes
(`frozen_parameters`, read by `TaskNetwork.trunk_parameters`).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from cl.config.options import Int, ListOf, PROBABILITY, Text, options
from cl.errors import ConfigError
from cl.models.imagenet import load_torchvision_state, resize_batch

IGNORED_PREFIX = "classifier.6."  # torchvision's ImageNet classifier: replaced by the task heads
POOLED_SIDE = 6


def _conv_side(side: int) -> int:
    """Side of the last feature map for an input side (0 when the input is too small)."""
    for kernel, stride, pad, pool in ((11, 4, 2, True), (5, 1, 2, True), (3, 1, 1, False), (3, 1, 1, False),
                                      (3, 1, 1, True)):
        side = (side + 2 * pad - kernel) // stride + 1
        if pool:
            side = (side - 3) // 2 + 1
        if side < 1:
            return 0
    return side


@options(input_size=Int(ge=63, optional=True), fc_sizes=ListOf(Int(ge=1), length=2), dropout=PROBABILITY |
         ListOf(PROBABILITY, length=5), pretrained=Text(optional=True), trainable_layers=ListOf(Text(), min_len=1,
         optional=True))
class AlexNetImageNet(nn.Module):
    """`fc_sizes` and `dropout` default to torchvision's (4096, 4096; 0.5); a pretrained file must match them."""

    def __init__(self, input_shape: Sequence[int], input_size: int | None = 224,
                 fc_sizes: Sequence[int] = (4096, 4096), dropout: float = 0.5, pretrained: str | None = None,
                 trainable_layers: Sequence[str] | None = None):
        super().__init__()
        if len(input_shape) != 3:
            raise ConfigError(f"model alexnet_imagenet needs image inputs [C, H, W]; the stream gives "
                              f"{tuple(input_shape)}")
        channels, height, width = input_shape
        side = min(height, width) if input_size is None else input_size
        if _conv_side(side) < 1:
            smallest = next(s for s in range(1, 1000) if _conv_side(s) >= 1)
            raise ConfigError(f"model alexnet_imagenet needs inputs of at least {smallest}×{smallest} pixels; it gets "
                              f"{side}×{side} (set model.trunk.input_size, e.g. 224 as ImageNet)")
        self.input_size = input_size
        self.features = nn.Sequential(
            nn.Conv2d(channels, 64, 11, stride=4, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
            nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
            nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(),
            nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(),
            nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, 2))
        self.avgpool = nn.AdaptiveAvgPool2d(POOLED_SIDE)
        fc1, fc2 = fc_sizes
        self.classifier = nn.Sequential(
            nn.Dropout(dropout), nn.Linear(256 * POOLED_SIDE ** 2, fc1), nn.ReLU(),
            nn.Dropout(dropout), nn.Linear(fc1, fc2), nn.ReLU())
        self.out_dim = fc2
        self._frozen = self._frozen_outside(trainable_layers)
        if pretrained is not None:
            load_torchvision_state(self, pretrained, "AlexNet", IGNORED_PREFIX, "alexnet-owt-7be5be79.pth")

    def _frozen_outside(self, trainable_layers: Sequence[str] | None) -> list[nn.Parameter]:
        if trainable_layers is None:
            return []
        layers = {name: m for name, m in self.named_modules() if name and next(m.parameters(), None) is not None}
        unknown = [name for name in trainable_layers if name not in layers]
        if unknown:
            own = [name for name, m in layers.items() if next(m.parameters(recurse=False), None) is not None]
            raise ConfigError(f"model.trunk.trainable_layers names {unknown}, not a layer of alexnet_imagenet; its "
                              f"layers are {', '.join(own)} (or features, classifier)")
        trained = {id(p) for name in trainable_layers for p in layers[name].parameters()}
        return [p for p in self.parameters() if id(p) not in trained]

    def frozen_parameters(self) -> list[nn.Parameter]:
        """The parameters outside `trainable_layers`: kept as loaded, neither trained nor regularized."""
        return self._frozen

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = resize_batch(x, self.input_size)
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))

    def layers_in_order(self) -> list[tuple[str, nn.Module]]:
        """The trunk's layers in the order forward applies them (HAT finds its unit layers in these)."""
        return [*((f"features.{n}", m) for n, m in self.features.named_children()), ("avgpool", self.avgpool),
                ("flatten", nn.Flatten()), *((f"classifier.{n}", m) for n, m in self.classifier.named_children())]
