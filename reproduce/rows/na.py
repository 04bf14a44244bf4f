"""Row 9: Na et al. (2018), cascade adversarial training, CIFAR-10, 0.015 l-inf, 15%.

Athalye et al. could not reduce the authors' own claim: Na et al. had evaluated with a strong
optimisation-based (Carlini-Wagner) attack. So both the defense's own evaluation and the
adaptive attack here are white-box attacks on the trained network; the adaptive one is PGD on
the CW margin (CW's l-inf formulation as a projected attack), with more steps and restarts.

The cascade source ("an already defended network") is the Madry row's adversarially trained
network of the same profile; see ``obfgrad.defenses.cascade`` for the training rule.
"""

from __future__ import annotations

from obfgrad.zoo import na as zoo_na
from reproduce import choices, paper_entries, paper_plans
from reproduce.evaluation import Evaluation
from reproduce.rows import madry
from reproduce.spec import RowSpec, table1, zoo_fields


def spec(profile: str, dry_run: bool = False) -> RowSpec:
    config = zoo_na.config(profile, dry_run)
    paper = profile == "paper"
    return RowSpec(
        name="na",
        work_plan=paper_plans.na, fidelity=paper_entries.NA,
        defense="Na et al. (2018), cascade adversarial training",
        **zoo_fields(zoo_na, profile, config),
        **table1("CIFAR-10", "0.015 (ℓ∞)", 0.15),
        n_examples=10000 if paper else 1000,
        choices=choices.of("na", profile),
        setup=lambda row, ctx, x, y: {"defended": (model := zoo_na.cascade_classifier(ctx, row.config["classifier"])),
                                        "guard": model},
        evaluations=(Evaluation("own_pgd20_ce", "own", "own", attack=madry.own),
                     Evaluation("adaptive_pgd100x5_margin", "adaptive", "adaptive", attack=madry.adaptive)),
    )
