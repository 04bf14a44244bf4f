"""Dhillon et al. (2018), stochastic activation pruning on a naturally trained classifier; the
adaptive model is EOT over SAP's draws."""

from __future__ import annotations

from typing import Any, Dict

from obfgrad.attacks import EOT
from obfgrad.defenses import SAP
from obfgrad.zoo import common, recipes
from obfgrad.zoo.base import BuildContext, DefenseBundle

DISTANCE = "linf"
PAPER_EPS = 8 / 255
SMOKE_EPS = 0.1


dataset = recipes.cifar10_or_fashion_mnist


def config(profile: str, dry_run: bool = False) -> Dict[str, Any]:
    """Every setting of the defense and of the paper's attacks on it (JSON)."""
    paper, eps, steps = recipes.profile_budget(profile, dry_run, PAPER_EPS, SMOKE_EPS)
    return {
        "eps": eps,
        **recipes.classifier_entries(recipes.madry_cifar_wide_resnet(None) if paper
                                     else recipes.smoke_classifier(None)),
        "sap": {"layers": "every Conv2d output", "draws_factor": 2.0, "eps": 1e-8},
        "own_attack": {"steps": steps(20), "step_size": eps / 4, "loss": "ce", "update": "sign", "samples": 1,
                       "early_stop": True},
        # Paper: sap/robustml_attack.py and sap/sap.ipynb: Adam lr 0.1 on 0-255 at eps 8 (= eps/80),
        # 500 steps, ONE draw of SAP per step, from zeros clipped into the ball (max(x - eps, 0)).
        # Smoke: the named variant "eot_10_draws" (the paper text's 10 samples per step, not in the
        # code), 100 steps of eps/20 (about the same path length, ~5-6 eps), from the clean image.
        "adaptive_attack": {"steps": steps(500 if paper else 100), "step_size": eps / (80 if paper else 20),
                            "loss": "margin", "update": "adam_sign",
                            "samples": 2 if dry_run else (1 if paper else 10),
                            "early_stop": False, "start_from": 0.0 if paper else None,
                            "variant": "authors_code" if paper else "eot_10_draws"},
        "adaptive_attack_variants": {
            "authors_code": "one SAP draw per Adam step, 500 steps, start max(x - eps, 0) (sap/robustml_attack.py)",
            "eot_10_draws": "EOT over 10 SAP draws per step (the paper's Sec. 5.3 text; not in the authors' code)"},
        "vote_draws": 2 if dry_run else 10,
    }


def defended(ctx: BuildContext, config: Dict[str, Any]):
    """``(sap, natural)``: SAP in front of the naturally trained classifier (the user's weights for
    ``sap`` if given), and that classifier alone."""
    natural = common.classifier(ctx, config["classifier"], row="sap")
    return SAP(natural, eps=config["sap"]["eps"]).eval(), natural


def build(config: Dict[str, Any], ctx: BuildContext, n: int) -> DefenseBundle:
    x, y = common.test_set(ctx, config["classifier"]["dataset"], n)
    sap, natural = defended(ctx, config)
    return DefenseBundle(model=sap, adaptive_model=EOT(sap, samples=config["adaptive_attack"]["samples"]),
                         undefended=natural, x=x, y=y, distance=DISTANCE, eps=config["eps"], randomized=True,
                         obfuscation="stochastic", name="sap", config=config)
