"""Smoke-profile training budget on the real Fashion-MNIST (2 threads): how long the proposed
smoke recipes take and what they reach, natural and PGD-adversarially trained.

    python benchmarks/bench_training.py                # prints one JSON line per recipe
    nox -s bench -- -k training                        # the same as pytest-benchmark tests

The ℓ∞ PGD here is a deliberately tiny local one (random start, signed-gradient steps,
projection), so this file does not depend on ``obfgrad.attacks``. Accuracy under attack uses
the same attack as training with 20 steps instead of 7 on the first ``EVAL_LIMIT`` test images.
Data comes from wherever ``load_dataset`` finds it (``/usr/share/datasets/fashion-mnist``
when Debian's dataset-fashion-mnist is installed); without it the tests skip.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import pytest
import torch
from torch.nn import functional as F

from obfgrad.data import DatasetNotFoundError, load_dataset
from obfgrad.models.training import accuracy, build_seeded, make_recipe, train

EVAL_LIMIT = 2000
PGD_TRAIN = {"eps": 0.1, "steps": 7, "step_size": 0.025, "distance": "linf"}

# The proposed smoke defaults. Measured 2026-11-25 on the shared 2-core machine (load 9-18, so
# CPU-seconds of one thread are the reliable figure; wall time on an idle machine with 2
# threads is roughly CPU-seconds / 1.7):
#   natural:      42 CPU-s (1 thread), clean 89.7%, PGD-20 (eps 0.1) 3.4%
#   adversarial:  72 CPU-s (1 thread), clean 76.3%, PGD-20 (eps 0.1) 59.3%
#   (with train_limit=20000: 142 CPU-s, clean 78.3%, PGD-20 63.9%)
SMOKE_NATURAL = make_recipe(arch="small_cnn", arch_kwargs={"width": 16, "batch_norm": True}, dataset="fashion-mnist",
                            train_limit=None, epochs=2, batch_size=128, optimizer="adam", lr=1e-3, seed=0)
SMOKE_ADVERSARIAL = make_recipe(arch="small_cnn", arch_kwargs={"width": 16, "batch_norm": True},
                                dataset="fashion-mnist", train_limit=10000, epochs=3, batch_size=128, optimizer="adam",
                                lr=1e-3, seed=0, adversarial=PGD_TRAIN)


def linf_pgd(model, x, y, eps, steps, step_size, generator=None, random_start=True):
    """Untargeted ℓ∞ PGD on the cross-entropy: uniform random start in the ε-ball (or x itself),
    then ``steps`` signed-gradient ascent steps, each projected to the ball and to [0, 1]."""
    if random_start:
        x_adv = (x + (torch.rand(x.shape, generator=generator) * 2 - 1) * eps).clamp(0, 1)
    else:
        x_adv = x.clone()
    for _ in range(steps):
        x_adv.requires_grad_(True)
        loss = F.cross_entropy(model(x_adv), y)
        (grad,) = torch.autograd.grad(loss, x_adv)
        x_adv = x_adv.detach() + step_size * grad.sign()
        x_adv = torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0, 1)
    return x_adv.detach()


def make_adversary(spec):
    def adversary(model, x, y):
        return linf_pgd(model, x, y, spec["eps"], spec["steps"], spec["step_size"])

    return adversary


def robust_accuracy(model, images, labels, eps, steps=20, step_size=None, batch_size=500):
    generator = torch.Generator().manual_seed(0)
    step_size = step_size or 2.5 * eps / steps
    model.eval()
    correct = 0
    for start in range(0, len(labels), batch_size):
        x, y = images[start : start + batch_size], labels[start : start + batch_size]
        x_adv = linf_pgd(model, x, y, eps, steps, step_size, generator)
        with torch.no_grad():
            correct += int((model(x_adv).argmax(1) == y).sum())
    return correct / len(labels)


def measure(recipe, train_data, test_data, threads=2):
    torch.set_num_threads(threads)
    adversary = make_adversary(recipe["adversarial"]) if recipe["adversarial"] else None
    model = build_seeded(recipe)
    started, cpu_started = time.perf_counter(), time.process_time()
    train(model, *train_data, recipe, adversary=adversary, progress=False)
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    test_images, test_labels = test_data
    eps = PGD_TRAIN["eps"]
    return {
        "arch_kwargs": recipe["arch_kwargs"], "train_limit": recipe["train_limit"], "epochs": recipe["epochs"],
        "adversarial": recipe["adversarial"], "threads": threads, "train_seconds": round(seconds, 1),
        "train_cpu_seconds": round(cpu_seconds, 1),
        "clean_test_accuracy": accuracy(model, test_images, test_labels),
        f"pgd20_eps{eps}_accuracy_first{EVAL_LIMIT}": robust_accuracy(model, test_images[:EVAL_LIMIT],
                                                                      test_labels[:EVAL_LIMIT], eps),
        "load_average_1min": round(os.getloadavg()[0], 2),
    }


def _fashion_mnist():
    try:
        return tuple(load_dataset("fashion-mnist", split, download=False) for split in ("train", "test"))
    except DatasetNotFoundError:
        pytest.skip("Fashion-MNIST not found locally (apt-get install dataset-fashion-mnist, or OBFGRAD_DATA)")


@pytest.mark.parametrize("recipe", [SMOKE_NATURAL, SMOKE_ADVERSARIAL], ids=["natural", "pgd_adversarial"])
def test_smoke_recipe_training(benchmark, recipe):
    train_data, test_data = _fashion_mnist()
    result = benchmark.pedantic(measure, args=(recipe, train_data, test_data), rounds=1, iterations=1)
    benchmark.extra_info.update(result)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--width", type=int, default=None, help="override the small CNN width of both recipes")
    parser.add_argument("--only", choices=["natural", "adversarial"], default=None)
    parser.add_argument("--adv-train-limit", type=int, default=None)
    parser.add_argument("--adv-epochs", type=int, default=None)
    parser.add_argument("--epochs", type=int, default=None)
    args = parser.parse_args()
    train_data = load_dataset("fashion-mnist", "train", download=False)
    test_data = load_dataset("fashion-mnist", "test", download=False)
    recipes = {"natural": dict(SMOKE_NATURAL), "adversarial": dict(SMOKE_ADVERSARIAL)}
    for name, recipe in recipes.items():
        if args.width:
            recipe["arch_kwargs"] = {**recipe["arch_kwargs"], "width": args.width}
        if name == "natural" and args.epochs:
            recipe["epochs"] = args.epochs
        if name == "adversarial" and args.adv_train_limit:
            recipe["train_limit"] = args.adv_train_limit
        if name == "adversarial" and args.adv_epochs:
            recipe["epochs"] = args.adv_epochs
        if args.only in (None, name):
            print(json.dumps(measure(make_recipe(**recipe), train_data, test_data, args.threads)), flush=True)


if __name__ == "__main__":
    main()
