"""Row 6: Song et al. (2018), PixelDefend, CIFAR-10, 0.031 l-inf, 9%*.

The defense purifies each input with a PixelCNN (greedy, sub-pixel by sub-pixel, within
eps_defend of the input; ``obfgrad.defenses.pixeldefend``) and classifies the result with a
naturally trained classifier.

Own evaluation (the defense's): attacks that ignore the purifier. PGD on the undefended
classifier, transferred through purification (the notebook: "the transfer attack was undone by
purification"). Adaptive (the paper's break): BPDA with the identity, the gradient of the
classifier at purify(x_adv) applied to x_adv, sign steps, stopping once misclassified
(protocol.md row 6: step 0.5/255, up to 100 steps in robustml).
"""

from __future__ import annotations

from typing import Any, Dict, List

import torch
from torch import nn

from obfgrad.attacks import BPDA, PGD, TransferAttack
from obfgrad.defenses.pixeldefend import PixelDefend
from obfgrad.zoo import common
from obfgrad.zoo import pixeldefend as zoo_pixeldefend
from reproduce import choices, paper_entries, paper_plans, pipeline
from reproduce.spec import RowSpec, RunContext, zoo_builder


def spec(profile: str, dry_run: bool = False) -> RowSpec:
    config = zoo_pixeldefend.config(profile, dry_run)
    paper = profile == "paper"
    return RowSpec(
        name="pixeldefend",
        work_plan=paper_plans.pixeldefend, fidelity=paper_entries.PIXELDEFEND,
        takes_weights=True,  # --weights ROW=FILE replaces the trained classifier
        defense="Song et al. (2018), PixelDefend",
        dataset=zoo_pixeldefend.dataset(profile),
        distance=zoo_pixeldefend.DISTANCE,
        eps=config["eps"],
        paper_dataset="CIFAR-10",
        paper_bound="0.031 (ℓ∞)",
        paper_accuracy=0.09,
        paper_note="* the paper also evaluates PixelDefend with adversarial training; here the defense alone",
        claimed_accuracy=None if paper else zoo_pixeldefend.SONG_FASHION_MNIST_CLAIM,
        n_examples=100 if paper else 50,
        config=config,
        choices=choices.of("pixeldefend", profile, purification_extent=(
            f"Dry run: purification stops after the first {zoo_pixeldefend.DRY_RUN_POSITIONS} pixels (max_positions)."
            if dry_run else "Purification covers every pixel.")),
        # The eps curve's budget: each attack step purifies every image (784 sequential PixelCNN calls).
        curve={"examples": 10, "steps": 2} if not paper else {"examples": 100, "steps": 10},
        run=run,
        build_defense=zoo_builder(zoo_pixeldefend.build),
    )



def _undone(x: torch.Tensor, x_adv: torch.Tensor, purified: torch.Tensor,
            purified_adv: torch.Tensor) -> Dict[str, Any]:
    """Of the values the adaptive attack changed, the fraction that purification puts back where it
    puts the clean image's (the attack's change there is erased), on black clean values (the
    background) and on the others: where the attack can still act."""
    levels = lambda v: (v * 255).round()  # noqa: E731
    changed = levels(x_adv) != levels(x)
    erased = levels(purified_adv) == levels(purified)
    black = levels(x) == 0
    out: Dict[str, Any] = {"attacked_values": int(changed.sum())}
    for name, where in (("black", changed & black), ("other", changed & ~black)):
        count = int(where.sum())
        out[f"attacked_{name}_values"] = count
        out[f"erased_fraction_{name}"] = round(float((erased & where).sum()) / count, 4) if count else None
    return out


