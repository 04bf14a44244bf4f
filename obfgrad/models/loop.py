"""The seeded frame every training loop shares (classifiers, cascade, PixelCNN, WGAN-GP).

:func:`seeded_training` gives the loop a data generator seeded with the recipe's ``seed`` (the
shuffles, samples and any other draw of the data), seeds torch's global generator with
``seed + 1`` for what draws from it (dropout, an adversary's random starts, a GAN's noise) inside
``fork_rng`` (the caller's stream is untouched), and shows a tqdm bar. :func:`epoch_batches`
walks the epochs, a fresh permutation of the examples per epoch. The same recipe therefore gives
the same weights on every run.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Tuple

import torch
from tqdm.auto import tqdm

__all__ = ["seeded_training", "epoch_batches", "batches_per_epoch", "descend"]


def batches_per_epoch(count: int, batch_size: int) -> int:
    """Batches of at most ``batch_size`` that cover ``count`` examples (the last may be short)."""
    return (count + batch_size - 1) // batch_size


@contextlib.contextmanager
def seeded_training(seed: int, total: int, desc: str, progress: bool) -> Iterator[Tuple[torch.Generator, tqdm]]:
    """``(data generator seeded with seed, tqdm bar of total steps)``; inside, torch's global
    generator is seeded with ``seed + 1`` and restored on exit. The bar is quiet unless
    ``progress`` and on a terminal."""
    data_rng = torch.Generator().manual_seed(seed)
    bar = tqdm(total=total, desc=desc, unit="step", disable=None if progress else True, leave=False)
    with torch.random.fork_rng(devices=[]), bar:
        torch.manual_seed(seed + 1)
        yield data_rng, bar


def epoch_batches(count: int, batch_size: int, epochs: int, data_rng: torch.Generator
                  ) -> Iterator[Tuple[int, int, torch.Tensor]]:
    """``(epoch, batch number within the epoch, example indices)`` of every batch, each epoch a
    fresh permutation of ``range(count)`` drawn from ``data_rng`` when the epoch starts."""
    for epoch in range(epochs):
        order = torch.randperm(count, generator=data_rng)
        for start in range(0, count, batch_size):
            yield epoch, start // batch_size, order[start:start + batch_size]


def descend(optimizer: torch.optim.Optimizer, loss: torch.Tensor) -> None:
    """One optimiser step on ``loss``: gradients cleared (set to None), backpropagated, applied."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
