"""Row 7: Samangouei et al. (2018), Defense-GAN, MNIST, 0.005 l2, 55%**.

The defense projects the input onto a WGAN-GP generator's range by gradient descent (L = 200
steps, R = 10 restarts) and classifies the projection (``obfgrad.defenses.defensegan``).

* Own evaluation (the defense's): an attack on the classifier alone with the projection ignored
  (l2 PGD on the undefended classifier, transferred through the projection).
* Attack B (the number in Table 1): BPDA through the real projection (identity backward,
  ``G(z*(x)) ~ x``), l2-bounded steps from the clean image.
* Attack A (the ** footnote): the reparameterization attack ``x_adv = G(z)`` in latent space, judged
  against a *perfect* projection, i.e. the classifier on ``G(z)`` itself (``G(z)`` is on the range,
  a perfect projection returns it unchanged). The principle gives 0% accuracy.

The l2 bound uses Defense-GAN's per-value normalisation (protocol.md: ``||delta||_2 / (C·H·W)``;
0.005 on 28×28 is ``||delta||_2 <= 3.92``); Fashion-MNIST is 28×28 too, so the smoke bound is the
paper's.
"""

from __future__ import annotations

from typing import Any, Dict

from torch import nn

from obfgrad.attacks import BPDA, LatentAttack, TransferAttack
from obfgrad.zoo import defensegan as zoo_defensegan
from reproduce import choices, paper_entries, paper_plans
from reproduce.evaluation import Evaluation, pgd_of
from reproduce.spec import RowSpec, RunContext, table1, zoo_fields


def spec(profile: str, dry_run: bool = False) -> RowSpec:
    config = zoo_defensegan.config(profile, dry_run)
    paper = profile == "paper"
    projection = config["projection"]
    return RowSpec(
        name="defensegan",
        work_plan=paper_plans.defensegan, fidelity=paper_entries.DEFENSEGAN,
        takes_weights=True,  # --weights ROW=FILE replaces the trained classifier
        defense="Samangouei et al. (2018), Defense-GAN",
        **zoo_fields(zoo_defensegan, profile, config),
        **table1("MNIST", "0.005 (ℓ2)", 0.55,
                 "** the principle (on-manifold adversarial examples) gives 0%; the imperfect projection 55%"),
        n_examples=100,
        choices=choices.of("defensegan", profile, projection_steps=projection["steps"],
                           projection_restarts=projection["restarts"]),
        # The eps curve's budget (its EOT/projection steps dominate the curve's time).
        curve=None if paper else {"examples": 50, "steps": 10},
        setup=setup,
        evaluations=(
            Evaluation("own_transfer_pgd_l2", "own_transfer", "own", attack=lambda row, ctx, setup: TransferAttack(
                pgd_of("own_attack")(row, ctx), setup["classifier"])),
            Evaluation("adaptive_bpda_projection", "adaptive_bpda", "adaptive", model="bpda", predict="defended",
                       attack=pgd_of("adaptive_attack")),
            Evaluation("reparameterization_perfect_projection", "reparameterization_perfect_projection", "attack",
                       model="classifier", attack=lambda row, ctx, setup: LatentAttack(
                           setup["generator"], **row.config["latent_attack"], seed=ctx.seed)),
            Evaluation("undefended_classifier_pgd_l2", "undefended_classifier", "attack", model="classifier",
                       attack=pgd_of("own_attack")),
        ),
        report=report,
    )



def setup(row: RowSpec, ctx: RunContext, x, y) -> Dict[str, Any]:
    """The generator, the projection and the classifier; the projection of the clean images (a
    randomized defense: drawn here, before any attack, as the row always did)."""
    g, projection, classifier = zoo_defensegan.defended(ctx, row.config)
    reconstruction_l2 = (projection(x) - x).flatten(1).norm(dim=1)
    ctx.log(f"  projection: median ||G(z*) - x||_2 {float(reconstruction_l2.median()):.2f}")
    return {"generator": g, "classifier": classifier, "guard": classifier,
            "defended": nn.Sequential(projection, classifier).eval(),
            "bpda": nn.Sequential(BPDA(projection), classifier).eval(),
            "median_reconstruction_l2": round(float(reconstruction_l2.median()), 4)}


def report(row: RowSpec, ctx: RunContext, setup: Dict[str, Any], summaries: Dict[str, Any]) -> Dict[str, Any]:
    perfect = summaries["reparameterization_perfect_projection"]
    return {"perfect_projection_accuracy": perfect["accuracy"], "perfect_projection_ci95": perfect["ci95"],
            "median_reconstruction_l2": setup["median_reconstruction_l2"],
            "undefended_clean_accuracy": summaries["undefended_classifier_pgd_l2"]["clean_accuracy"]}
