"""Training from a recipe, with checkpoints cached under the recipe's key.

A recipe is a plain JSON-able dict; :func:`make_recipe` fills in defaults::

    {"arch": "small_cnn", "arch_kwargs": {"width": 16}, "dataset": "fashion-mnist",
     "train_limit": 20000, "epochs": 2, "batch_size": 128, "optimizer": "adam", "lr": 1e-3,
     "momentum": 0.9, "weight_decay": 0.0, "lr_milestones": [], "lr_gamma": 0.1, "seed": 0,
     "adversarial": None, "version": 1}

``adversarial`` is ``None`` (natural training) or ``{"eps", "steps", "step_size", "distance"}``;
it is part of the key, so a PGD-trained net and its natural twin are different cache entries.
The adversary itself is code the caller passes (``adversary(model, x, y) -> x_adv``); as in
Madry et al.'s ``train.py``, every training batch is replaced by its adversarial version.
The adversary's code is not part of the recipe; the checkpoint's code fingerprint covers the
library's PGD and the caller's files named in ``code_files`` (``obfgrad.cache``).

Determinism: on CPU the same recipe gives bit-identical weights (same torch build and thread
count): model initialisation, shuffling, dropout and the adversary's random starts all draw
from generators seeded by ``recipe["seed"]``; the caller's global RNG state is restored after.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn
from torch.nn import functional as F

from obfgrad._checks import finite_loss
from obfgrad.cache import load_or_train, normalize_recipe
from obfgrad.models.loop import batches_per_epoch, descend, epoch_batches, seeded_training

RECIPE_VERSION = 1
Adversary = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]

_DEFAULTS: Dict[str, Any] = {
    "arch": "small_cnn",
    "arch_kwargs": {},
    "dataset": "fashion-mnist",
    "train_limit": None,
    "epochs": 1,
    "batch_size": 128,
    "optimizer": "adam",
    "lr": 1e-3,
    "momentum": 0.9,
    "weight_decay": 0.0,
    "lr_milestones": [],
    "lr_gamma": 0.1,
    "seed": 0,
    "adversarial": None,
    "version": RECIPE_VERSION,
}
_ADVERSARIAL_KEYS = {"eps", "steps", "step_size", "distance"}


def make_recipe(**fields: Any) -> Dict[str, Any]:
    """A complete recipe: the defaults above overridden by ``fields`` (validated).

    Example:
        >>> make_recipe(epochs=3, arch_kwargs={"width": 8})["epochs"]
        3
    """
    recipe = {**_DEFAULTS, **fields}
    return validate_recipe(recipe)


def validate_recipe(recipe: Mapping[str, Any]) -> Dict[str, Any]:
    """Check every field; return the recipe in normalised (JSON round-tripped) form."""
    if not isinstance(recipe, Mapping):
        raise TypeError(f"recipe: expected a dict, got {type(recipe).__name__}")
    missing = sorted(set(_DEFAULTS) - set(recipe))
    unknown = sorted(set(recipe) - set(_DEFAULTS))
    if missing or unknown:
        raise ValueError(f"recipe: missing fields {missing}, unknown fields {unknown} (use make_recipe)")
    if recipe["version"] != RECIPE_VERSION:
        raise ValueError(f"recipe['version']: expected {RECIPE_VERSION}, got {recipe['version']!r}")
    if recipe["optimizer"] not in ("sgd", "adam"):
        raise ValueError(f"recipe['optimizer']: expected 'sgd' or 'adam', got {recipe['optimizer']!r}")
    for name in ("epochs", "batch_size", "seed"):
        value = recipe[name]
        if isinstance(value, bool) or not isinstance(value, int) or value < (0 if name != "batch_size" else 1):
            raise ValueError(f"recipe[{name!r}]: expected a non-negative int, got {value!r}")
    limit = recipe["train_limit"]
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"recipe['train_limit']: expected None or a positive int, got {limit!r}")
    for name in ("lr", "momentum", "weight_decay", "lr_gamma"):
        if isinstance(recipe[name], bool) or not isinstance(recipe[name], (int, float)) or recipe[name] < 0:
            raise ValueError(f"recipe[{name!r}]: expected a non-negative number, got {recipe[name]!r}")
    if not isinstance(recipe["arch_kwargs"], Mapping):
        raise ValueError("recipe['arch_kwargs']: expected a dict")
    adversarial = recipe["adversarial"]
    if adversarial is not None and (not isinstance(adversarial, Mapping) or set(adversarial) != _ADVERSARIAL_KEYS):
        raise ValueError(f"recipe['adversarial']: expected None or a dict with keys {sorted(_ADVERSARIAL_KEYS)}, "
                         f"got {adversarial!r}")
    return normalize_recipe(recipe)


def _optimizer(model: nn.Module, recipe: Mapping[str, Any]) -> torch.optim.Optimizer:
    # Weight decay on conv/dense weights only, as Madry's ``_decay`` (variables named DW):
    # biases and batch-norm parameters are not decayed.
    decayed = [p for p in model.parameters() if p.requires_grad and p.dim() > 1]
    plain = [p for p in model.parameters() if p.requires_grad and p.dim() <= 1]
    groups = [{"params": decayed, "weight_decay": recipe["weight_decay"]}, {"params": plain, "weight_decay": 0.0}]
    if recipe["optimizer"] == "sgd":
        return torch.optim.SGD(groups, lr=recipe["lr"], momentum=recipe["momentum"])
    return torch.optim.Adam(groups, lr=recipe["lr"])


def _training_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    loss = F.cross_entropy(model(x), y)
    regularization = getattr(model, "regularization_loss", None)
    return loss + regularization() if callable(regularization) else loss


def _adversarial_batch(model: nn.Module, adversary: Adversary, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    # The attack runs with the model in eval mode (no dropout, batch-norm running statistics
    # untouched by the attack's forward passes), then training resumes on its output.
    model.eval()
    try:
        x_adv = adversary(model, x, y)
    finally:
        model.train()
    if not isinstance(x_adv, torch.Tensor) or x_adv.shape != x.shape:
        raise ValueError(f"adversary: must return a tensor shaped like its input {tuple(x.shape)}")
    return x_adv.detach()


def train(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    recipe: Mapping[str, Any],
    *,
    adversary: Optional[Adversary] = None,
    progress: bool = True,
) -> nn.Module:
    """Train ``model`` in place on ``images``/``labels`` as ``recipe`` says; return it in eval mode.

    Uses the first ``recipe["train_limit"]`` examples, reshuffled every epoch by a generator
    seeded with ``recipe["seed"]``; cross-entropy (plus ``model.regularization_loss()`` when
    the model defines it); SGD with momentum or Adam; the learning rate multiplied by
    ``lr_gamma`` at each epoch in ``lr_milestones``. With ``recipe["adversarial"]`` set, each
    batch is replaced by ``adversary(model, x, y)`` (required then).
    """
    recipe = validate_recipe(recipe)
    if recipe["adversarial"] is not None and adversary is None:
        raise ValueError("adversary: the recipe asks for adversarial training but no adversary was given")
    if recipe["adversarial"] is None and adversary is not None:
        raise ValueError("adversary: given, but recipe['adversarial'] is None (it must be recorded in the recipe)")
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"images, labels: {images.shape[0]} images but {labels.shape[0]} labels")
    if recipe["train_limit"] is not None:
        images, labels = images[: recipe["train_limit"]], labels[: recipe["train_limit"]]
    count, batch_size = images.shape[0], recipe["batch_size"]
    per_epoch = batches_per_epoch(count, batch_size)
    optimizer = _optimizer(model, recipe)
    schedule = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=recipe["lr_milestones"],
                                                     gamma=recipe["lr_gamma"])
    # the global generator (seed + 1): dropout and the adversary's random starts
    with seeded_training(recipe["seed"], recipe["epochs"] * per_epoch, f"train {recipe['arch']}", progress) \
            as (shuffle, bar):
        model.train()
        for epoch, number, index in epoch_batches(count, batch_size, recipe["epochs"], shuffle):
            x, y = images[index], labels[index]
            if adversary is not None:
                x = _adversarial_batch(model, adversary, x, y)
            loss = _training_loss(model, x, y)
            value = finite_loss(loss, f"train {recipe['arch']} (epoch {epoch}, batch {number})")
            descend(optimizer, loss)
            bar.update(1)
            bar.set_postfix(loss=f"{value:.3f}", refresh=False)
            if number == per_epoch - 1:
                schedule.step()
    return model.eval()


@torch.no_grad()
def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 512) -> float:
    """Fraction of ``images`` whose argmax logit equals the label (model in eval mode; the
    model's previous mode is restored)."""
    if images.shape[0] == 0:
        raise ValueError("images: expected at least one example")
    was_training = model.training
    model.eval()
    try:
        correct = 0
        for start in range(0, images.shape[0], batch_size):
            logits = model(images[start : start + batch_size])
            correct += int((logits.argmax(dim=1) == labels[start : start + batch_size]).sum())
    finally:
        model.train(was_training)
    return correct / images.shape[0]


def _default_build(recipe: Mapping[str, Any]) -> nn.Module:
    from obfgrad.models import build_model

    return build_model(recipe["arch"], **recipe["arch_kwargs"])


def _default_data(recipe: Mapping[str, Any]) -> Tuple[torch.Tensor, torch.Tensor]:
    from obfgrad.data import load_dataset

    return load_dataset(recipe["dataset"], "train")


def build_seeded(recipe: Mapping[str, Any],
                 build_fn: Optional[Callable[[Mapping[str, Any]], nn.Module]] = None) -> nn.Module:
    """``build_fn(recipe)`` with torch's RNG seeded by the recipe (same seed, same init)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe["seed"])
        return (build_fn or _default_build)(recipe)


def train_or_load(
    recipe: Mapping[str, Any],
    build_fn: Optional[Callable[[Mapping[str, Any]], nn.Module]] = None,
    data_fn: Optional[Callable[[Mapping[str, Any]], Tuple[torch.Tensor, torch.Tensor]]] = None,
    *,
    adversary_fn: Optional[Callable[[Mapping[str, Any]], Adversary]] = None,
    progress: bool = True,
    code_files: Sequence[Path] = (),
) -> nn.Module:
    """The model of ``recipe``: loaded from ``cache_dir()/models/<key>.pt`` when present and
    valid, else trained, saved atomically, and returned (in eval mode).

    Args:
        recipe: see :func:`make_recipe`.
        build_fn: ``build_fn(recipe) -> nn.Module``; default ``build_model(arch, **arch_kwargs)``.
        data_fn: ``data_fn(recipe) -> (images, labels)``; default the dataset's train split.
            Not called on a cache hit.
        adversary_fn: ``adversary_fn(recipe["adversarial"]) -> adversary(model, x, y)``;
            required when the recipe is adversarial.
        progress: show a progress bar (on a terminal).
        code_files: the caller's source files that shape training (e.g. where its adversary or
            ``build_fn`` is defined): part of the checkpoint's code fingerprint.

    A checkpoint that cannot be read, is damaged, was made by another recipe or other training
    code (``obfgrad.cache.TRAINING_ROOTS`` and ``code_files``), or does not fit the model is
    reported with a warning and replaced by a fresh training run.
    """
    recipe = validate_recipe(recipe)

    def fit(model: nn.Module) -> Dict[str, Any]:
        adversary = None
        if recipe["adversarial"] is not None:
            if adversary_fn is None:
                raise ValueError("adversary_fn: required to train a recipe with 'adversarial' set")
            adversary = adversary_fn(recipe["adversarial"])
        images, labels = (data_fn or _default_data)(recipe)
        train(model, images, labels, recipe, adversary=adversary, progress=progress)
        return {"torch": torch.__version__, "threads": torch.get_num_threads(),
                "examples": int(min(len(labels), recipe["train_limit"] or len(labels)))}

    return load_or_train(recipe, lambda: build_seeded(recipe, build_fn), fit, code_files=code_files)
