"""Small, fast CNNs for the smoke profile (1×28×28 Fashion-MNIST/MNIST, 3×32×32 CIFAR-sized).

Two conv blocks (3×3 conv, batch norm, ReLU, 2×2 max-pool; ``width`` then ``2·width``
channels) and a two-layer head. At ``width=16``, 2 epochs of Adam (lr 1e-3, batch 128) on the
60,000 Fashion-MNIST training images reach 89.5–89.7% test accuracy for about 42 CPU-seconds of
one core (measured in ``benchmarks/bench_training.py``). It stands in for the paper's
architectures where the smoke profile needs a model trained on the fly.
"""

from __future__ import annotations

import torch
from torch import nn


class SmallCNN(nn.Module):
    """Logits for float32 N×C×H×W inputs in [0, 1] (H and W divisible by 4).

    Args:
        in_channels: 1 (Fashion-MNIST), 3 (CIFAR), or more (e.g. 48 for a thermometer code).
        width: channels of the first conv; the second has twice as many.
        hidden: units of the hidden dense layer.
        image_size: input side (28 or 32).
        num_classes: logits.
        batch_norm: batch norm after each conv (it speeds up training; in eval mode it is a
            fixed affine map, so attacks see a plain feed-forward net).

    Example:
        >>> SmallCNN(in_channels=3, image_size=32)(torch.rand(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """

    def __init__(self, in_channels: int = 1, width: int = 16, hidden: int = 128, image_size: int = 28,
                 num_classes: int = 10, batch_norm: bool = True):
        super().__init__()
        if image_size % 4:
            raise ValueError(f"image_size: expected a multiple of 4, got {image_size}")

        def block(cin: int, cout: int) -> list:
            norm = [nn.BatchNorm2d(cout)] if batch_norm else []
            return [nn.Conv2d(cin, cout, 3, padding=1), *norm, nn.ReLU(), nn.MaxPool2d(2)]

        side = image_size // 4
        self.features = nn.Sequential(*block(in_channels, width), *block(width, 2 * width))
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(2 * width * side * side, hidden), nn.ReLU(),
                                  nn.Linear(hidden, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))
