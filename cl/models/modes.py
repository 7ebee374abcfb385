"""The one train/eval toggle: run a block with a module in train or eval mode and put its mode back afterwards
(`module.train(previous)`, as every caller did by hand), also when the block raises."""
from __future__ import annotations

import contextlib
from typing import Iterator

from torch import nn


@contextlib.contextmanager
def in_mode(module: nn.Module, training: bool | None) -> Iterator[nn.Module]:
    """The block runs with `module.train(training)` (None: the mode it is in, untouched); then `module.train(m)`,
    m being the module's own flag before the block."""
    if training is None:
        yield module
        return
    was_training = module.training
    module.train(training)
    try:
        yield module
    finally:
        module.train(was_training)


def evaluating(module: nn.Module) -> contextlib.AbstractContextManager[nn.Module]:
    """The block runs with the module in eval mode (dropout off, BatchNorm on its running statistics)."""
    return in_mode(module, False)
