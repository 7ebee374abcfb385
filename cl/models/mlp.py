"""Fully connected trunk (BLIP's MNIST net: one hidden layer of 1200 units)."""
from __future__ import annotations

import math
from typing import Sequence

from torch import nn

from cl.config.options import Int, ListOf, PROBABILITY, options


@options(hidden_sizes=ListOf(Int(ge=1), min_len=1), dropout=PROBABILITY | ListOf(PROBABILITY, length=5))
class MLP(nn.Sequential):
    def __init__(self, input_shape: Sequence[int], hidden_sizes: Sequence[int] = (1200,), dropout: float = 0.0):
        layers: list[nn.Module] = [nn.Flatten()]
        width = math.prod(input_shape)
        for h in hidden_sizes:
            layers += [nn.Linear(width, h), nn.ReLU()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = h
        super().__init__(*layers)
        self.out_dim = width

    def layers_in_order(self) -> list[tuple[str, nn.Module]]:
        """The trunk's layers in the order forward applies them (HAT finds its unit layers in these)."""
        return list(self.named_children())
