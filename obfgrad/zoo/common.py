"""The pieces every zoo defense is built from: test data (real or, in a dry run, synthetic at the
dataset's resolution), the training data, and classifiers trained once and cached by recipe
(``obfgrad.cache.load_or_train``) or loaded from the user's weights."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Tuple

import torch
from torch import nn

from obfgrad.attacks import PGD
from obfgrad.data import load_dataset
from obfgrad.models.training import build_seeded, make_recipe, train_or_load
from obfgrad.zoo.base import BuildContext

#: This module's training glue (the adversary of adversarial training, the training data): part of
#: every checkpoint's code fingerprint (``obfgrad.cache.load_or_train``).
TRAINING_GLUE = (Path(__file__),)

# Image shapes at paper resolution, for the dry run's synthetic stand-in data.
_SHAPES = {"mnist": (1, 28, 28), "fashion-mnist": (1, 28, 28), "cifar10": (3, 32, 32),
           "imagenet": (3, 299, 299)}
_NUM_CLASSES = {"mnist": 10, "fashion-mnist": 10, "cifar10": 10, "imagenet": 1000}


def num_classes(dataset: str) -> int:
    return _NUM_CLASSES[dataset]


def synthetic_batch(dataset: str, n: int, seed: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Random images and labels at the dataset's resolution (dry runs prove code paths only)."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand((n, *_SHAPES[dataset]), generator=generator)
    labels = torch.randint(0, _NUM_CLASSES[dataset], (n,), generator=generator)
    return images, labels


def test_set(ctx: BuildContext, dataset: str, n: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` test examples (the robustml providers' order), on ``ctx.device``. ImageNet:
    the first ``n`` sorted validation images (centre crop, resized to 299) under ``ctx.data_dir``."""
    if ctx.dry_run:
        images, labels = synthetic_batch(dataset, n, ctx.seed)
    elif dataset == "imagenet":
        images, labels = _imagenet_val(ctx, n)
    else:
        images, labels = load_dataset(dataset, "test", data_dir=ctx.data_dir)
        images, labels = images[:n], labels[:n]
    return images.to(ctx.device), labels.to(ctx.device)


def _imagenet_val(ctx: BuildContext, n: int) -> Tuple[torch.Tensor, torch.Tensor]:
    from obfgrad.data.imagenet import load_imagenet_val

    if ctx.data_dir is None:
        raise FileNotFoundError("the paper profile needs --data-dir with ImageNet's val/ and val.txt")
    return load_imagenet_val(Path(ctx.data_dir), limit=n)


def training_data(ctx: BuildContext) -> Callable[[Mapping[str, Any]], Tuple[torch.Tensor, torch.Tensor]]:
    def load(recipe: Mapping[str, Any]) -> Tuple[torch.Tensor, torch.Tensor]:
        return load_dataset(recipe["dataset"], "train", data_dir=ctx.data_dir)

    return load


def pgd_adversary(settings: Mapping[str, Any]):
    """The adversary of PGD adversarial training (Madry et al.): random start, sign steps."""
    attack = PGD(distance=settings["distance"], eps=settings["eps"], steps=settings["steps"],
                 step_size=settings["step_size"], loss="ce", random_start=True, early_stop=False)

    def adversary(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return attack(model, x, y).x_adv

    return adversary


def classifier(ctx: BuildContext, recipe_fields: Mapping[str, Any], *, row: Optional[str] = None) -> nn.Module:
    """A trained classifier for ``recipe_fields`` (see ``obfgrad.models.training.make_recipe``):
    the user's weights for ``row`` if given with ``--weights``, the cached checkpoint, or a fresh
    training run. Dry runs use the untrained, seeded model."""
    recipe = make_recipe(**recipe_fields)
    if ctx.dry_run:
        return build_seeded(recipe).to(ctx.device).eval()
    if row is not None and row in ctx.weights:
        model = build_seeded(recipe)
        state = torch.load(ctx.weights[row], map_location="cpu", weights_only=True)
        model.load_state_dict(state.get("state_dict", state) if isinstance(state, dict) else state)
        return model.to(ctx.device).eval()
    started = time.perf_counter()
    with ctx.training_lock():  # torchrun: rank 0 trains and caches, the others load
        model = train_or_load(recipe, data_fn=training_data(ctx), adversary_fn=pgd_adversary,
                              progress=ctx.progress is not False, code_files=TRAINING_GLUE)
    elapsed = time.perf_counter() - started
    if elapsed > 5:
        ctx.log(f"  trained {recipe['arch']} ({'adversarial' if recipe['adversarial'] else 'natural'}) "
                f"in {elapsed:.0f} s; cached")
    return model.to(ctx.device).eval()