def _reach_control(ctx: RunContext, config: Dict[str, Any], purifier: PixelDefend, classifier: nn.Module,
                   x: torch.Tensor, y: torch.Tensor, eps: float, bpda_correct: List[bool]) -> Dict[str, Any]:
    """zoo.pixeldefend.reach_control beside BPDA on the same images (smoke, single-channel only)."""
    if not config.get("reach_control") or x.shape[1] != 1:
        return {}
    out = zoo_pixeldefend.reach_control(purifier, classifier, x, y, eps, config["reach_control"]["steps"],
                                        bpda_correct)
    ctx.log(f"  reach control: the classifier keeps {out['classifier_within_reach_accuracy']:.0%} within the "
            f"purifier's reach (BPDA {out['bpda_accuracy']:.0%}; only the control breaks "
            f"{out['broken_only_by_control']}, only BPDA {out['broken_only_by_bpda']}, p = "
            f"{out['paired_sign_test_p']:.2g}); movable: {out['movable_fraction_other']:.0%} of non-black pixels, "
            f"{out['movable_fraction_black']:.1%} of black; mean reach {out['mean_reach_levels_other']} of "
            f"{out['attack_range_levels']} levels")
    return out


def run(row: RowSpec, ctx: RunContext) -> Dict[str, Any]:
    config = row.config
    x, y = common.test_set(ctx, row.dataset, ctx.examples(row.n_examples))
    purifier, classifier, bpd = zoo_pixeldefend.defended(ctx, config)
    guard = pipeline.guard_clean_accuracy(ctx, row, classifier, x, y, config["clean_floor"])
    defended = nn.Sequential(purifier, classifier).eval()

    purified = purifier(x)  # (its time per image: benchmarks/bench_pixeldefend.py)
    purify_stats = dict(purifier.last_stats)
    ctx.log(f"  purification: {purify_stats}")

    own_settings = config["own_attack"]
    own_pgd = PGD(distance="linf", eps=row.eps, steps=own_settings["steps"], step_size=own_settings["step_size"],
                  loss=own_settings["loss"], random_start=own_settings["random_start"], kappa=None,
                  seed=ctx.seed)
    own = pipeline.run_attack(ctx, row, "own_transfer_pgd", defended, TransferAttack(own_pgd, classifier), x, y)
    adaptive_settings = config["adaptive_attack"]
    bpda_pgd = PGD(distance="linf", eps=row.eps, steps=adaptive_settings["steps"],
                   step_size=adaptive_settings["step_size"], loss=adaptive_settings["loss"], random_start=False,
                   kappa=None, early_stop=True)
    adaptive_model = nn.Sequential(BPDA(purifier), classifier).eval()
    adaptive, x_adv = pipeline.run_attack_keeping_x_adv(ctx, row, "adaptive_bpda_identity", adaptive_model, bpda_pgd,
                                                        x, y, predict=lambda v: defended(v).argmax(1))
    undefended = pipeline.run_attack(ctx, row, "undefended_classifier_pgd", classifier, own_pgd, x, y)
    reach = _reach_control(ctx, config, purifier, classifier, x, y, row.eps,
                           (defended(x_adv).argmax(1) == y).tolist())
    return {
        "clean_accuracy": own["clean_accuracy"],
        "own_attack_accuracy": own["accuracy"],
        "own_attack_ci95": own["ci95"],
        "adaptive_accuracy": adaptive["accuracy"],
        "adaptive_ci95": adaptive["ci95"],
        "attacks": {"own_transfer": own, "adaptive_bpda": adaptive, "undefended_classifier": undefended},
        "pixelcnn_test_bits_per_dim": None if bpd is None else round(bpd, 4),
        "purification_stats": purify_stats,
        # How far purification is from the identity BPDA assumes, next to the attack's own size.
        "identity_gap": {"purify_clean_mean_abs_change": round(float((purified - x).abs().mean()), 5),
                         "purify_adversarial_mean_abs_change": round(float((purifier(x_adv) - x_adv).abs().mean()), 5),
                         "perturbation_mean_abs": round(float((x_adv - x).abs().mean()), 5),
                         **_undone(x, x_adv, purified, purifier(x_adv))},
        **({"reach_control": reach} if reach else {}),
        "undefended_clean_accuracy": undefended["clean_accuracy"],
        **({"claimed_accuracy": {"song_et_al_fashion_mnist": row.claimed_accuracy, "own_evaluation": own["accuracy"],
                                 "source": "arXiv 1710.10766 abstract: strongest attack 63% -> 84% on Fashion MNIST"}}
           if row.claimed_accuracy is not None else {}),
        "clean_accuracy_guard": guard,
    }
