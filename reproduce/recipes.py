"""Classifier training recipes shared by rows (see ``obfgrad.models.training.make_recipe``).

Smoke profile: a small CNN on Fashion-MNIST, trained on CPU in about a minute (natural) or a
few minutes (PGD adversarial training). Paper profile: the paper's architectures and Madry et
al.'s CIFAR-10 schedule (80k steps of batch 128 = 205 epochs; lr 0.1 / 0.01 / 0.001 at 0 / 40k /
60k steps; momentum 0.9; weight decay 2e-4; MadryLab/cifar10_challenge config.json).
"""

from __future__ import annotations

import os
from typing import Any, Dict, Optional

# Measured on this project's 2-core machine (obfgrad/benchmarks/bench_training.py): natural,
# 60k images x 2 epochs: ~42 CPU-s, 89.7% test accuracy; PGD-7 adversarial, 20k x 3 epochs:
# ~142 CPU-s, 78% clean / 64% under PGD-20 at eps 0.1.
NATURAL_TRAIN_LIMIT = None  # all 60k
ADVERSARIAL_TRAIN_LIMIT = 20000
# OBFGRAD_SMOKE_TRAIN_LIMIT caps the smoke classifiers' training images (CI's quick end-to-end
# check uses it). It changes the recipe, so such models never mix with the full ones in the cache.
TRAIN_LIMIT_CAP_ENV = "OBFGRAD_SMOKE_TRAIN_LIMIT"


def train_limit(default: Optional[int]) -> Optional[int]:
    cap = os.environ.get(TRAIN_LIMIT_CAP_ENV)
    if not cap:
        return default
    if not cap.isdigit() or int(cap) < 1:
        raise ValueError(f"{TRAIN_LIMIT_CAP_ENV}: expected a positive integer, got {cap!r}")
    return int(cap) if default is None else min(default, int(cap))


def train_steps(default: int, images: int) -> int:
    """``default`` optimisation steps of a model trained on ``images`` images, scaled down by the
    same fraction as its images when ``OBFGRAD_SMOKE_TRAIN_LIMIT`` caps them (at least 1)."""
    limit = train_limit(images)
    return max(1, default * limit // images)


def smoke_classifier(adversarial: Optional[Dict[str, Any]] = None, *, epochs: Optional[int] = None,
                     in_channels: int = 1) -> Dict[str, Any]:
    """Small CNN (width 16, batch norm) on Fashion-MNIST, Adam 1e-3: all 60k images for 2 epochs
    (natural) or the first 20k for 3 epochs (PGD adversarial training)."""
    return {
        "arch": "small_cnn",
        "arch_kwargs": {"in_channels": in_channels, "width": 16, "image_size": 28},
        "dataset": "fashion-mnist",
        "train_limit": train_limit(ADVERSARIAL_TRAIN_LIMIT if adversarial else NATURAL_TRAIN_LIMIT),
        "epochs": epochs if epochs is not None else (3 if adversarial else 2),
        "batch_size": 128,
        "optimizer": "adam",
        "lr": 1e-3,
        "adversarial": adversarial,
        "seed": 0,
    }


def madry_cifar_wide_resnet(adversarial: Optional[Dict[str, Any]] = None, *, in_channels: int = 3) -> Dict[str, Any]:
    return {
        "arch": "wide_resnet",
        "arch_kwargs": {"in_channels": in_channels, "widths": [160, 320, 640], "units_per_stage": 5},
        "dataset": "cifar10",
        "train_limit": None,
        "epochs": 205,
        "batch_size": 128,
        "optimizer": "sgd",
        "lr": 0.1,
        "momentum": 0.9,
        "weight_decay": 2e-4,
        "lr_milestones": [102, 154],
        "lr_gamma": 0.1,
        "adversarial": adversarial,
        "seed": 0,
    }


def pgd_training(eps: float, steps: int, step_size: float) -> Dict[str, Any]:
    """Madry et al.'s adversary: l-inf PGD from a uniform random start, cross-entropy, sign steps."""
    return {"eps": eps, "steps": steps, "step_size": step_size, "distance": "linf"}
