"""Row 2: Ma et al. (2018), local intrinsic dimensionality (LID) detector, CIFAR-10, 0.031 l-inf, 5%.

Defense: a logistic-regression detector on LID features (k = 20, minibatches of 100, one LID per
layer of the classifier), trained on clean, noisy and CW-L2 adversarial examples (the authors'
``lid_cifar_cw-l2_20`` features; protocol.md row 2). An example counts as robust if the
classifier is still right *or* the detector flags it.

Own evaluation: the detector's ROC-AUC and detection rates on held-out CW-L2 examples (the
attack it was trained against), and the accuracy under that attack with detection counted.
Adaptive (Athalye et al., Sec. 5.4.1): "PGD with high confidence" that ignores the detector: CW
margin without floor, Adam on sign(grad) with lr 1/255 at 8/255 (lr = eps/8), 100 steps, no
early stop, and the same LID features (adversarial minibatch measured against its clean one).
"""

from __future__ import annotations

from typing import Any, Dict

import torch

from obfgrad.atomic import atomic_write_json
from obfgrad.defenses import lid_features
from obfgrad.defenses.lid import roc_auc
from obfgrad.eval import accuracy_summary, correct_or_detected, judged_inputs
from obfgrad.fingerprint import file_sha256
from obfgrad.zoo import lid as zoo_lid
from reproduce import choices, distributed, paper_entries, paper_plans
from reproduce.evaluation import Evaluation, pgd_of
from reproduce.spec import RowSpec, RunContext, table1, zoo_fields


def spec(profile: str, dry_run: bool = False) -> RowSpec:
    config = zoo_lid.config(profile, dry_run)
    paper = profile == "paper"
    return RowSpec(
        name="lid",
        work_plan=paper_plans.lid, fidelity=paper_entries.LID,
        takes_weights=True,  # --weights ROW=FILE replaces the trained classifier
        defense="Ma et al. (2018), local intrinsic dimensionality",
        **zoo_fields(zoo_lid, profile, config),
        **table1("CIFAR-10", "0.031 (ℓ∞)", 0.05),
        n_examples=1000 if paper else 400,
        choices=choices.of("lid", profile),
        setup=setup,
        evaluations=(
            # Own evaluation: the detector against the (unbounded) CW-L2 attack it was trained on.
            Evaluation("own_cw_l2", "own", "own", judge=detector_judge, distance="l2", eps=1e6,
                       attack=lambda row, ctx, setup: zoo_lid.cw(row.config["detector_attack"])),
            Evaluation("adaptive_high_confidence_pgd", "adaptive", "adaptive", judge=detector_judge,
                       attack=pgd_of("adaptive_attack")),
        ),
        report=report,
    )


def setup(row: RowSpec, ctx: RunContext, x, y) -> Dict[str, Any]:
    """The classifier, the detector trained on its own CW-L2 examples, and the clean features of x."""
    model = zoo_lid.classifier(ctx, row.config)
    detector, detector_info = zoo_lid.train_detector(ctx, row.config, model)
    lid_config = row.config["lid"]
    (clean_features,) = lid_features(model, x, [], k=lid_config["k"], batch_size=lid_config["batch_size"])
    return {"defended": model, "guard": model, "detector": detector, "detector_info": detector_info,
            "clean_features": clean_features}


def report(row: RowSpec, ctx: RunContext, setup: Dict[str, Any], summaries: Dict[str, Any]) -> Dict[str, Any]:
    own, adaptive = summaries["own_cw_l2"], summaries["adaptive_high_confidence_pgd"]
    return {"clean_accuracy": adaptive["classifier_only"]["clean_accuracy"],
            "detection_rate_clean": adaptive["detection_rate_clean"],
            "detection_rate_adversarial": adaptive["detection_rate_adversarial"],
            "own_roc_auc": own["roc_auc_clean_vs_adversarial"],
            "own_detection_rate_adversarial": own["detection_rate_adversarial"], "detector": setup["detector_info"]}


@torch.no_grad()
def _predict(model, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    return torch.cat([model(x[i:i + batch_size]).argmax(1) for i in range(0, x.shape[0], batch_size)])


@torch.no_grad()
def detector_judge(row: RowSpec, ctx: RunContext, setup: Dict[str, Any], evaluation: Evaluation, x, y, x_adv,
                   classifier_summary: Dict[str, Any]) -> Dict[str, Any]:
    """Robust = correct or flagged (:func:`obfgrad.eval.correct_or_detected`); detection rates; ROC-AUC
    of clean vs adversarial scores. The LID features of x_adv are measured against its clean minibatch."""
    model, detector, label = setup["defended"], setup["detector"], evaluation.label
    lid_config = row.config["lid"]
    x_final = judged_inputs(x, x_adv, evaluation.distance or row.distance, evaluation.eps or row.eps)
    (adv_features,) = lid_features(model, x, [x_final], k=lid_config["k"], batch_size=lid_config["batch_size"])[1:]
    clean_scores, adv_scores = detector.score(setup["clean_features"]), detector.score(adv_features)
    flagged = adv_scores >= detector.threshold
    correct = (_predict(model, x_final) == y).cpu().numpy()
    n = int(x.shape[0])
    summary = {
        **accuracy_summary(correct_or_detected(torch.from_numpy(correct), torch.from_numpy(flagged))),
        "classifier_accuracy": float(correct.mean()),
        "detection_rate_adversarial": float(flagged.mean()),
        "detection_rate_clean": float((clean_scores >= detector.threshold).mean()),
        "roc_auc_clean_vs_adversarial": roc_auc(clean_scores, adv_scores),
        "n": n,
    }
    path = ctx.results_dir / "records" / f"{row.name}.{label}.detector.json"
    if distributed.is_main():  # every rank holds the same records (torchrun); one writes them
        atomic_write_json(path, {"row": row.name, "attack": label, **summary,
                                 "records": [{"index": i, "correct": bool(c), "flagged": bool(f), "score": float(s)}
                                             for i, (c, f, s) in enumerate(zip(correct, flagged, adv_scores))]})
    summary["detector_records"] = str(path)
    summary["detector_records_sha256"] = file_sha256(path) if distributed.is_main() else None
    ctx.log(f"  {label:<28} robust (correct or flagged) {summary['accuracy']:.3f}; detected: adversarial "
            f"{summary['detection_rate_adversarial']:.3f}, clean {summary['detection_rate_clean']:.3f}; "
            f"AUC {summary['roc_auc_clean_vs_adversarial']:.3f}")
    return {**summary, "classifier_only": classifier_summary}
