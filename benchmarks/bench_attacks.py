"""PGD throughput (steps x examples per second) on a small CNN, 1x28x28 inputs, batch 256.

Compared with the loop a user writes by hand in plain torch (sign step, clamp to ball and box),
so the number shows the cost of obfgrad's bookkeeping (validation, per-example early stop,
records). The machine is shared and noisy: read the interleaved comparison's ratios
(``extra_info``), never absolute times. Run:
``OBFGRAD_BENCH_THREADS=1 OMP_NUM_THREADS=1 PYTHONPATH=. python -m pytest benchmarks/bench_attacks.py --benchmark-only``
(threads: benchmarks/conftest.py, 2 unless OBFGRAD_BENCH_THREADS says otherwise).
"""

import statistics
import time

import pytest
import torch
from bench_training import linf_pgd  # benchmarks/ is on sys.path under pytest
from torch import nn

from obfgrad.attacks import EOT, PGD

BATCH, STEPS, EPS, STEP_SIZE = 256, 10, 0.1, 0.01
ROUNDS = 15  # interleaved rounds of the overhead comparison


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
    return linf_pgd(model, x, y, EPS, STEPS, STEP_SIZE, random_start=False)  # the loop a user would write


def _record(benchmark, steps_per_call):
    benchmark.extra_info["example_steps_per_call"] = steps_per_call
    if benchmark.stats:
        benchmark.extra_info["example_steps_per_s"] = steps_per_call / benchmark.stats.stats.median


def test_pgd_linf_obfgrad(benchmark, problem):
    model, x, y = problem
    attack = PGD("linf", EPS, steps=STEPS, step_size=STEP_SIZE, early_stop=False)
    benchmark.pedantic(attack, args=(model, x, y), rounds=5, warmup_rounds=1)
    _record(benchmark, BATCH * STEPS)


def test_pgd_linf_plain_torch_loop(benchmark, problem):
    model, x, y = problem
    benchmark.pedantic(_plain_torch_pgd, args=(model, x, y), rounds=5, warmup_rounds=1)
    _record(benchmark, BATCH * STEPS)


def _plain_torch_pgd_with_verdict(model, x, y):
    """The plain loop plus the one forward pass a user needs to know which examples it broke
    (obfgrad's records include it: the floor of obfgrad's cost)."""
    x_adv = _plain_torch_pgd(model, x, y)
    with torch.no_grad():
        return x_adv, model(x_adv).argmax(1) != y


def _interleaved_times(functions, rounds):
    """Wall times of each function over ``rounds`` rounds, the functions taking turns within each
    round (so a noisy neighbour slows them alike)."""
    times = [[] for _ in functions]
    for _ in range(rounds):
        for fn, record in zip(functions, times):
            start = time.perf_counter()
            fn()
            record.append(time.perf_counter() - start)
    return times


def test_pgd_linf_overhead_vs_plain_torch_interleaved(benchmark, problem):
    """obfgrad's PGD, the plain loop and the plain loop plus a final verdict, interleaved round by
    round (torch threads fixed by benchmarks/conftest.py). extra_info holds the medians and two ratios:
    ``overhead_ratio`` (obfgrad / plain loop; goal < 1.10) and ``overhead_ratio_vs_plain_with_verdict``
    (obfgrad / plain loop + the forward pass that says which examples were broken)."""
    model, x, y = problem
    attack = PGD("linf", EPS, steps=STEPS, step_size=STEP_SIZE, early_stop=False)
    functions = (lambda: attack(model, x, y), lambda: _plain_torch_pgd(model, x, y),
                 lambda: _plain_torch_pgd_with_verdict(model, x, y))
    for fn in functions:  # warm-up
        fn()
    times = benchmark.pedantic(_interleaved_times, args=(functions, ROUNDS), rounds=1, iterations=1)
    obfgrad_s, plain_s, verdict_s = (statistics.median(t) for t in times)
    benchmark.extra_info.update({
        "interleaved_rounds": ROUNDS, "torch_threads": torch.get_num_threads(),
        "obfgrad_median_s": obfgrad_s, "plain_torch_median_s": plain_s, "plain_with_verdict_median_s": verdict_s,
        "overhead_ratio": obfgrad_s / plain_s, "overhead_ratio_vs_plain_with_verdict": obfgrad_s / verdict_s,
        "median_of_round_ratios": statistics.median(a / b for a, b in zip(times[0], times[1])),
    })


def test_pgd_l2_adam_sign_obfgrad(benchmark, problem):
    model, x, y = problem
    attack = PGD("l2", 1.5, steps=STEPS, step_size=0.1, update="adam_sign", early_stop=False)
    benchmark.pedantic(attack, args=(model, x, y), rounds=5, warmup_rounds=1)
    _record(benchmark, BATCH * STEPS)


def test_pgd_linf_eot10_obfgrad(benchmark, problem):
    model, x, y = problem
    x, y = x[:32], y[:32]  # 32 examples x 10 draws = 320 rows per forward pass
    noisy = nn.Sequential(_GaussianNoise(0.05), model)
    attack = PGD("linf", EPS, steps=STEPS, step_size=STEP_SIZE, early_stop=False)
    benchmark.pedantic(attack, args=(EOT(noisy, samples=10), x, y), rounds=3, warmup_rounds=1)
    _record(benchmark, 32 * STEPS)


class _GaussianNoise(nn.Module):
    def __init__(self, sigma):
        super().__init__()
        self.sigma = sigma

    def forward(self, x):
        return x + self.sigma * torch.randn_like(x)
