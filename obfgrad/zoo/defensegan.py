"""Samangouei et al. (2018), Defense-GAN: projection onto a WGAN-GP generator's range in front of
the classifier; the adaptive model is BPDA through the projection (variant ``unrolled``: gradients through
the projection's steps)."""

from __future__ import annotations

import time
from typing import Any, Dict

from torch import nn

from obfgrad.attacks import BPDA
from obfgrad.data import load_dataset
from obfgrad.defenses.defensegan import DefenseGAN
from obfgrad.models.wgan import build_wgan, wgan_recipe, wgan_train_or_load
from obfgrad.zoo import common, recipes
from obfgrad.zoo.base import BuildContext, DefenseBundle

DISTANCE = "l2_per_value"
EPS = 0.005  # l2 per value: ||delta||_2 <= 0.005 * 784 = 3.92


def dataset(profile: str) -> str:
    return "mnist" if profile == "paper" else "fashion-mnist"


def config(profile: str, dry_run: bool = False) -> Dict[str, Any]:
    """Every setting of the defense and of the paper's attacks on it (JSON)."""
    paper = profile == "paper"
    steps = lambda n: 2 if dry_run else n  # noqa: E731
    if paper:
        generator = wgan_recipe(arch="dcgan", dim=64, dataset="mnist")
        classifier = {"arch": "mnist_cnn", "arch_kwargs": {}, "dataset": "mnist", "epochs": 20, "batch_size": 128,
                      "optimizer": "adam", "lr": 1e-3, "seed": 0}
        projection = {"steps": steps(200), "restarts": 2 if dry_run else 10, "lr": 10.0, "momentum": 0.7,
                      "lr_decay": 0.1, "lr_decay_at": 0.8}
        latent = {"inversion_steps": steps(3000), "inversion_restarts": 2 if dry_run else 30, "inversion_lr": 0.1,
                  "steps": steps(30000), "lr": 0.1, "binary_search_steps": 1 if dry_run else 5, "initial_const": 1.0}
    else:
        # OBFGRAD_SMOKE_TRAIN_LIMIT (CI's quick run) caps the images and the steps alike.
        generator = wgan_recipe(arch="mlp", dim=256, dataset="fashion-mnist", train_limit=recipes.train_limit(30000),
                                generator_steps=recipes.train_steps(1500, 30000), critic_steps=5, batch_size=64,
                                lr=2e-4)
        classifier = recipes.smoke_classifier(None)
        # A dry run proves the path with 2 steps here too (it ran the full smoke attack: 3 minutes).
        projection = {"steps": steps(100), "restarts": 2 if dry_run else 4, "lr": 10.0, "momentum": 0.7,
                      "lr_decay": 0.1, "lr_decay_at": 0.8}
        latent = {"inversion_steps": steps(300), "inversion_restarts": 2 if dry_run else 8, "inversion_lr": 0.1,
                  "steps": steps(200), "lr": 0.05, "binary_search_steps": 1 if dry_run else 4, "initial_const": 1.0}
    pgd = {"steps": steps(100 if paper else 20), "step_size": EPS / 10 if paper else EPS / 5, "loss": "margin"}
    return {"eps": EPS, "generator": generator, "classifier": classifier, "projection": projection,
            "clean_floor": recipes.clean_floor(classifier),
            # models/gan.py: z re-initialised for every batch from N(0, 1/latent_dim), never a fixed seed
            "projection_starts": "fresh_normal_variance_1_over_latent_dim",
            "own_attack": pgd, "adaptive_attack": pgd, "latent_attack": latent}


def generator(ctx: BuildContext, recipe: Dict[str, Any]) -> nn.Module:
    if ctx.dry_run:
        return build_wgan(recipe)[0].to(ctx.device).eval()
    started = time.perf_counter()
    model = wgan_train_or_load(recipe, lambda r: load_dataset(r["dataset"], "train", data_dir=ctx.data_dir)[0],
                               progress=ctx.progress is not False)
    if time.perf_counter() - started > 5:
        ctx.log(f"  trained wgan-gp in {time.perf_counter() - started:.0f} s; cached")
    return model.to(ctx.device).eval()


def defended(ctx: BuildContext, config: Dict[str, Any]):
    g = generator(ctx, config["generator"])
    classifier = common.classifier(ctx, config["classifier"], row="defensegan")
    return g, DefenseGAN(g, **config["projection"]), classifier  # fresh starts on every call


VARIANTS = ("projection", "unrolled")


def build(config: Dict[str, Any], ctx: BuildContext, n: int, variant: str = "projection") -> DefenseBundle:
    """``projection``: the defense as deployed (the projection's output carries no gradient);
    ``unrolled``: the same forward pass as a differentiable program, gradients through the L
    projection steps (the computation the paper calls vanishing/exploding)."""
    if variant not in VARIANTS:
        raise ValueError(f"variant: expected one of {', '.join(VARIANTS)}, got {variant!r}")
    x, y = common.test_set(ctx, config["classifier"]["dataset"], n)
    _, projection, classifier = defended(ctx, config)
    if variant == "unrolled":
        projection = DefenseGAN(projection.generator, **config["projection"], unrolled=True)
    return DefenseBundle(model=nn.Sequential(projection, classifier), undefended=classifier, x=x, y=y,
                         distance=DISTANCE, eps=config["eps"],
                         adaptive_model=nn.Sequential(BPDA(projection), classifier), randomized=True,
                         obfuscation="vanishing", name=f"defensegan:{variant}",
                         config=config)
