"""A stream's tensors on the training device, handed to approaches as `BatchSource`s."""
from __future__ import annotations

import torch

from data.stream import Stream
from data.tensor_loader import BatchSource

SPLITS = ("train", "valid", "test")


class DeviceStream:
    """Moves each tensor to `device` once (tasks that share a tensor, e.g. permuted MNIST, share the copy) and
    serves labels as the head expects them: local per task (multi-head) or global class ids (shared head)."""

    def __init__(self, stream: Stream, device: torch.device | str, shared_head: bool):
        self.stream = stream
        self.device = torch.device(device)
        self.shared_head = shared_head
        self._on_device: dict[int, torch.Tensor] = {}

    def _move(self, t: torch.Tensor) -> torch.Tensor:
        key = id(t)
        if key not in self._on_device:
            self._on_device[key] = t.to(self.device)
        return self._on_device[key]

    def source(self, t: int, split: str) -> BatchSource:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        task = self.stream.tasks[t]
        s = getattr(task, split)
        y = s.y
        if self.shared_head:
            y = torch.as_tensor(task.classes, dtype=torch.long)[y]
        return BatchSource(self._move(s.x), self._move(y) if self.shared_head else self._move(s.y), t, task.transform)
