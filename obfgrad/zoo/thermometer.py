"""Buckman et al. (2018), thermometer encoding: 16 levels in front of a classifier trained on the
codes (no adversarial training). The adaptive model is BPDA through the soft thermometer."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Dict

from torch import nn

from obfgrad.defenses import Thermometer, ThermometerDefense
from obfgrad.models import build_model
from obfgrad.models.training import build_seeded, make_recipe, train_or_load
from obfgrad.zoo import common, recipes
from obfgrad.zoo.base import BuildContext, DefenseBundle

DISTANCE = "linf"
LEVELS = 16
PAPER_EPS = 8 / 255
SMOKE_EPS = 0.1


def dataset(profile: str) -> str:
    return "cifar10" if profile == "paper" else "fashion-mnist"


def config(profile: str, dry_run: bool = False) -> Dict[str, Any]:
    """Every setting of the defense and of the paper's attacks on it (JSON)."""
    paper = profile == "paper"
    eps = PAPER_EPS if paper else SMOKE_EPS
    steps = lambda n: 2 if dry_run else n  # noqa: E731 (a dry run proves the path with 2 steps)
    channels = 3 if paper else 1
    if paper:
        classifier = recipes.madry_cifar_wide_resnet(None, in_channels=channels * LEVELS)
    else:
        classifier = recipes.smoke_classifier(None, in_channels=channels * LEVELS)
    return {
        "eps": eps,
        "encoder": {"kind": "thermometer", "levels": LEVELS, "input_channels": channels},
        # The recipe builds the bare classifier on codes; the encoder above sits in front of it
        # during training (build_fn below), so the cache entry is the encoded model's.
        "classifier": classifier,
        "clean_floor": recipes.clean_floor(classifier, kind="thermometer"),
        "own_lspga": {"steps": steps(7), "step_size": 0.01, "inv_temp": 1.0, "anneal": 1.2, "loss": "ce",
                      "random_start": True, "update": "sign"},
        "own_plain_gradient": {"steps": steps(20), "step_size": eps / 4, "loss": "ce", "update": "sign"},
        # lr 1/255 at eps 8/255 in the repo: lr = eps / 8 at any eps. Paper: the soft thermometer
        # evaluated on the 0-255 scale as thermometer/robustml_attack.py does (obfgrad.ops.thermometer_op).
        "adaptive_attack": {"steps": steps(30), "step_size": eps / 8, "loss": "margin", "update": "adam_sign",
                            "random_start": False, "backward": "soft_255" if paper else "soft",
                            # Paper: the robustml attack's start, zeros clipped into the ball = max(x - eps, 0)
                            # (thermometer/robustml_attack.py); smoke: the clean image.
                            "start_from": 0.0 if paper else None},
        "timing": None if dry_run else {"examples": 100, "steps": 5},  # a dry run skips the timing
    }


def _build_encoded(recipe: Dict[str, Any], levels: int) -> nn.Module:
    return nn.Sequential(Thermometer(levels), build_model(recipe["arch"], **recipe["arch_kwargs"]))


def encoded_classifier(ctx: BuildContext, config: Dict[str, Any]) -> ThermometerDefense:
    """The trained ``Thermometer -> classifier`` model (cached by recipe), as a defense."""
    recipe = make_recipe(**config["classifier"])
    levels = config["encoder"]["levels"]
    build = lambda r: _build_encoded(r, levels)  # noqa: E731
    if ctx.dry_run:
        model = build_seeded(recipe, build)
    else:
        started = time.perf_counter()
        model = train_or_load(recipe, build_fn=build, data_fn=common.training_data(ctx),
                              progress=ctx.progress is not False,
                              code_files=common.TRAINING_GLUE + (Path(__file__),))  # _build_encoded is here
        if time.perf_counter() - started > 5:
            ctx.log(f"  trained thermometer {recipe['arch']} in {time.perf_counter() - started:.0f} s; cached")
    return ThermometerDefense.from_sequential(model.to(ctx.device).eval(),
                                              backward=config["adaptive_attack"]["backward"])


def build(config: Dict[str, Any], ctx: BuildContext, n: int) -> DefenseBundle:
    """Deployed: the true gradient of the encoding (zero almost everywhere); adaptive: BPDA."""
    x, y = common.test_set(ctx, config["classifier"]["dataset"], n)
    defense = encoded_classifier(ctx, config)
    return DefenseBundle(model=defense.with_gradient("true"), adaptive_model=defense, undefended=defense,
                         x=x, y=y, distance=DISTANCE, eps=config["eps"], obfuscation="shattered", name="thermometer",
                         config=config)
