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

from typing import Any, Dict, List

import torch

from obfgrad.attacks import EOT, PGD
from obfgrad.defenses import SAP
from obfgrad.distances import get_distance
from obfgrad.eval import argmax_predictor, clopper_pearson, derive_seed, random_stream
from obfgrad.zoo import common
from obfgrad.zoo import sap as zoo_sap
from reproduce import pipeline
from reproduce.spec import RowSpec, RunContext, zoo_builder


def spec(profile: str, dry_run: bool = False) -> RowSpec:
    config = zoo_sap.config(profile, dry_run)
    paper = profile == "paper"
    return RowSpec(
        name="sap",
        takes_weights=True,  # --weights ROW=FILE replaces the trained classifier
        defense="Dhillon et al. (2018), stochastic activation pruning",
        dataset=zoo_sap.dataset(profile),
        distance=zoo_sap.DISTANCE,
        eps=config["eps"],
        paper_dataset="CIFAR-10",
        paper_bound="0.031 (ℓ∞)",
        paper_accuracy=0.0,
        n_examples=10000 if paper else 200,
        config=config,
        choices=[
            "SAP as in Athalye et al.'s repository (after every conv, N = 2n, +1e-8), not Dhillon's patched SAP-100 "
            "after every ReLU (which variant the paper used is UNCONFIRMED)." if paper else
            "Smoke: Fashion-MNIST at eps 0.1, the natural small CNN (the Madry row's twin) with SAP after its 2 convs.",
            ("Adaptive: the authors' code (sap/robustml_attack.py): one SAP draw per Adam step, 500 steps, from "
             "max(x - eps, 0); the paper text's 10 draws per step is the named variant eot_10_draws." if paper else
             "Smoke adaptive: the variant eot_10_draws (EOT over 10 SAP draws per step, the paper text's count), 100 "
             "steps from the clean image; the authors' code draws once per step (the paper profile)."),
            "Primary prediction rule: one stochastic forward pass (robustml); mean softmax and majority vote over "
            "10 draws reported beside it.",
        ],
        # The eps curve's budget (its EOT/projection steps dominate the curve's time).
        curve=None if paper else {"examples": 50, "steps": 10},
        run=run,
        build_defense=zoo_builder(zoo_sap.build),
    )



@torch.no_grad()
def _vote_accuracies(sap: SAP, x: torch.Tensor, x_adv: torch.Tensor, y: torch.Tensor, eps: float, draws: int,
                     batch_size: int = 250) -> Dict[str, Any]:
    """Accuracy at ``x_adv`` (violations judged at ``x``, as the evaluator does) under the mean
    softmax and the majority vote of ``draws`` SAP draws."""
    within = get_distance("linf").within(x, x_adv, eps)
    x_final = torch.where(within.view(-1, 1, 1, 1), x_adv, x)
    mean_correct, vote_correct = [], []
    for start in range(0, x.shape[0], batch_size):
        xb = x_final[start:start + batch_size]
        logits = torch.stack([sap(xb) for _ in range(draws)])  # (draws, n, K)
        mean_pred = torch.softmax(logits, dim=-1).mean(0).argmax(1)
        votes = torch.nn.functional.one_hot(logits.argmax(-1), logits.shape[-1]).sum(0)
        mean_correct.append(mean_pred == y[start:start + batch_size])
        vote_correct.append(votes.argmax(1) == y[start:start + batch_size])
    out: Dict[str, Any] = {"draws": draws}
    for name, parts in (("mean_softmax", mean_correct), ("majority_vote", vote_correct)):
        correct = int(torch.cat(parts).sum())
        out[name] = {"accuracy": correct / x.shape[0], "ci95": list(clopper_pearson(correct, x.shape[0]))}
    return out


def _attack(settings: Dict[str, Any], eps: float) -> PGD:
    return PGD(distance="linf", eps=eps, steps=settings["steps"], step_size=settings["step_size"],
               loss=settings["loss"], update=settings["update"], kappa=None, early_stop=settings["early_stop"],
               start_from=settings.get("start_from"))


def run(row: RowSpec, ctx: RunContext) -> Dict[str, Any]:
    config = row.config
    x, y = common.test_set(ctx, row.dataset, ctx.examples(row.n_examples))
    sap, natural = zoo_sap.defended(ctx, config)
    results: Dict[str, Any] = {"clean_accuracy_guard": pipeline.guard_clean_accuracy(ctx, row, natural, x, y,
                                                                                     config["clean_floor"])}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(ctx.seed)  # SAP draws come from torch's global generator
        summaries: List[Dict[str, Any]] = []
        for label, settings, model in (("own_single_sample", config["own_attack"], sap),
                                       ("adaptive_eot", config["adaptive_attack"],
                                        EOT(sap, samples=config["adaptive_attack"]["samples"]))):
            summary, x_adv = pipeline.run_attack_keeping_x_adv(ctx, row, label, model, _attack(settings, row.eps),
                                                               x, y, predict=argmax_predictor(sap))  # one pass
            # The vote's draws: a judge's stream of their own, apart from the attack's.
            vote_seed = derive_seed(ctx.seed, f"{row.name}/{label}/vote_judge")
            with random_stream(vote_seed, x.device):
                summary["other_prediction_rules"] = _vote_accuracies(sap, x, x_adv, y, row.eps, config["vote_draws"])
            summary["other_prediction_rules"]["judge_seed"] = vote_seed
            summaries.append(summary)
        own, adaptive = summaries
        results["undefended_clean_accuracy"] = pipeline.clean_accuracy(natural, x, y)
        # Control: the same attack on the network without SAP. What it leaves is the smoke budget's
        # (and this attack's) residual, not SAP's.
        results["undefended_same_attack"] = pipeline.run_attack(ctx, row, "undefended_same_attack", natural,
                                                                _attack(config["adaptive_attack"], row.eps), x, y)
    rules = adaptive["other_prediction_rules"]
    ctx.log(f"  adaptive under mean softmax of {rules['draws']}: {rules['mean_softmax']['accuracy']:.3f}, "
            f"majority vote: {rules['majority_vote']['accuracy']:.3f}")
    return {
        "clean_accuracy": own["clean_accuracy"],
        "own_attack_accuracy": own["accuracy"],
        "own_attack_ci95": own["ci95"],
        "adaptive_accuracy": adaptive["accuracy"],
        "adaptive_ci95": adaptive["ci95"],
        "attacks": {"own": own, "adaptive": adaptive},
        **results,
    }
