"""Constructed defenses with known obfuscation, for the diagnose tests: a hard rounding step
(shattered), random noise (stochastic), a deep saturating chain (vanishing), and the plain
linear classifier they sit in front of (no obfuscation)."""

from __future__ import annotations

import torch
from attack_models import trained_on_digits
from torch import nn


def trained_digits_linear(steps: int = 200, seed: int = 0):
    """Softmax regression on scikit-learn's 8x8 digits (~0.2 s); returns ``(model, x, y)`` with
    held-out images (N, 1, 8, 8) in [0, 1]."""
    return trained_on_digits(lambda: nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), seed=seed, steps=steps, lr=0.5)


class HardRound(nn.Module):
    """Bit-depth reduction to ``levels`` grey levels with ``torch.round``: zero gradient almost
    everywhere (shattered)."""

    def __init__(self, levels: int = 4):
        super().__init__()
        self.levels = levels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.round(x * self.levels) / self.levels


class GaussianNoise(nn.Module):
    """``x + sigma * N(0, 1)``, fresh noise on every call (stochastic)."""

    def __init__(self, sigma: float):
        super().__init__()
        self.sigma = sigma

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.sigma * torch.randn_like(x)


class SaturatingChain(nn.Module):
    """``depth`` iterations of ``x <- sigmoid(gain * (x - 1/2))``: each pixel is driven to one of
    two stable points, and the derivative shrinks geometrically with depth (vanishing), but
    stays non-zero."""

    def __init__(self, depth: int = 20, gain: float = 6.0):
        super().__init__()
        self.depth, self.gain = depth, gain

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for _ in range(self.depth):
            x = torch.sigmoid(self.gain * (x - 0.5))
        return x
