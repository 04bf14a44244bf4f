"""PGD throughput (steps x examples per second) on a small CNN, 1x28x28 inputs, batch 256.

Compared with the loop a user writes by hand in plain torch (sign step, clamp to ball and box),
so the number shows the cost of obfgrad's bookkeeping (validation, per-example early stop,
records). Run: ``PYTHONPATH=. python -m pytest benchmarks/bench_attacks.py --benchmark-only``.
"""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from obfgrad.attacks import EOT, PGD

BATCH, STEPS, EPS, STEP_SIZE = 256, 10, 0.1, 0.01


def _small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 7 * 7, 10),
    ).eval()


@pytest.fixture(scope="module")
def problem():
    model = _small_cnn()
    x = torch.rand(BATCH, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, x, y


def _plain_torch_pgd(model, x, y):
    x_adv = x.clone()
    for _ in range(STEPS):
        x_adv.requires_grad_(True)
        loss = F.cross_entropy(model(x_adv), y)
        (grad,) = torch.autograd.grad(loss, x_adv)
        x_adv = x_adv.detach() + STEP_SIZE * grad.sign()
        x_adv = torch.min(torch.max(x_adv, x - EPS), x + EPS).clamp(0, 1)
    return x_adv


def _record(benchmark, steps_per_call):
    benchmark.extra_info["example_steps_per_call"] = steps_per_call
    if benchmark.stats:
        benchmark.extra_info["example_steps_per_s"] = steps_per_call / benchmark.stats.stats.median


def test_pgd_linf_obfgrad(benchmark, problem):
    model, x, y = problem
    attack = PGD("linf", eps=EPS, steps=STEPS, step_size=STEP_SIZE, early_stop=False)
    benchmark.pedantic(attack, args=(model, x, y), rounds=5, warmup_rounds=1)
    _record(benchmark, BATCH * STEPS)


def test_pgd_linf_plain_torch_loop(benchmark, problem):
    model, x, y = problem
    benchmark.pedantic(_plain_torch_pgd, args=(model, x, y), rounds=5, warmup_rounds=1)
    _record(benchmark, BATCH * STEPS)


def test_pgd_l2_adam_sign_obfgrad(benchmark, problem):
    model, x, y = problem
    attack = PGD("l2", eps=1.5, steps=STEPS, step_size=0.1, update="adam_sign", early_stop=False)
    benchmark.pedantic(attack, args=(model, x, y), rounds=5, warmup_rounds=1)
    _record(benchmark, BATCH * STEPS)


def test_pgd_linf_eot10_obfgrad(benchmark, problem):
    model, x, y = problem
    x, y = x[:32], y[:32]  # 32 examples x 10 draws = 320 rows per forward pass
    noisy = nn.Sequential(_GaussianNoise(0.05), model)
    attack = PGD("linf", eps=EPS, steps=STEPS, step_size=STEP_SIZE, early_stop=False)
    benchmark.pedantic(attack, args=(EOT(noisy, samples=10), x, y), rounds=3, warmup_rounds=1)
    _record(benchmark, 32 * STEPS)


class _GaussianNoise(nn.Module):
    def __init__(self, sigma):
        super().__init__()
        self.sigma = sigma

    def forward(self, x):
        return x + self.sigma * torch.randn_like(x)
