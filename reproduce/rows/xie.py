"""Row 5: Xie et al. (2018), randomization, ImageNet, 0.031 l-inf, 0%*.

The defense resizes the image to a random r x r, r in [299, 331), pads it at a random position to
331 x 331 with 0.5, and (the repo's InceptionV3 wrapper) resizes it back to 299; then a naturally
trained InceptionV3 classifies it (see :class:`obfgrad.defenses.RandomResizePad`).

Own evaluation (Xie et al.'s "vanilla" scenario): adversarial examples of the undefended
classifier (10-step l-inf PGD, iterative FGSM), judged through the randomized defense.
Adaptive (Athalye et al., protocol.md row 5): EOT over 30 draws of the randomization per step,
gradient steps on the mean cross-entropy, clipped to the l-inf ball and [0, 1]. The paper counts
an attack as successful only if the example is misclassified 10 times out of 10, so the row's
adaptive accuracy is the fraction of examples some of 10 fresh draws still classify correctly;
the own evaluation is judged by the same rule (the verdict compares like with like), and both
single-draw accuracies are kept beside them.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

import torch

from obfgrad.attacks import EOT, PGD, TransferAttack
from obfgrad.defenses import TransformedClassifier
from obfgrad.eval import (
    accuracy_summary,
    accuracy_vs_eps,
    argmax_predictor,
    correct_in_any_draw,
    derive_seed,
    random_targets,
)
from obfgrad.eval.confidence import stronger_attack_comparison
from obfgrad.zoo import common, imagenet
from obfgrad.zoo import xie as zoo_xie
from reproduce import choices, paper_entries, paper_plans, pipeline
from reproduce.evaluation import config_pgd
from reproduce.spec import RowSpec, RunContext, imagenet_fields, table1, zoo_fields


def spec(profile: str, dry_run: bool = False) -> RowSpec:
    config = zoo_xie.config(profile, dry_run)
    return RowSpec(
        name="xie",
        work_plan=paper_plans.xie, fidelity=paper_entries.XIE,
        **imagenet_fields(profile),  # the paper profile: --weights for InceptionV3, 1000 images, targeted
        defense="Xie et al. (2018), randomization",
        **zoo_fields(zoo_xie, profile, config),
        **table1("ImageNet", "0.031 (ℓ∞)", 0.0,
                 "*: Xie et al. also propose ensemble adversarial training; the defense alone is reported."),
        choices=choices.of("xie", profile),
        run=run,
    )



def judge_seed(ctx: RunContext, row: RowSpec) -> int:
    """The seed of the 10-of-10 judge's draws: its own stream, apart from every attack's (the own and
    the adaptive evaluation are judged on the same draws: like with like)."""
    return derive_seed(ctx.seed, f"{row.name}/10_of_10/judge")


def _any_draw(ctx: RunContext, row: RowSpec, defended, x, y, x_adv: torch.Tensor,
              eps: Optional[float] = None) -> torch.Tensor:
    """Per example: some of the 10-of-10 judge's draws classifies ``x_adv`` correctly (Xie's rule,
    :func:`obfgrad.eval.correct_in_any_draw`, with the robustml rule at ``eps``)."""
    return correct_in_any_draw(defended, x, y, row.config["strict_draws"], judge_seed=judge_seed(ctx, row),
                               x_adv=x_adv, distance=row.distance, eps=row.eps if eps is None else eps)


def _strict_summary(ctx: RunContext, row: RowSpec, correct: torch.Tensor) -> Dict[str, Any]:
    return {**accuracy_summary(correct), "draws": row.config["strict_draws"], "judge_seed": judge_seed(ctx, row)}


def run(row: RowSpec, ctx: RunContext) -> Dict[str, Any]:
    config = row.config
    x, y = common.test_set(ctx, row.dataset, ctx.examples(row.n_examples))
    net = imagenet.classifier(ctx, row.config, row.name)
    guard = pipeline.guard_clean_accuracy(ctx, row, net, x, y, config["clean_floor"])
    targets = random_targets(y, common.num_classes(row.dataset), seed=ctx.seed) if row.targeted else None
    defended = TransformedClassifier(zoo_xie.transform(config), net)
    predict = argmax_predictor(defended)
    own_pgd = config_pgd(config["own_attack"], row.distance, row.eps, targeted=row.targeted, kappa=0.0)
    own, own_x_adv = pipeline.run_attack_keeping_x_adv(ctx, row, "own_transfer", defended,
                                                       TransferAttack(own_pgd, net), x, y, predict=predict,
                                                       targets=targets)
    # Like with like: the own evaluation is judged by the same 10-of-10 rule as the adaptive one.
    own_strict = _strict_summary(ctx, row, _any_draw(ctx, row, defended, x, y, own_x_adv))
    adaptive, x_adv = pipeline.run_attack_keeping_x_adv(ctx, row, "adaptive_eot",
                                                        zoo_xie.adaptive_model(config, defended, ctx),
                                                        _adaptive_pgd(row, row.eps), x, y, predict=predict,
                                                        targets=targets)
    strict = _strict_summary(ctx, row, _any_draw(ctx, row, defended, x, y, x_adv))
    ctx.log(f"  {'adaptive, 10 of 10 draws':<28} accuracy {strict['accuracy']:.3f} "
            f"[{strict['ci95'][0]:.3f}, {strict['ci95'][1]:.3f}]")
    sweep = _strict_eps_sweep(ctx, row, defended, x, y, targets, predict) if config["strict_eps_sweep"] else []
    control = (_stronger_attack_control(ctx, row, defended, (x, y, targets), x_adv, predict, strict["accuracy"])
               if config.get("stronger_attack_control") else None)
    clean_any = correct_in_any_draw(defended, x, y, config["strict_draws"], judge_seed=judge_seed(ctx, row))
    return {
        "clean_accuracy": own["clean_accuracy"],
        "own_attack_accuracy": own_strict["accuracy"],
        "own_attack_ci95": own_strict["ci95"],
        "own_single_draw_accuracy": own["accuracy"],
        "own_single_draw_ci95": own["ci95"],
        "adaptive_accuracy": strict["accuracy"],
        "adaptive_ci95": strict["ci95"],
        "adaptive_single_draw_accuracy": adaptive["accuracy"],
        "adaptive_single_draw_ci95": adaptive["ci95"],
        "clean_accuracy_any_draw": accuracy_summary(clean_any)["accuracy"],
        "attacks": {"own": own, "own_10_of_10": own_strict, "adaptive": adaptive, "adaptive_10_of_10": strict},
        "adaptive_10_of_10_eps_sweep": sweep,
        **({"control": control} if control is not None else {}),
        "clean_accuracy_guard": guard,
    }


def _adaptive_pgd(row: RowSpec, eps: float) -> PGD:
    settings = row.config["adaptive_attack"]
    return config_pgd(settings, row.distance, eps, step_size=settings["step_size"] * eps / row.eps,
                      targeted=row.targeted, kappa=0.0)


def _strict_eps_sweep(ctx: RunContext, row: RowSpec, defended, x, y, targets, predict) -> List[Dict[str, Any]]:
    """The adaptive attack (step size scaled with the bound) and the 10-of-10 rule at larger bounds,
    through :func:`obfgrad.eval.accuracy_vs_eps`."""
    settings = row.config["strict_eps_sweep"]
    n = min(settings["examples"], x.shape[0])
    labels = {row.eps * factor: f"adaptive_eot.eps_x{factor:g}" for factor in settings["eps_factors"]}
    evaluator = pipeline.recording_evaluator(ctx, row, labels.__getitem__, None if targets is None else targets[:n])
    curve = accuracy_vs_eps(defended, x[:n], y[:n], distance=row.distance, eps_grid=list(labels), predict=predict,
                            attack_model=zoo_xie.adaptive_model(row.config, defended, ctx),
                            attack=lambda eps: _adaptive_pgd(row, eps), evaluator=evaluator,
                            judge=lambda xs, x_adv, ys, eps: _any_draw(ctx, row, defended, xs, ys, x_adv, eps))
    sweep = []
    for eps, summary, correct in zip(curve.eps, evaluator.summaries, curve.verdicts):
        strict = _strict_summary(ctx, row, correct)
        ctx.log(f"  {f'10 of 10 at eps {eps:.3g}':<28} accuracy {strict['accuracy']:.3f} (n = {n})")
        sweep.append({"eps": eps, "n": n, "single_draw_accuracy": summary["accuracy"], "accuracy_10_of_10": strict})
    return sweep


CONTROL_LABEL = "adaptive_eot.stronger_control"


def _stronger_attack_control(ctx: RunContext, row: RowSpec, defended, data, x_adv_main: torch.Tensor, predict,
                             residual: float) -> Dict[str, Any]:
    """Is the 10-of-10 residual an attack that is stuck, or robustness of the defended model at this eps?

    The first examples are attacked again at the same eps by a stronger attack (more EOT draws, more and
    finer steps, a random start) on a fresh seed (its own attack stream, apart from the main attack's and
    every judge's); both attacks' examples are judged on the same 10-of-10 draws, so the comparison is
    paired: a stuck attack shows as examples the stronger attack breaks and the main one does not.
    """
    settings = row.config["stronger_attack_control"]
    threshold = settings["when_residual_above"]
    if threshold is not None and residual <= threshold:
        return {"name": "stronger_attack_same_eps",
                "skipped": f"the 10-of-10 residual {residual:.1%} is at most {threshold:.0%}: nothing to explain"}
    x, y, targets = data
    n = min(settings["examples"], x.shape[0])
    x, y, x_adv_main = x[:n], y[:n], x_adv_main[:n]
    targets = None if targets is None else targets[:n]
    adaptive = row.config["adaptive_attack"]
    attack = PGD(distance="linf", eps=row.eps, steps=settings["steps"],
                 step_size=settings["step_size_over_eps"] * row.eps, loss=adaptive["loss"], targeted=row.targeted,
                 update=adaptive["update"], early_stop=False, random_start=settings["random_start"])
    summary, x_adv = pipeline.run_attack_keeping_x_adv(ctx, row, CONTROL_LABEL,
                                                       EOT(defended, samples=settings["eot_samples"]), attack,
                                                       x, y, predict=predict, targets=targets)
    # the same judge draws for both attacks
    main_correct = _any_draw(ctx, row, defended, x, y, x_adv_main)
    control_correct = _any_draw(ctx, row, defended, x, y, x_adv)
    control = {"name": "stronger_attack_same_eps", "n": n, "settings": dict(settings), "attack": summary,
               "accuracy_10_of_10": _strict_summary(ctx, row, control_correct),
               "main_attack_10_of_10_same_examples": _strict_summary(ctx, row, main_correct),
               **stronger_attack_comparison(main_correct, control_correct)}
    ctx.log(f"  {'control: stronger attack':<28} 10 of 10 {control['accuracy_10_of_10']['accuracy']:.3f} vs main "
            f"{control['main_attack_10_of_10_same_examples']['accuracy']:.3f} on the same {n} "
            f"(p = {control['paired_sign_test_p']:.2g}): {control['reading']}")
    return control
