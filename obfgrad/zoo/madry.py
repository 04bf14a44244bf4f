"""Madry et al. (2018), PGD adversarial training: the adversarially trained classifier, its naturally
trained twin as the undefended model."""

from __future__ import annotations

from typing import Any, Dict

from obfgrad.zoo import common, recipes
from obfgrad.zoo.base import BuildContext, DefenseBundle

DISTANCE = "linf"
PAPER_EPS = 8 / 255
SMOKE_EPS = 0.1


dataset = recipes.cifar10_or_fashion_mnist


def config(profile: str, dry_run: bool = False) -> Dict[str, Any]:
    """Every setting of the defense and of the paper's attacks on it (JSON)."""
    _, eps, steps = recipes.profile_budget(profile, dry_run, PAPER_EPS, SMOKE_EPS)
    if profile == "paper":
        adversarial = recipes.pgd_training(eps, steps(10), 2 / 255)
        classifier = recipes.madry_cifar_wide_resnet(adversarial)
        natural = recipes.madry_cifar_wide_resnet(None)
    else:
        adversarial = recipes.pgd_training(eps, 7, eps / 4)
        classifier = recipes.smoke_classifier(adversarial)
        natural = recipes.smoke_classifier(None)
    return {
        "eps": eps,
        "classifier": classifier,
        "clean_floor": recipes.clean_floor(classifier),
        "natural_twin": natural,
        "own_attack": {"steps": steps(20), "step_size": eps / 4, "loss": "ce", "random_start": True,
                       "restarts": 1},
        "adaptive_attack": {"steps": steps(100), "step_size": eps / 10, "loss": "margin",
                            "random_start": True, "restarts": 1 if dry_run else 5},
    }


def build(config: Dict[str, Any], ctx: BuildContext, n: int) -> DefenseBundle:
    """The adversarially trained classifier (the user's weights for ``madry`` if given)."""
    x, y = common.test_set(ctx, config["classifier"]["dataset"], n)
    model = common.classifier(ctx, config["classifier"], row="madry")
    twin = common.classifier(ctx, config["natural_twin"])
    return DefenseBundle(model=model, undefended=twin, x=x, y=y, distance=DISTANCE, eps=config["eps"],
                         name="madry", config=config)


def build_undefended(config: Dict[str, Any], ctx: BuildContext, n: int) -> DefenseBundle:
    """The profile's naturally trained classifier (the ``natural_twin`` recipe), undefended."""
    x, y = common.test_set(ctx, config["classifier"]["dataset"], n)
    model = common.classifier(ctx, config["natural_twin"])
    return DefenseBundle(model=model, undefended=model, x=x, y=y, distance=DISTANCE, eps=config["eps"],
                         name="undefended", config=config)
