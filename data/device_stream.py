"""A stream's tensors on the training device, handed to approaches as `BatchSource`s."""
from __future__ import annotations

import weakref

import torch

from data.stream import InputTransform, Stream
from data.tensor_loader import BatchSource

SPLITS = ("train", "valid", "test")


class DeviceStream:
    """Moves each tensor to `device` once, normalized to float there when it fits in `max_float_bytes` (then a
    batch costs one gather; tasks sharing images, e.g. permuted MNIST, share the copy and only permute per
    batch), and serves labels as the head expects them: local per task (multi-head) or global class ids (shared
    head).

    The cache holds its tensors weakly: a copy lives exactly as long as some `BatchSource` uses it, so a run
    keeps the float copy of the task in training (and of whatever an approach still holds, e.g. replay data),
    not of every task seen so far."""

    def __init__(self, stream: Stream, device: torch.device | str, shared_head: bool, max_float_bytes: int = 4 << 30):
        self.stream = stream
        self.device = torch.device(device)
        self.shared_head = shared_head
        self.max_float_bytes = max_float_bytes
        self._on_device: weakref.WeakValueDictionary[tuple, torch.Tensor] = weakref.WeakValueDictionary()

    def _cached(self, key: tuple, make) -> torch.Tensor:
        # keys start with id() of a tensor the stream holds for its whole life, so ids are never reused
        tensor = self._on_device.get(key)
        if tensor is None:
            tensor = make()
            self._on_device[key] = tensor
        return tensor

    def _inputs(self, x, transform: InputTransform):
        """The inputs as stored on the device, and the transform still to apply per batch."""
        if not isinstance(x, torch.Tensor):  # images streamed from a disk cache: tag where batches are delivered
            return x.to(self.device), transform
        if x.numel() * 4 > self.max_float_bytes:
            return self._cached((id(x),), lambda: x.to(self.device)), transform
        key = (id(x), "normalized", tuple(transform.mean), tuple(transform.std))
        return self._cached(key, lambda: transform.normalize(x.to(self.device))), transform.permute

    def source(self, t: int, split: str) -> BatchSource:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        task = self.stream.tasks[t]
        s = getattr(task, split)
        if self.shared_head:
            y = self._cached((id(s.y), "global", tuple(task.classes)),  # tasks sharing labels and classes share it
                             lambda: torch.as_tensor(task.classes, dtype=torch.long)[s.y].to(self.device))
        else:
            y = self._cached((id(s.y),), lambda: s.y.to(self.device))
        x, transform = self._inputs(s.x, task.transform)
        return BatchSource(x, y, t, transform)
