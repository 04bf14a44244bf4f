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

from obfgrad.zoo import common
from obfgrad.zoo import madry as zoo_madry
from reproduce import choices, paper_entries, paper_plans
from reproduce.evaluation import Evaluation, pgd_of
from reproduce.spec import RowSpec, RunContext, table1, zoo_fields


def spec(profile: str, dry_run: bool = False) -> RowSpec:
    config = zoo_madry.config(profile, dry_run)
    paper = profile == "paper"
    return RowSpec(
        name="madry",
        work_plan=paper_plans.madry, fidelity=paper_entries.MADRY,
        takes_weights=True,  # --weights ROW=FILE replaces the trained classifier
        defense="Madry et al. (2018), PGD adversarial training",
        **zoo_fields(zoo_madry, profile, config),
        **table1("CIFAR-10", "0.031 (ℓ∞)", 0.47),
        n_examples=10000 if paper else 1000,
        choices=choices.of("madry", profile),
        setup=setup,
        evaluations=(
            Evaluation("own_pgd20_ce", "own", "own", model="classifier", attack=own),
            Evaluation("adaptive_pgd100x5_margin", "adaptive", "adaptive", model="classifier", attack=adaptive),
            Evaluation("natural_twin_adaptive", "natural_twin", "extra", model="natural_twin", attack=adaptive),
        ),
        report=lambda row, ctx, setup, summaries: {"natural_twin": twin_summary(summaries["natural_twin_adaptive"])},
    )


#: The MadryLab leaderboard attack, 20-step PGD on the cross-entropy, and the adaptive 100-step PGD
#: on the CW margin with 5 random restarts (shared with the Na row); seeded with the run seed.
own, adaptive = pgd_of("own_attack", seeded=True), pgd_of("adaptive_attack", seeded=True)


def setup(row: RowSpec, ctx: RunContext, x, y) -> Dict[str, Any]:
    model = common.classifier(ctx, row.config["classifier"], row="madry")
    return {"classifier": model, "guard": model, "natural_twin": common.classifier(ctx, row.config["natural_twin"])}


def twin_summary(summary: Dict[str, Any]) -> Dict[str, Any]:
    return {"clean_accuracy": summary["clean_accuracy"], "adaptive_accuracy": summary["accuracy"],
            "adaptive_ci95": summary["ci95"]}
