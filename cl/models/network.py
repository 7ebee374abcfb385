"""A shared trunk plus task heads: one head per task (task-incremental, the BLIP/HAT setting) or one shared head
(domain-/class-incremental, e.g. BCL's permuted MNIST).

Trunks are built from config as partials that take the stream's `input_shape` and expose `out_dim`; every
approach treats `net.trunk` as the shared part and `net.heads` as the per-task part.
"""
from __future__ import annotations

import copy
from typing import Callable, Sequence

import torch
from torch import nn

from cl.config.options import Choice, Text, options

HEAD_MODES = ("multi", "shared")
# pytorch: each layer's own reset_parameters; xavier_uniform: every Linear layer (heads included) drawn from
# U(±√(6 / (fan_in + fan_out))) with zero biases, as the GEM and BCL codes' MLP (model/common.py, Xavier)
LINEAR_INITS = ("pytorch", "xavier_uniform")


def initialize_linear(module: nn.Module, scheme: str) -> None:
    """Re-draw the Linear layers of `module` by `scheme` (LINEAR_INITS); 'pytorch' leaves them as built."""
    if scheme == "pytorch":
        return
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def reinitialized_copy(module: nn.Module, linear_init: str = "pytorch") -> nn.Module:
    """A copy of `module` (its layout) with every layer freshly initialized, as a new network of that shape starts."""
    fresh = copy.deepcopy(module)
    for m in fresh.modules():
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()
    initialize_linear(fresh, linear_init)
    return fresh


def layer_labels(module: nn.Module) -> dict[str, str]:
    """Human names of the Linear and Conv2d layers of `module`, by module path, in order: `fc1 784→1200`,
    `conv3 3×3 192→384`, `conv7 1×1/2 64→128` (kernel, /stride when > 1, channels)."""
    labels, counts = {}, {"fc": 0, "conv": 0}
    for name, m in module.named_modules():
        if isinstance(m, nn.Linear):
            counts["fc"] += 1
            labels[name] = f"fc{counts['fc']} {m.in_features}→{m.out_features}"
        elif isinstance(m, nn.Conv2d):
            counts["conv"] += 1
            stride = f"/{m.stride[0]}" if max(m.stride) > 1 else ""
            labels[name] = (f"conv{counts['conv']} {m.kernel_size[0]}×{m.kernel_size[1]}{stride} "
                            f"{m.in_channels}→{m.out_channels}")
    return labels


@options(name=Text(), head=Choice(HEAD_MODES), linear_init=Choice(("pytorch", "xavier_uniform")))
class TaskNetwork(nn.Module):
    def __init__(self, trunk: Callable[..., nn.Module], input_shape: Sequence[int], task_classes: Sequence[int],
                 head: str = "multi", n_shared_classes: int | None = None, name: str = "model",
                 linear_init: str = "pytorch"):
        super().__init__()
        self.name = name
        self.linear_init = linear_init
        self.input_shape = tuple(input_shape)
        self.head_mode = head
        self.trunk = trunk(input_shape=self.input_shape)
        out_dim = self.trunk.out_dim
        if head == "multi":
            self.heads = nn.ModuleList(nn.Linear(out_dim, n) for n in task_classes)
        else:
            n = n_shared_classes if n_shared_classes is not None else max(task_classes)
            self.heads = nn.ModuleList([nn.Linear(out_dim, n)])
        initialize_linear(self, linear_init)

    def start_task(self, task: int) -> None:
        """Let the trunk change behaviour per task (e.g. ResNet-18 with BatchNorm statistics frozen after task 1)."""
        hook = getattr(self.trunk, "start_task", None)
        if hook is not None:
            hook(task)

    def trunk_parameters(self, trunk: nn.Module | None = None) -> list[nn.Parameter]:
        """The parameters of `trunk` (default: the shared trunk) that may train: all of them, less those the trunk
        keeps frozen through its optional `frozen_parameters()` (e.g. the pretrained AlexNet's layers outside
        `trainable_layers`). Approaches train and regularize from this list, never from `trunk.parameters()`."""
        trunk = trunk or self.trunk
        frozen = {id(p) for p in getattr(trunk, "frozen_parameters", tuple)()}
        return [p for p in trunk.parameters() if id(p) not in frozen]

    @property
    def multi_head(self) -> bool:
        return self.head_mode == "multi"

    def head_for(self, task: int) -> nn.Linear:
        return self.heads[task] if self.multi_head else self.heads[0]

    def forward(self, x: torch.Tensor, task: int | torch.Tensor, trunk: nn.Module | None = None) -> torch.Tensor:
        """Logits of the head(s) of `task` (an int, or one task id per sample). `trunk` swaps in another trunk
        with the same shapes (used by approaches that keep several, e.g. `independent`)."""
        h = (trunk or self.trunk)(x)
        if isinstance(task, int) or not self.multi_head:
            return self.head_for(int(task) if isinstance(task, int) else 0)(h)
        # a batch mixing tasks: each sample goes through its own task's head; heads may differ in width,
        # so logits are padded with -inf to the widest head (cross-entropy and argmax ignore the padding)
        width = max(self.heads[t].out_features for t in task.unique().tolist())
        out = h.new_full((len(h), width), float("-inf"))
        for t in task.unique().tolist():
            m = task == t
            logits = self.heads[t](h[m])
            out[m, : logits.shape[1]] = logits
        return out
