"""Small models with known answers, shared by the attack and evaluation tests."""

from __future__ import annotations

import torch
from torch import nn


class LinearClassifier(nn.Module):
    """``logits = flatten(x) @ W.T + b``: every worst case of a linear model is analytic."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor):
        super().__init__()
        self.weight = nn.Parameter(weight.clone(), requires_grad=False)
        self.bias = nn.Parameter(bias.clone(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) @ self.weight.T + self.bias


def two_class_linear(shape=(1, 4, 4), seed: int = 0, bias: float = 0.0) -> LinearClassifier:
    """Two classes with ``z_0 - z_1 = x . w + bias`` for a random ``w``."""
    g = torch.Generator().manual_seed(seed)
    d = int(torch.tensor(shape).prod())
    w = torch.randn(d, generator=g, dtype=torch.float64).float()
    weight = torch.stack([w / 2, -w / 2])
    return LinearClassifier(weight, torch.tensor([bias / 2, -bias / 2]))


def margin_of(model: LinearClassifier, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``z_y - z_other`` for a two-class model."""
    logits = model(x)
    return logits.gather(1, y[:, None]).squeeze(1) - logits.gather(1, (1 - y)[:, None]).squeeze(1)


def away_from_walls(n: int, shape=(1, 4, 4), seed: int = 1) -> torch.Tensor:
    """Images in [0.3, 0.7]: the box never binds for budgets below 0.3 per pixel."""
    g = torch.Generator().manual_seed(seed)
    return 0.3 + 0.4 * torch.rand((n,) + tuple(shape), generator=g)


def small_cnn(num_classes: int = 10, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(16 * 7 * 7, num_classes),
    )


def trained_on_digits(make_model, *, seed: int, steps: int, lr: float):
    """``make_model()`` (built after ``torch.manual_seed(seed)``) trained by full-batch heavy-ball
    gradient descent (no torch.optim start-up cost) on the first 1,500 of scikit-learn's 8x8
    digits; returns ``(model, x_test, y_test)``, images (N, 1, 8, 8) in [0, 1], frozen model."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16
    y = torch.tensor(digits.target)
    torch.manual_seed(seed)
    model = make_model()
    params = list(model.parameters())
    velocity = [torch.zeros_like(p) for p in params]
    for _ in range(steps):
        loss = nn.functional.cross_entropy(model(x[:1500]), y[:1500])
        grads = torch.autograd.grad(loss, params)
        with torch.no_grad():
            for p, v, g in zip(params, velocity, grads):
                v.mul_(0.9).add_(g)
                p.sub_(lr * v)
    model.eval()
    for p in params:
        p.requires_grad_(False)
    return model, x[1500:], y[1500:]


def trained_digits_mlp(seed: int = 0, steps: int = 300):
    """An MLP trained (~0.5 s) on scikit-learn's 8x8 digits; test accuracy ~0.9."""
    return trained_on_digits(lambda: nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10)),
                             seed=seed, steps=steps, lr=0.1)
