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

import time
from typing import Any, Dict, List

import torch
from torch import nn

from obfgrad.attacks import BPDA, PGD, TransferAttack
from obfgrad.defenses.pixeldefend import PixelDefend, purify
from obfgrad.eval.confidence import clopper_pearson
from obfgrad.zoo import common
from obfgrad.zoo import pixeldefend as zoo_pixeldefend
from reproduce import pipeline
from reproduce.rows.xie import paired_sign_test
from reproduce.spec import RowSpec, RunContext, zoo_builder


def spec(profile: str, dry_run: bool = False) -> RowSpec:
    config = zoo_pixeldefend.config(profile, dry_run)
    paper = profile == "paper"
    return RowSpec(
        name="pixeldefend",
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
        choices=[
            ("PixelCNN++ at OpenAI's CIFAR size (nr_resnet 5, 160 filters, 10 logistics) trained by us: OpenAI's "
             "params_cifar.ckpt is TF1; all stages at full resolution (PixelCNN++ downsamples twice), no weight "
             "norm; 250 epochs (UNCONFIRMED)." if paper else zoo_pixeldefend.SMOKE_SETUP),
            "Within a pixel, each channel's 256-way distribution is the exact conditional given the channels "
            "already purified (mixture weights updated by their likelihood).",
            "Own evaluation = PGD (cross-entropy, 20 steps, random start) on the undefended classifier, "
            "transferred through purification. Adaptive = BPDA with the identity, sign steps from the clean image, "
            "early stop on misclassification " + ("(0.5/255 steps, at most 100: robustml)." if paper else
                                                  "(eps/5 steps, at most 20; measured at 50 images with the "
                                                  "40-filter PixelCNN: 38% after 20 steps, after 20 margin-loss "
                                                  "steps and after 40 steps of eps/10)."),
            *([] if paper else [
                "Control (ours, smoke): per pixel, the purified values a change of that pixel alone can reach "
                "(exact: its context is unchanged; obfgrad.defenses.pixeldefend.purification_reach); the bare "
                "classifier attacked with every pixel free within its reach (100 sign steps of a tenth of the "
                "range, cross-entropy, from the purified clean image), compared with BPDA example by example "
                "(exact McNemar test). Contexts are held fixed: a diagnostic, not a bound."]),
            f"Dry run: purification stops after the first {zoo_pixeldefend.DRY_RUN_POSITIONS} pixels "
            "(max_positions)." if dry_run else
            "Purification covers every pixel.",
            "n = first 100 CIFAR-10 test images (robustml)." if paper else "n = first 50 Fashion-MNIST test images.",
        ],
        # The eps curve's budget: each attack step purifies every image (784 sequential PixelCNN calls).
        curve={"examples": 10, "steps": 2} if not paper else {"examples": 100, "steps": 10},
        run=run,
        build_defense=zoo_builder(zoo_pixeldefend.build),
    )



