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

import time
from typing import Any, Dict

from torch import nn

from obfgrad.attacks import BPDA, PGD, LatentAttack, TransferAttack
from obfgrad.zoo import common
from obfgrad.zoo import defensegan as zoo_defensegan
from reproduce import choices, pipeline
from reproduce.spec import RowSpec, RunContext, zoo_builder


def spec(profile: str, dry_run: bool = False) -> RowSpec:
    config = zoo_defensegan.config(profile, dry_run)
    paper = profile == "paper"
    projection = config["projection"]
    return RowSpec(
        name="defensegan",
        takes_weights=True,  # --weights ROW=FILE replaces the trained classifier
        defense="Samangouei et al. (2018), Defense-GAN",
        dataset=zoo_defensegan.dataset(profile),
        distance=zoo_defensegan.DISTANCE,
        eps=zoo_defensegan.EPS,
        paper_dataset="MNIST",
        paper_bound="0.005 (ℓ2)",
        paper_accuracy=0.55,
        paper_note="** the principle (on-manifold adversarial examples) gives 0%; the imperfect projection 55%",
        n_examples=100,
        config=config,
        choices=choices.of("defensegan", profile, projection_steps=projection["steps"],
                           projection_restarts=projection["restarts"]),
        # The eps curve's budget (its EOT/projection steps dominate the curve's time).
        curve=None if paper else {"examples": 50, "steps": 10},
        run=run,
        build_defense=zoo_builder(zoo_defensegan.build),
        variants=zoo_defensegan.VARIANTS,
    )



def _pgd(settings: Dict[str, Any], eps: float) -> PGD:
    return PGD(distance="l2_per_value", eps=eps, steps=settings["steps"], step_size=settings["step_size"],
               loss=settings["loss"], random_start=False, kappa=None, early_stop=True)


def run(row: RowSpec, ctx: RunContext) -> Dict[str, Any]:
    config = row.config
    x, y = common.test_set(ctx, row.dataset, ctx.examples(row.n_examples))
    g, projection, classifier = zoo_defensegan.defended(ctx, config)
    guard = pipeline.guard_clean_accuracy(ctx, row, classifier, x, y, config["clean_floor"])
    defended = nn.Sequential(projection, classifier).eval()

    started = time.perf_counter()
    reconstruction = projection(x)
    per_image = (time.perf_counter() - started) / x.shape[0]
    reconstruction_l2 = (reconstruction - x).flatten(1).norm(dim=1)
    ctx.log(f"  projection: {per_image * 1000:.0f} ms per image; median ||G(z*) - x||_2 "
            f"{float(reconstruction_l2.median()):.2f}")

    own = pipeline.run_attack(ctx, row, "own_transfer_pgd_l2", defended,
                              TransferAttack(_pgd(config["own_attack"], row.eps), classifier), x, y)
    bpda = pipeline.run_attack(ctx, row, "adaptive_bpda_projection", nn.Sequential(BPDA(projection), classifier).eval(),
                               _pgd(config["adaptive_attack"], row.eps), x, y, predict=lambda v: defended(v).argmax(1))
    latent = LatentAttack(g, **config["latent_attack"], seed=ctx.seed)
    perfect = pipeline.run_attack(ctx, row, "reparameterization_perfect_projection", classifier, latent, x, y)
    undefended = pipeline.run_attack(ctx, row, "undefended_classifier_pgd_l2", classifier,
                                     _pgd(config["own_attack"], row.eps), x, y)
    return {
        "clean_accuracy": own["clean_accuracy"],
        "own_attack_accuracy": own["accuracy"],
        "own_attack_ci95": own["ci95"],
        "adaptive_accuracy": bpda["accuracy"],
        "adaptive_ci95": bpda["ci95"],
        "attacks": {"own_transfer": own, "adaptive_bpda": bpda, "reparameterization_perfect_projection": perfect,
                    "undefended_classifier": undefended},
        "perfect_projection_accuracy": perfect["accuracy"],
        "perfect_projection_ci95": perfect["ci95"],
        "projection_seconds_per_image": round(per_image, 4),
        "median_reconstruction_l2": round(float(reconstruction_l2.median()), 4),
        "undefended_clean_accuracy": undefended["clean_accuracy"],
        "clean_accuracy_guard": guard,
    }
