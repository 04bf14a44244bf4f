"""Na et al. (2018), cascade adversarial training: a classifier trained on its own and a defended
source network's adversarial examples; the source is the Madry defense's adversarially trained network
of the same profile (``obfgrad.defenses.cascade``)."""

from __future__ import annotations

from typing import Any, Dict

from obfgrad.defenses.cascade import CASCADE_DEFAULTS, cascade_train_or_load
from obfgrad.models.training import build_seeded, make_recipe
from obfgrad.zoo import common, madry, recipes
from obfgrad.zoo.base import BuildContext, DefenseBundle

DISTANCE = "linf"
PAPER_EPS = 0.015
SMOKE_EPS = 0.05  # half the Madry row's smoke bound, as 0.015 is about half of 0.031


def dataset(profile: str) -> str:
    return "cifar10" if profile == "paper" else "fashion-mnist"


def config(profile: str, dry_run: bool = False) -> Dict[str, Any]:
    """Every setting of the defense and of the paper's attacks on it (JSON)."""
    paper = profile == "paper"
    eps = PAPER_EPS if paper else SMOKE_EPS
    source = madry.config(profile, dry_run)["classifier"]
    base = (recipes.madry_cifar_wide_resnet(None) if paper
            else {**recipes.smoke_classifier(None, epochs=3),
                  "train_limit": recipes.train_limit(recipes.ADVERSARIAL_TRAIN_LIMIT)})
    source_eps = source["adversarial"]["eps"]
    cascade = {**CASCADE_DEFAULTS, "one_step_eps": source_eps, "source": source,
               "source_attack": {"eps": source_eps, "steps": 2 if dry_run else 10,
                                 "step_size": source_eps / 4, "distance": "linf"}}
    steps = lambda n: 2 if dry_run else n  # noqa: E731
    return {
        "eps": eps,
        "classifier": {**base, "cascade": cascade},
        "clean_floor": recipes.clean_floor(base, kind="cascade"),
        "own_attack": {"steps": steps(20), "step_size": eps / 4, "loss": "ce", "random_start": True, "restarts": 1},
        "adaptive_attack": {"steps": steps(100), "step_size": eps / 10, "loss": "margin", "random_start": True,
                            "restarts": 1 if dry_run else 5},
    }


def build(config: Dict[str, Any], ctx: BuildContext, n: int) -> DefenseBundle:
    """The cascade-trained classifier; undefended: the same recipe trained naturally."""
    x, y = common.test_set(ctx, config["classifier"]["dataset"], n)
    model = cascade_classifier(ctx, config["classifier"])
    plain = {k: v for k, v in config["classifier"].items() if k != "cascade"}
    return DefenseBundle(model=model, undefended=common.classifier(ctx, plain), x=x, y=y,
                         distance=DISTANCE, eps=config["eps"], name="na", config=config)


def cascade_classifier(ctx: BuildContext, recipe_fields: Dict[str, Any]):
    """The cascade-trained classifier of ``recipe_fields`` (a recipe with a ``cascade`` entry),
    trained once and cached; its source network is built (or loaded) on the way. A dry run: the
    untrained, seeded network."""
    cascade = recipe_fields["cascade"]
    plain = make_recipe(**{k: v for k, v in recipe_fields.items() if k != "cascade"})
    recipe = {**plain, "cascade": cascade}
    if ctx.dry_run:
        return build_seeded(plain).to(ctx.device).eval()
    model = cascade_train_or_load(
        recipe,
        build_fn=lambda _recipe: build_seeded(plain),
        data_fn=lambda: common.training_data(ctx)(plain),
        source_fn=lambda: common.classifier(ctx, cascade["source"]),
        source_adversary=common.pgd_adversary(cascade["source_attack"]),
        progress=ctx.progress is not False, log=ctx.log, code_files=common.TRAINING_GLUE,
    )
    return model.to(ctx.device).eval()