def _purification_timing(purifier: PixelDefend, x: torch.Tensor, images: int) -> Dict[str, Any]:
    """Seconds per image of one purification: batched (incremental evaluation in float64, the
    default), batched with the previous scheme (one cropped float32 evaluation per pixel), and image
    by image, so the effect of batching and of incremental evaluation is measured on the row's model."""
    if images <= 0:
        return {}
    x = x[:images]
    timings: Dict[str, Any] = {"images": int(x.shape[0])}

    def seconds(fn) -> float:
        started = time.perf_counter()
        fn()
        return (time.perf_counter() - started) / x.shape[0]

    model, eps_defend = purifier.pixelcnn, purifier.eps_defend
    timings["batched_s_per_image"] = seconds(lambda: purify(model, x, eps_defend, purifier.max_positions))
    timings["batched_crop_float32_s_per_image"] = seconds(
        lambda: purify(model, x, eps_defend, purifier.max_positions, method="crop", dtype=torch.float32))
    timings["one_at_a_time_s_per_image"] = seconds(
        lambda: [purify(model, x[k:k + 1], eps_defend, purifier.max_positions) for k in range(x.shape[0])])
    return {key: round(value, 5) if isinstance(value, float) else value for key, value in timings.items()}


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
    """zoo.pixeldefend.reach_control beside the BPDA attack on the same images (smoke only), compared
    example by example (exact McNemar test): a stuck BPDA would show as examples only the control
    breaks."""
    if not config.get("reach_control") or x.shape[1] != 1:
        return {}
    out = zoo_pixeldefend.reach_control(purifier, classifier, x, y, eps, config["reach_control"]["steps"])
    correct = out.pop("classifier_within_reach_correct")
    accuracy, bpda_accuracy = sum(correct) / len(correct), sum(bpda_correct) / len(bpda_correct)
    only_control = sum(b and not c for b, c in zip(bpda_correct, correct))  # BPDA leaves, the control breaks
    only_bpda = sum(c and not b for b, c in zip(bpda_correct, correct))
    out.update({"classifier_within_reach_accuracy": accuracy,
                "classifier_within_reach_ci95": list(clopper_pearson(sum(correct), len(correct))),
                "bpda_accuracy": bpda_accuracy, "broken_only_by_control": only_control,
                "broken_only_by_bpda": only_bpda, "paired_sign_test_p": paired_sign_test(only_control, only_bpda)})
    ctx.log(f"  reach control: the classifier keeps {accuracy:.0%} within the purifier's reach "
            f"(BPDA {bpda_accuracy:.0%}; only the control breaks {only_control}, only BPDA {only_bpda}, "
            f"p = {out['paired_sign_test_p']:.2g}); movable pixels: {out['movable_fraction_other']:.0%} of non-black, "
            f"{out['movable_fraction_black']:.1%} of black; mean reach {out['mean_reach_levels_other']} of "
            f"{out['attack_range_levels']} levels")
    return out


def run(row: RowSpec, ctx: RunContext) -> Dict[str, Any]:
    config = row.config
    x, y = common.test_set(ctx, row.dataset, ctx.examples(row.n_examples))
    purifier, classifier, bpd = zoo_pixeldefend.defended(ctx, config)
    guard = pipeline.guard_clean_accuracy(ctx, row, classifier, x, y, config["clean_floor"])
    defended = nn.Sequential(purifier, classifier).eval()

    started = time.perf_counter()
    purified = purifier(x)
    per_image = (time.perf_counter() - started) / x.shape[0]
    purify_stats = dict(purifier.last_stats)
    ctx.log(f"  purification: {per_image * 1000:.0f} ms per image ({purify_stats})")
    purify_timing = _purification_timing(purifier, x, config["purify_timing_images"])
    if purify_timing:
        ctx.log("  purification ms/image: " + ", ".join(f"{key} {value * 1e3:.0f}" for key, value in
                                                        purify_timing.items() if key.endswith("_s_per_image")))

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
        "purification_seconds_per_image": round(per_image, 4),
        "purification_stats": purify_stats,
        # How far purification is from the identity BPDA assumes, next to the attack's own size.
        "identity_gap": {"purify_clean_mean_abs_change": round(float((purified - x).abs().mean()), 5),
                         "purify_adversarial_mean_abs_change": round(float((purifier(x_adv) - x_adv).abs().mean()), 5),
                         "perturbation_mean_abs": round(float((x_adv - x).abs().mean()), 5),
                         **_undone(x, x_adv, purified, purifier(x_adv))},
        "purification_timing": purify_timing,
        **({"reach_control": reach} if reach else {}),
        "undefended_clean_accuracy": undefended["clean_accuracy"],
        **({"claimed_accuracy": {"song_et_al_fashion_mnist": row.claimed_accuracy, "own_evaluation": own["accuracy"],
                                 "source": "arXiv 1710.10766 abstract: strongest attack 63% -> 84% on Fashion MNIST"}}
           if row.claimed_accuracy is not None else {}),
        "clean_accuracy_guard": guard,
    }
