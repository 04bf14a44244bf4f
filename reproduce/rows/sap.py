"""Row 4: Dhillon et al. (2018), stochastic activation pruning (SAP), CIFAR-10, 0.031 l-inf, 0%.

Defense: SAP after every convolution of a naturally trained network, no retraining (Athalye et
al.'s reimplementation, protocol.md row 4): keep probability ``1 - exp(-2n p)``, survivors
rescaled by ``1 / (q + 1e-8)``.

Own evaluation: a single-sample gradient attack (PGD on the cross-entropy, one SAP draw per
step, as if the network were deterministic). Adaptive (Athalye et al., Sec. 5.3): EOT over SAP's
randomness (``samples`` draws per step; the paper sums 10, the repository draws 1), CW margin,
Adam on sign(grad); the 1e-8 guard keeps the gradient finite.

Prediction of the stochastic model: the primary number uses a *single* draw per prediction (the
robustml harness); the row also reports the accuracy of the same adversarial examples under
the mean softmax of ``vote_draws`` draws and under a majority vote of those draws.
"""

from __future__ import annotations

from typing import Any, Dict

from obfgrad.attacks import EOT
from obfgrad.zoo import sap as zoo_sap
from reproduce import choices, paper_entries, paper_plans
from reproduce.evaluation import Evaluation, pgd_of, votes_judge
from reproduce.spec import RowSpec, RunContext, table1, zoo_fields


def spec(profile: str, dry_run: bool = False) -> RowSpec:
    config = zoo_sap.config(profile, dry_run)
    paper = profile == "paper"
    return RowSpec(
        name="sap",
        work_plan=paper_plans.sap, fidelity=paper_entries.SAP,
        takes_weights=True,  # --weights ROW=FILE replaces the trained classifier
        defense="Dhillon et al. (2018), stochastic activation pruning",
        **zoo_fields(zoo_sap, profile, config),
        **table1("CIFAR-10", "0.031 (ℓ∞)", 0.0),
        n_examples=10000 if paper else 200,
        choices=choices.of("sap", profile),
        # The eps curve's budget (its EOT/projection steps dominate the curve's time).
        curve=None if paper else {"examples": 50, "steps": 10},
        setup=setup,
        evaluations=(
            Evaluation("own_single_sample", "own", "own", predict="defended", judge=votes_judge,
                       attack=pgd_of("own_attack")),
            Evaluation("adaptive_eot", "adaptive", "adaptive", model="eot", predict="defended", judge=votes_judge,
                       attack=adaptive),
            # Control: the same attack on the network without SAP. What it leaves is the smoke budget's
            # (and this attack's) residual, not SAP's.
            Evaluation("undefended_same_attack", "undefended_same_attack", "extra", model="undefended",
                       attack=adaptive),
        ),
        report=lambda row, ctx, setup, summaries: {
            "undefended_clean_accuracy": summaries["undefended_same_attack"]["clean_accuracy"]},
    )


#: The adaptive attack (EOT's draws come from the model: ``setup["eot"]``).
adaptive = pgd_of("adaptive_attack")


def setup(row: RowSpec, ctx: RunContext, x, y) -> Dict[str, Any]:
    sap, natural = zoo_sap.defended(ctx, row.config)
    return {"defended": sap, "eot": EOT(sap, samples=row.config["adaptive_attack"]["samples"]),
            "undefended": natural, "guard": natural}
