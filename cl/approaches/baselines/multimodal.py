"""GEM's `multimodal` baseline: one input layer per task (the trunk's first Linear or Conv2d), every other layer
shared and fine-tuned on each task in turn. Task 1 uses the network's own input layer; the other tasks get fresh
initializations of it."""
from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call

from cl.approaches.base import ContinualApproach
from cl.models.network import reinitialized_copy


class Multimodal(ContinualApproach):
    def setup_stream(self, stream):
        super().setup_stream(stream)
        name, first = next((n, m) for n, m in self.net.trunk.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d)))
        self.input_layer = f"trunk.{name}"
        self.extra_input_layers = nn.ModuleList(reinitialized_copy(first, self.net.linear_init)
                                                for _ in range(len(stream) - 1))

    def input_layer_for(self, task: int) -> nn.Module:
        return self.net.get_submodule(self.input_layer) if task == 0 else self.extra_input_layers[task - 1]

    def forward(self, x, task):
        if isinstance(task, torch.Tensor) or int(task) == 0:
            return self.net(x, task)
        layer = self.input_layer_for(int(task))
        swapped = {f"{self.input_layer}.{k}": v for k, v in layer.named_parameters()}
        return functional_call(self.net, swapped, (x, task), strict=False)

    def trainable_parameters(self):
        own = {id(p) for p in self.net.get_submodule(self.input_layer).parameters()}
        shared = [p for p in super().trainable_parameters() if id(p) not in own]
        return shared + list(self.input_layer_for(self.task_id).parameters())

    def cl_state_bytes(self) -> int:
        """The input layers kept for the earlier tasks (beyond task 1's, which is the network's own)."""
        return sum(p.numel() * p.element_size() for u in range(1, self.task_id)
                   for p in self.input_layer_for(u).parameters())
