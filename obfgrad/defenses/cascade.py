"""Cascade adversarial training with a unified embedding (Na, Ko & Mukhopadhyay, ICLR 2018).

A network is trained from scratch on batches that keep every clean image and add, for half of
them, an adversarial version: one-step adversarial images crafted on the network being trained
("step_ll": a least-likely-class step, with a random per-image epsilon as in Kurakin et al.'s
adversarial training) and iteratively crafted adversarial images from an *already defended*
network (the cascade; computed once, since that network is fixed). A "unified embedding" loss
pulls the adversarial image's embedding (the input of the last linear layer) towards the clean
one's (the clean embedding is the pivot and gets no gradient from this term):

.. math::  L = \\frac{\\sum_{clean} CE + \\lambda \\sum_{adv} CE}{m - k + \\lambda k}
           + \\lambda_2 \\frac{1}{k} \\sum_{adv} \\| \\hat e(x_{adv}) - \\mathrm{sg}(\\hat e(x)) \\|_2^2 ,

with :math:`\\hat e = e / \\|e\\|_2`.

Choices where the paper's values are not confirmed here (protocol.md row 9): λ = 0.3 and
k = m/2 (Kurakin et al.'s adversarial-training weighting, which Na et al. build on), λ₂ = 0.1,
half of the adversarial images from the cascade source and half one-step.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from obfgrad._checks import finite_loss
from obfgrad.cache import load_or_train, normalize_recipe
from obfgrad.models.loop import batches_per_epoch, descend, epoch_batches, seeded_training

Adversary = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]

CASCADE_DEFAULTS: Dict[str, Any] = {
    "adv_weight": 0.3,  # lambda
    "embedding_weight": 0.1,  # lambda_2
    "one_step_eps": 0.1,  # max epsilon of the one-step images (per image uniform in [0, max])
    "embedding_distance": "normalized_l2",  # recorded in the recipe: cached models follow the rule
}


def last_linear_input(model: nn.Module, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(logits, embedding)``: the embedding is the input of the model's last ``nn.Linear``."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError("model: cascade training needs a model whose last layer is nn.Linear")
    captured = {}

    def hook(_module, inputs):
        captured["embedding"] = inputs[0]

    handle = linears[-1].register_forward_pre_hook(hook)
    try:
        logits = model(x)
    finally:
        handle.remove()
    return logits, captured["embedding"].flatten(1)


def step_ll(model: nn.Module, x: torch.Tensor, max_eps: float, generator: torch.Generator) -> torch.Tensor:
    """One step towards the least-likely class, epsilon uniform in [0, max_eps] per image."""
    was_training = model.training
    model.eval()
    leaf = x.detach().requires_grad_(True)
    logits = model(leaf)
    least_likely = logits.argmin(dim=1)
    (grad,) = torch.autograd.grad(F.cross_entropy(logits, least_likely), leaf)
    model.train(was_training)
    eps = torch.rand(x.shape[0], 1, 1, 1, generator=generator).to(x) * max_eps
    return (x - eps * grad.sign()).clamp(0.0, 1.0).detach()


def cascade_loss(model: nn.Module, clean: torch.Tensor, adversarial: torch.Tensor, y_clean: torch.Tensor,
                 y_adv: torch.Tensor, settings: Mapping[str, Any]) -> torch.Tensor:
    logits, embeddings = last_linear_input(model, torch.cat([clean, adversarial]))
    m, k = clean.shape[0], adversarial.shape[0]
    ce = F.cross_entropy(logits, torch.cat([y_clean, y_adv]), reduction="none")
    weight = settings["adv_weight"]
    classification = (ce[:m].sum() + weight * ce[m:].sum()) / (m + weight * k)
    # Pivot: the clean embedding of the same image (the first k clean images were perturbed).
    # Embeddings are compared after L2 normalisation, so the term is bounded (<= 4) whatever the
    # scale of the layer: with raw squared distances even lambda_2 = 1e-3 let this term swamp
    # the cross-entropy of a small CNN (clean accuracy 35% instead of 88%, measured).
    unit = F.normalize(embeddings, dim=1)
    pivot = unit[:k].detach()
    embedding = ((unit[m:] - pivot) ** 2).sum(dim=1).mean()
    return classification + settings["embedding_weight"] * embedding


def precompute_cascade_images(source: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                              adversary: Adversary, batch_size: int = 500, progress: bool = True) -> torch.Tensor:
    """Iterative adversarial images of the already-defended ``source`` for the training set."""
    source.eval()
    out = torch.empty_like(images)
    bar = tqdm(range(0, images.shape[0], batch_size), desc="cascade source PGD", leave=False,
               disable=None if progress else True)
    for start in bar:
        stop = start + batch_size
        out[start:stop] = adversary(source, images[start:stop], labels[start:stop])
    return out


def train_cascade(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, recipe: Mapping[str, Any],
                  cascade_images: torch.Tensor, *, progress: bool = True) -> nn.Module:
    """Train ``model`` in place (Adam or SGD as in ``recipe``); returns it in eval mode."""
    settings = {**CASCADE_DEFAULTS, **recipe.get("cascade", {})}
    limit = recipe.get("train_limit") or images.shape[0]
    images, labels, cascade_images = images[:limit], labels[:limit], cascade_images[:limit]
    optimizer = (torch.optim.Adam(model.parameters(), lr=recipe["lr"]) if recipe["optimizer"] == "adam"
                 else torch.optim.SGD(model.parameters(), lr=recipe["lr"], momentum=recipe["momentum"],
                                      weight_decay=recipe["weight_decay"]))
    batch_size = recipe["batch_size"]
    total = recipe["epochs"] * batches_per_epoch(limit, batch_size)
    with seeded_training(recipe["seed"], total, "cascade training", progress) as (shuffle, bar):
        model.train()
        for _, _, index in epoch_batches(limit, batch_size, recipe["epochs"], shuffle):
            x, y = images[index], labels[index]
            half = max(1, x.shape[0] // 2)
            quarter = half // 2
            # k = m/2 adversarial images: the first quarter from the cascade source, the rest one-step
            # (whose random step sizes come from the data generator, after the epoch's shuffle).
            one_step = step_ll(model, x[quarter:half], settings["one_step_eps"], shuffle)
            adversarial = torch.cat([cascade_images[index[:quarter]], one_step])
            loss = cascade_loss(model, x, adversarial, y, y[:half], settings)
            finite_loss(loss, "train cascade")
            descend(optimizer, loss)
            bar.update(1)
    return model.eval()


def cascade_train_or_load(recipe: Mapping[str, Any], build_fn: Callable[[Mapping[str, Any]], nn.Module],
                          data_fn: Callable[[], Tuple[torch.Tensor, torch.Tensor]],
                          source_fn: Callable[[], nn.Module], source_adversary: Adversary,
                          *, progress: bool = True, log: Optional[Callable[[str], None]] = None,
                          code_files: Sequence[Path] = ()) -> nn.Module:
    """The cascade-trained model of ``recipe`` (cached by the recipe's key, like
    ``obfgrad.models.training.train_or_load``). ``recipe`` must name the source network's
    recipe (``recipe["cascade"]["source"]``) so a different source is a different model;
    ``code_files``: the caller's files that shape training (e.g. the source adversary's), part
    of the checkpoint's code fingerprint (``obfgrad.cache.load_or_train``)."""
    recipe = normalize_recipe(recipe)

    def build() -> nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(recipe["seed"])
            return build_fn(recipe)

    def fit(model: nn.Module) -> None:
        started = time.perf_counter()
        images, labels = data_fn()
        limit = recipe.get("train_limit") or images.shape[0]
        images, labels = images[:limit], labels[:limit]
        cascade_images = precompute_cascade_images(source_fn(), images, labels, source_adversary, progress=progress)
        train_cascade(model, images, labels, recipe, cascade_images, progress=progress)
        if log is not None:
            log(f"  cascade-trained {recipe['arch']} in {time.perf_counter() - started:.0f} s; cached")

    return load_or_train(recipe, build, fit, code_files=code_files)
