"""The steps rows share: running one attack through the evaluator into a summary plus per-example
records, and the clean-accuracy guard. Test data and classifiers come from ``obfgrad.zoo.common``."""

from __future__ import annotations

import time
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

import torch

from obfgrad.atomic import atomic_write_json
from obfgrad.eval import EvalResult, clopper_pearson, derive_seed, evaluate
from obfgrad.fingerprint import file_sha256
from reproduce import distributed
from reproduce.spec import RowSpec, RunContext


def run_attack(ctx: RunContext, spec: RowSpec, label: str, model: Callable, attack: Any,
               x: torch.Tensor, y: torch.Tensor, *, predict: Optional[Callable] = None,
               eps: Optional[float] = None, distance: Optional[str] = None,
               targets: Optional[torch.Tensor] = None) -> Dict[str, Any]:
    """Evaluate ``attack`` on ``model`` (``predict`` judges the result; default: ``model``'s
    argmax); write per-example records to ``results/records/<row>.<label>.json``; return the
    summary that goes into the row's result. Under torchrun the batches are split across the
    ranks and every rank returns the merged summary (see ``reproduce.distributed``)."""
    return _run_attack(ctx, spec, label, model, attack, x, y, predict=predict, eps=eps, distance=distance,
                       targets=targets, keep_x_adv=False)[0]


def run_attack_keeping_x_adv(ctx: RunContext, spec: RowSpec, label: str, model: Callable, attack: Any,
                             x: torch.Tensor, y: torch.Tensor, *, predict: Optional[Callable] = None,
                             eps: Optional[float] = None, distance: Optional[str] = None,
                             targets: Optional[torch.Tensor] = None) -> Tuple[Dict[str, Any], torch.Tensor]:
    """:func:`run_attack`, plus the attack's ``x_adv`` of every example (N, C, H, W) (to judge it
    again under other rules); under torchrun gathered from all ranks."""
    summary, result = _run_attack(ctx, spec, label, model, attack, x, y, predict=predict, eps=eps,
                                  distance=distance, targets=targets, keep_x_adv=True)
    return summary, result.x_adv


def recording_evaluator(ctx: RunContext, spec: RowSpec, label: Callable[[float], str],
                        targets: Optional[torch.Tensor] = None) -> Callable[..., EvalResult]:
    """An ``evaluator`` for :func:`obfgrad.eval.accuracy_vs_eps`: each budget runs as :func:`run_attack`
    (records ``<row>.<label(eps)>.json``, the row's streams, the log line); the summaries are kept,
    in grid order, in the evaluator's ``summaries`` list."""
    summaries: List[Dict[str, Any]] = []

    def evaluator(model, attack, x, y, *, distance, eps, predict=None, keep_x_adv=False, **_ignored):
        summary, result = _run_attack(ctx, spec, label(eps), model, attack, x, y, predict=predict, eps=eps,
                                      distance=distance, targets=targets, keep_x_adv=keep_x_adv)
        summaries.append(summary)
        return result

    evaluator.summaries = summaries  # type: ignore[attr-defined]
    return evaluator


def stream_seeds(ctx: RunContext, spec: RowSpec, label: str) -> Dict[str, int]:
    """The attack's and the judge's seeds of one evaluation of a row, derived from the run seed and
    the evaluation's label (independent streams, :mod:`obfgrad.eval.streams`; recorded in the result)."""
    return {role: derive_seed(ctx.seed, f"{spec.name}/{label}/{role}") for role in ("attack", "judge")}


def _run_attack(ctx, spec, label, model, attack, x, y, *, predict, eps, distance, targets, keep_x_adv):
    started = time.perf_counter()
    seeds = stream_seeds(ctx, spec, label)
    result: EvalResult = evaluate(model, attack, x, y, distance=distance or spec.distance,
                                  eps=spec.eps if eps is None else eps, targets=targets,
                                  predict=predict, progress=ctx.progress is not False and distributed.is_main(),
                                  keep_x_adv=keep_x_adv, distributed=distributed.world() > 1,
                                  seed=seeds["attack"], judge_seed=seeds["judge"])
    seconds = time.perf_counter() - started
    records_path = ctx.results_dir / "records" / f"{spec.name}.{label}.json"
    records_sha256 = None
    if distributed.is_main():
        atomic_write_json(records_path, {"row": spec.name, "attack": label, "settings": repr(attack),
                                         **result.to_dict()})
        records_sha256 = file_sha256(records_path)  # a reused row checks its records against this
    summary = {
        "attack": repr(attack),
        "accuracy": result.robust_accuracy,
        "ci95": list(result.robust_ci95),
        "clean_accuracy": result.clean_accuracy,
        "attack_success_rate": result.attack_success_rate,
        "threat_model_violations": result.threat_model_violations,
        "n": result.n,
        "seconds": round(seconds, 2),
        "records": str(records_path),
        "records_sha256": records_sha256,
        "seeds": seeds,
    }
    ctx.log(f"  {label:<28} accuracy {summary['accuracy']:.3f} "
            f"[{summary['ci95'][0]:.3f}, {summary['ci95'][1]:.3f}]  ({seconds:.0f} s)")
    return summary, result


class ClassifierAccuracyError(RuntimeError):
    """A row's classifier is far less accurate on clean images than its recipe should make it: the
    row refuses to report (a wrongly loaded, scaled or trained model must never give a Table 1 line)."""


def guard_clean_accuracy(ctx: RunContext, spec: RowSpec, model: Callable, x: torch.Tensor, y: torch.Tensor,
                         floor: Mapping[str, Any]) -> Dict[str, Any]:
    """Check the clean accuracy of a row's classifier on the row's test images before any attack.

    Refuses (:class:`ClassifierAccuracyError`, naming the row, the accuracy and the floor with
    its source) when even the upper end of the exact 95% interval of the measured accuracy lies
    below ``floor["floor"]`` (``recipes.clean_floor``). A dry run's models are untrained: the
    guard is skipped there, and says so. Returns the record stored in the row's result."""
    if ctx.dry_run:
        ctx.log("  clean-accuracy guard skipped: dry run (untrained models)")
        return {"status": "skipped: dry run (untrained models)", **floor}
    with torch.no_grad():
        correct = sum(int((model(x[s:s + 256]).argmax(1) == y[s:s + 256]).sum()) for s in range(0, x.shape[0], 256))
    n = int(x.shape[0])
    low, high = clopper_pearson(correct, n)
    if high < floor["floor"]:
        raise ClassifierAccuracyError(
            f"row {spec.name}: the classifier's clean accuracy is {correct / n:.1%} ({correct} of {n} test images; "
            f"95% interval up to {high:.1%}), far below the {floor['floor']:.0%} its recipe should reach "
            f"({floor['source']}). Refusing to report: check the weights (--weights), their input scaling and "
            "the data.")
    ctx.log(f"  clean-accuracy guard: classifier {correct / n:.1%} on {n} test images (floor {floor['floor']:.0%})")
    return {"status": "passed", "accuracy": correct / n, "ci95": [low, high], "n": n, **floor}


def clean_accuracy(model: Callable, x: torch.Tensor, y: torch.Tensor, batch_size: int = 256) -> float:
    with torch.no_grad():
        correct = 0
        for start in range(0, x.shape[0], batch_size):
            correct += int((model(x[start:start + batch_size]).argmax(1) == y[start:start + batch_size]).sum())
    return correct / max(1, x.shape[0])
