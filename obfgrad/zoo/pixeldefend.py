"""Song et al. (2018), PixelDefend: purification by a PixelCNN++ in front of the classifier; the
adaptive model is BPDA (identity) through the purifier."""

from __future__ import annotations

import time
from typing import Any, Dict

from torch import nn

from obfgrad.attacks import BPDA
from obfgrad.data import load_dataset
from obfgrad.defenses.pixeldefend import PixelDefend
from obfgrad.models.pixelcnn import bits_per_dim, build_pixelcnn, pixelcnn_recipe, pixelcnn_train_or_load
from obfgrad.zoo import common, recipes
from obfgrad.zoo.base import BuildContext, DefenseBundle

DISTANCE = "linf"
PAPER_EPS = 8 / 255
SMOKE_EPS = 0.1  # the Madry row's smoke bound for the paper's 8/255 on Fashion-MNIST
DRY_RUN_POSITIONS = 4  # a full pass is H·W sequential PixelCNN++ evaluations: far too slow for a dry run


def dataset(profile: str) -> str:
    return "cifar10" if profile == "paper" else "fashion-mnist"


def config(profile: str, dry_run: bool = False) -> Dict[str, Any]:
    """Every setting of the defense and of the paper's attacks on it (JSON)."""
    paper = profile == "paper"
    eps = PAPER_EPS if paper else SMOKE_EPS
    steps = lambda n: 2 if dry_run else n  # noqa: E731
    if paper:
        pixelcnn = pixelcnn_recipe(
            arch_kwargs={"in_channels": 3, "nr_filters": 160, "nr_resnet": 5, "nr_stages": 3, "nr_logistic_mix": 10,
                         "dropout": 0.5},
            dataset="cifar10", train_limit=None, epochs=250, batch_size=64, lr=1e-3, lr_decay=0.999995)
        classifier = recipes.madry_cifar_wide_resnet(None)
    else:
        pixelcnn = pixelcnn_recipe(
            arch_kwargs={"in_channels": 1, "nr_filters": 12, "nr_resnet": 1, "nr_stages": 2, "nr_logistic_mix": 5,
                         "dropout": 0.0},
            dataset="fashion-mnist", train_limit=recipes.train_limit(10000), epochs=1, batch_size=32, lr=2e-3,
            lr_decay=0.998)
        classifier = recipes.smoke_classifier(None)
    return {
        "eps": eps,
        "eps_defend": 2 * eps,  # Song et al.: 16/255 against 8/255
        "max_positions": DRY_RUN_POSITIONS if dry_run else None,
        # Images timed three ways (batched, batched with the cropped scheme, one at a time).
        "purify_timing_images": 0 if (dry_run or paper) else 10,
        "pixelcnn": pixelcnn,
        "classifier": classifier,
        "clean_floor": recipes.clean_floor(classifier),
        "own_attack": {"steps": steps(20), "step_size": eps / 4, "loss": "ce", "random_start": True},
        "adaptive_attack": {"steps": steps(100 if paper else 20), "step_size": (0.5 / 255) if paper else eps / 5,
                            "loss": "ce"},
    }


def pixelcnn(ctx: BuildContext, recipe: Dict[str, Any]):
    """The trained PixelCNN of ``recipe`` (untrained in dry runs), with its test bits/dim."""
    if ctx.dry_run:
        return build_pixelcnn(recipe).to(ctx.device).eval(), None
    started = time.perf_counter()
    model = pixelcnn_train_or_load(recipe, lambda r: load_dataset(r["dataset"], "train", data_dir=ctx.data_dir)[0],
                                   progress=ctx.progress is not False)
    if time.perf_counter() - started > 5:
        ctx.log(f"  trained pixelcnn in {time.perf_counter() - started:.0f} s; cached")
    test_images = load_dataset(recipe["dataset"], "test", data_dir=ctx.data_dir)[0][:1000]
    return model.to(ctx.device).eval(), bits_per_dim(model, (test_images * 255).round() / 255)


def defended(ctx: BuildContext, config: Dict[str, Any]):
    density, bpd = pixelcnn(ctx, config["pixelcnn"])
    classifier = common.classifier(ctx, config["classifier"], row="pixeldefend")
    purifier = PixelDefend(density, config["eps_defend"], config["max_positions"])
    return purifier, classifier, bpd


def build(config: Dict[str, Any], ctx: BuildContext, n: int) -> DefenseBundle:
    x, y = common.test_set(ctx, config["classifier"]["dataset"], n)
    purifier, classifier, _ = defended(ctx, config)
    return DefenseBundle(model=nn.Sequential(purifier, classifier), undefended=classifier, x=x, y=y,
                         distance=DISTANCE, eps=config["eps"],
                         adaptive_model=nn.Sequential(BPDA(purifier), classifier), obfuscation="shattered",
                         name="pixeldefend", config=config)
