"""torchvision's ImageNet networks without torchvision: loading their state dicts, and resizing batches to the size
the networks were trained at."""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from cl.errors import ConfigError


def resize_batch(x: torch.Tensor, size: int | None) -> torch.Tensor:
    """The batch resized to size × size on its device (bilinear; None or the same size: unchanged). Bilinear is linear:
    resizing the normalized batch equals normalizing the resized images."""
    if size is None or tuple(x.shape[-2:]) == (size, size):
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)


def _few(names: Sequence[str], n: int = 3) -> str:
    return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")


def load_torchvision_state(trunk: nn.Module, path: str, architecture: str, ignored_prefix: str, example: str) -> None:
    """Load a state dict in torchvision's key layout of `architecture` into `trunk`, without the keys starting with
    `ignored_prefix` (the ImageNet classifier the task heads replace); a missing file, or keys and shapes that do not
    match, stop with one line naming a few of the keys that differ (`example`: the usual file name, for the message)."""
    where = f"model.trunk.pretrained={path}"
    if not Path(path).is_file():
        raise ConfigError(f"{where} not found; give the path of torchvision's {architecture} state dict "
                          f"(e.g. {example})")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # any unreadable or non-tensor pickle
        raise ConfigError(f"{where} cannot be read as a state dict ({type(e).__name__}: {e})") from None
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(f"{where} is not a state dict (a mapping of parameter names to tensors)")
    state = {k: v for k, v in state.items() if not k.startswith(ignored_prefix)}
    expected = trunk.state_dict()
    missing = sorted(expected.keys() - state.keys())
    unexpected = sorted(state.keys() - expected.keys())
    wrong = [f"{k} {list(state[k].shape)} (model {list(expected[k].shape)})"
             for k in sorted(expected.keys() & state.keys()) if state[k].shape != expected[k].shape]
    problems = [f"{label} {_few(keys)}" for label, keys in
                (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)) if keys]
    if problems:
        raise ConfigError(f"{where} does not match torchvision's {architecture} layout: {'; '.join(problems)}")
    trunk.load_state_dict(state)
