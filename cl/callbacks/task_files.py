"""The per-task files the MAS re-implementation (wannabeOG/MAS-PyTorch) leaves in its run folder, as a callback.

After task N (1-based) is evaluated, `models/` under the run dir holds:
- `Task_N/head.pth`: task N's head, as the re-implementation's `classification_head` (keys `fc.weight`, `fc.bias`);
- `Task_N/performance.txt`: the test accuracy on task N right after training it (a fraction, as the original);
- `Task_N/classes.txt`: its number of classes (the head's width: with a shared head, the shared head's);
- `shared_model.pth`: the shared trunk's state dict (for `alexnet_imagenet`, torchvision's key layout, so the file
  loads back with `model.trunk.pretrained`);
- `importances.pt`, for approaches with `importances()` (MAS, EWC, online EWC, SI): a plain dict parameter name →
  tensor, readable with `torch.load(..., weights_only=True)` (the re-implementation pickled live objects).
Every file is written atomically; the pipeline calls this on rank 0 after results.json.
"""
from __future__ import annotations

import io
from pathlib import Path

import torch
from pytorch_lightning import Callback

from cl.outputs.results import atomic_write

MODELS_DIR = "models"


def _tensor_file(tensors: dict[str, torch.Tensor]) -> bytes:
    buf = io.BytesIO()
    torch.save({name: t.detach().cpu().clone() for name, t in tensors.items()}, buf)  # clone: no shared storage
    return buf.getvalue()


class TaskFiles(Callback):
    def on_task_evaluated(self, approach, t: int, accuracies: list[float], run_dir: Path) -> None:
        models = Path(run_dir) / MODELS_DIR
        task_dir = models / f"Task_{t + 1}"
        head = approach.net.head_for(t)
        atomic_write(task_dir / "head.pth", _tensor_file({f"fc.{k}": v for k, v in head.state_dict().items()}))
        atomic_write(task_dir / "performance.txt", str(accuracies[t]))
        atomic_write(task_dir / "classes.txt", str(head.out_features))
        atomic_write(models / "shared_model.pth", _tensor_file(approach.net.trunk.state_dict()))
        importances = getattr(approach, "importances", None)
        if importances is not None:
            atomic_write(models / "importances.pt", _tensor_file(importances()))
