"""Evaluation mode for the duration of an evaluation, with every module's flag restored after."""

from __future__ import annotations

import contextlib
from typing import Iterator

from torch import nn

__all__ = ["eval_mode"]


@contextlib.contextmanager
def eval_mode(*models) -> Iterator[None]:
    """Put each ``nn.Module`` among ``models`` (and every submodule) in eval mode; on exit, restore
    each submodule's own ``training`` flag (a model mixing train and eval submodules comes back
    mixed), also when the block raises. Anything that is not a module (a function) is left alone."""
    modules = [m for m in models if isinstance(m, nn.Module)]
    flags = [(sub, sub.training) for module in modules for sub in module.modules()]
    for module in modules:
        module.eval()
    try:
        yield
    finally:
        for sub, training in flags:
            sub.train(training)
