"""Row 8: Madry et al. (2018), PGD adversarial training, CIFAR-10, 0.031 l-inf, 47%.

Not an obfuscated-gradient defense: Athalye et al. could not reduce its claim. The row shows
the contrast the paper draws: the adversarially trained network keeps clearly non-zero accuracy
under the strongest attack we run, while its naturally trained twin falls to about 0.

Own evaluation: Madry's leaderboard attack, 20-step PGD on the cross-entropy from a random
start (step eps/4: 2/255 at 8/255). Adaptive: PGD on the CW margin, 100 steps, 5 random
restarts (more steps and restarts must not change the picture for a real defense).
"""

from __future__ import annotations

from typing import Any, Dict

from obfgrad.attacks import PGD
from obfgrad.zoo import common
from obfgrad.zoo import madry as zoo_madry
from reproduce.evaluation import Evaluation, config_pgd
from reproduce.spec import RowSpec, RunContext, zoo_builder


def spec(profile: str, dry_run: bool = False) -> RowSpec:
    config = zoo_madry.config(profile, dry_run)
    paper = profile == "paper"
    return RowSpec(
        name="madry",
        takes_weights=True,  # --weights ROW=FILE replaces the trained classifier
        defense="Madry et al. (2018), PGD adversarial training",
        dataset=zoo_madry.dataset(profile),
        distance=zoo_madry.DISTANCE,
        eps=config["eps"],
        paper_dataset="CIFAR-10",
        paper_bound="0.031 (ℓ∞)",
        paper_accuracy=0.47,
        n_examples=10000 if paper else 1000,
        config=config,
        choices=[
            "Adversarial training uses MadryLab config.json's 10 PGD steps of 2/255 (the paper text says 7; "
            "UNCONFIRMED)."
            if paper else
            "Smoke: Fashion-MNIST at eps 0.1 (CIFAR's 8/255 leaves a natural Fashion-MNIST CNN partly robust); "
            "adversarial training with 7 PGD steps of eps/4 from a random start.",
            *([] if paper else [
                "Madry et al.'s MNIST settings (MadryLab/mnist_challenge config.json): eps 0.3, training PGD k = 40 "
                "steps of a = 0.01 from a random start, batch 50, 100k steps; their MNIST claim is 89.62% "
                "under 100-step "
                "PGD on the cross-entropy with 50 random restarts (the challenge README's white-box leaderboard). Not "
                "adopted: 40 training steps instead of 7 make adversarial training about 5x dearer (71 s -> "
                "about 6 min "
                "on the 2-core CPU, over the 30-minute smoke budget), and the smoke profile keeps one l-inf "
                "stand-in bound, "
                "0.1, for every Fashion-MNIST row (at 0.3 a natural and a defended Fashion-MNIST CNN alike would be "
                "expected near 0%, the contrast gone; not measured). No claimed accuracy is set: 89.62% is "
                "MNIST at eps 0.3, not this row's Fashion-MNIST "
                "at 0.1 (unlike with unlike)."]),
            "Own evaluation = the MadryLab leaderboard attack (20-step PGD, cross-entropy); adaptive = "
            "100-step PGD on the CW margin with 5 random restarts.",
        ],
        setup=setup,
        evaluations=(
            Evaluation("own_pgd20_ce", "own", "own", model="classifier", attack=own),
            Evaluation("adaptive_pgd100x5_margin", "adaptive", "adaptive", model="classifier", attack=adaptive),
            Evaluation("natural_twin_adaptive", "natural_twin", "extra", model="natural_twin", attack=adaptive),
        ),
        report=lambda row, ctx, setup, summaries: {"natural_twin": twin_summary(summaries["natural_twin_adaptive"])},
        build_defense=zoo_builder(zoo_madry.build),
    )


def own(row: RowSpec, ctx: RunContext) -> PGD:
    """The MadryLab leaderboard attack: 20-step PGD on the cross-entropy (shared with the Na row)."""
    return config_pgd(row.config["own_attack"], row.distance, row.eps, seed=ctx.seed)


def adaptive(row: RowSpec, ctx: RunContext) -> PGD:
    """100-step PGD on the CW margin, 5 random restarts (shared with the Na row)."""
    return config_pgd(row.config["adaptive_attack"], row.distance, row.eps, seed=ctx.seed)


def setup(row: RowSpec, ctx: RunContext, x, y) -> Dict[str, Any]:
    model = common.classifier(ctx, row.config["classifier"], row="madry")
    return {"classifier": model, "guard": model, "natural_twin": common.classifier(ctx, row.config["natural_twin"])}


def twin_summary(summary: Dict[str, Any]) -> Dict[str, Any]:
    return {"clean_accuracy": summary["clean_accuracy"], "adaptive_accuracy": summary["accuracy"],
            "adaptive_ci95": summary["ci95"]}
