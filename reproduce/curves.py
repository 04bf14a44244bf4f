"""The accuracy-vs-eps curve of a Table 1 row, for the figures (``results/figures/eps_curves.png``).

Generic over rows: it needs only the row's ``build_defense`` (:class:`reproduce.spec.DefenseBundle`).
The attack is :func:`obfgrad.eval.margin_pgd` at eps x {0, 0.25, 0.5, 1, 1.5, 2}, differentiating
the bundle's ``adaptive_model`` (BPDA/EOT-wrapped where the paper needs it) and judged by the
deployed ``model``: one draw per judgement for randomized defenses. It is a picture of the trend
with a modest budget, not the row's number: the table's adaptive accuracy comes from the row's
own, stronger attack.

The curve is stored in the row's result under ``"eps_curve"`` with the settings that made it; the
runner recomputes it only when those settings change (:func:`needs_curve`).
"""

from __future__ import annotations

import time
from typing import Any, Dict, Optional

import torch

from obfgrad.eval.eps_curve import accuracy_vs_eps
from obfgrad.eval.modes import eval_mode
from reproduce.spec import RowSpec, RunContext

EPS_MULTIPLES = (0.0, 0.25, 0.5, 1.0, 1.5, 2.0)

#: Examples and PGD steps per budget, by profile (``RowSpec.curve`` overrides them per row).
DEFAULT_BUDGET = {"smoke": {"examples": 50, "steps": 20}, "paper": {"examples": 100, "steps": 50}}
DRY_RUN_BUDGET = {"examples": 2, "steps": 2}
DRY_RUN_EPS_MULTIPLES = (0.0, 1.0)  # a dry run proves the path; two points keep CI's dry runs short

#: What a row's curve measures when it is not simply the defended model's accuracy.
NOTES = {
    "lid": "classifier accuracy (the LID detector is not applied; the table counts correct-or-flagged)",
    "guo": "input transformation: quilting (the row's build_defense default)",
}
#: The variant of a row with several (``result["transforms"][variant]``) that the curve measures.
VARIANTS = {"guo": "quilting"}


def curve_settings(spec: RowSpec, ctx: RunContext) -> Dict[str, Any]:
    """Examples, steps and budgets of the row's curve under this run (``--limit`` caps examples)."""
    if ctx.dry_run:
        budget = dict(DRY_RUN_BUDGET)
    else:
        budget = {**DEFAULT_BUDGET[ctx.profile], **(spec.curve or {})}
        budget["examples"] = ctx.examples(int(budget["examples"]))
    return {"examples": int(budget["examples"]), "steps": int(budget["steps"]),
            "eps_multiples": list(DRY_RUN_EPS_MULTIPLES if ctx.dry_run else EPS_MULTIPLES)}


def needs_curve(spec: RowSpec, ctx: RunContext, result: Dict[str, Any]) -> bool:
    """Whether the row has a curve to compute that ``result`` does not already hold."""
    if spec.build_defense is None:
        return False
    stored = result.get("eps_curve") or {}
    return stored.get("settings") != curve_settings(spec, ctx)


def row_eps_curve(spec: RowSpec, ctx: RunContext) -> Optional[Dict[str, Any]]:
    """The row's curve as stored in its result: eps, accuracy, n, steps, attack, judged, seconds
    (the attacks), build_seconds (``build_defense``), settings. None when the row has no ``build_defense``."""
    if spec.build_defense is None:
        return None
    settings = curve_settings(spec, ctx)
    torch.manual_seed(ctx.seed)  # the defense's own randomness: the same curve on a rerun
    started = time.perf_counter()
    bundle = spec.build_defense(spec, ctx, settings["examples"])
    build_seconds = time.perf_counter() - started
    x, y = bundle.x[:settings["examples"]], bundle.y[:settings["examples"]]
    with eval_mode(bundle.model, bundle.adaptive_model):  # the bundle's modules get their flags back
        curve = accuracy_vs_eps(bundle.model, x, y, distance=bundle.distance,
                                eps_grid=[m * bundle.eps for m in settings["eps_multiples"]],
                                steps=settings["steps"], attack_model=bundle.adaptive_model,
                                early_stop=not bundle.randomized)
    judged = "deployed model, one draw per judgement" if bundle.randomized else "deployed model"
    if spec.name in NOTES:
        judged += "; " + NOTES[spec.name]
    if spec.targeted:
        judged += "; untargeted (the table's attack is targeted)"
    adaptive = "the adaptive model (BPDA/EOT)" if bundle.adaptive_model is not None else "the model itself"
    ctx.log(f"  eps curve ({curve.n} examples, {curve.steps} steps): "
            + ", ".join(f"{a:.2f}" for a in curve.accuracy)
            + f"  ({curve.seconds:.0f} s + {build_seconds:.0f} s building)")
    return {**curve.to_dict(), "attack": f"{curve.attack} on {adaptive}", "judged": judged,
            "build_seconds": round(build_seconds, 2), "variant": VARIANTS.get(spec.name), "settings": settings}
