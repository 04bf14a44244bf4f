"""The generic runner of a declarative row: a row lists its evaluations (:class:`Evaluation`: which
attack on which of its models, judged by which rule) and ``RowSpec.setup`` builds the models; this
module runs them in order and assembles the row's result. A row needs a ``run()`` of its own only
for measurements that are not an evaluation (Guo's five transformations, Xie's control).

Result of a row run here: ``clean_accuracy`` (of the first evaluation), ``own_attack_accuracy``
(the strongest of the ``own`` evaluations: the defense authors' best), ``adaptive_accuracy`` (the
``adaptive`` evaluation), their exact 95% intervals, ``attacks`` (every own, adaptive and other
attack's summary by key), each ``extra`` evaluation's summary under its key, the clean-accuracy guard, and what the
row's ``report`` hook adds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional

import torch

from obfgrad.attacks import PGD
from obfgrad.eval import accuracy_summary, argmax_predictor, derive_seed, vote_correct
from obfgrad.zoo import common
from reproduce import pipeline
from reproduce.spec import RowSpec, RunContext

__all__ = ["Evaluation", "config_pgd", "pgd_of", "run_row", "votes_judge", "ROLES"]

#: own: the defense's own evaluation; adaptive: Athalye et al.'s attack; attack: another attack reported
#: beside them under ``attacks``; extra: a control reported at the result's top level.
ROLES = ("own", "adaptive", "attack", "extra")
_PGD_KEYS = ("steps", "step_size", "loss", "update", "random_start", "start_from", "restarts", "early_stop")


@dataclass(frozen=True)
class Evaluation:
    """One attack of a row, run through :func:`reproduce.pipeline.run_attack` (records in
    ``results/records/<row>.<label>.json``).

    ``attack(row, ctx, setup)`` builds the attack from the row's config (and its models); ``model``
    names the model of the row's setup that the attack differentiates, ``predict`` the one whose
    single-draw argmax judges (default: ``model``); ``judge(row, ctx, setup, evaluation, x, y, x_adv,
    summary)`` is a second verdict on the same adversarial examples (an evaluator option of :mod:`obfgrad.eval.judging`:
    votes, a detector) and returns the summary the row reports; ``distance``/``eps`` override the
    row's threat model (LID's unbounded CW-L2)."""

    label: str
    key: str
    role: str
    attack: Callable[[RowSpec, RunContext, Dict[str, Any]], Any]
    model: str = "defended"
    predict: Optional[str] = None
    judge: Optional[Callable[..., Dict[str, Any]]] = None
    distance: Optional[str] = None
    eps: Optional[float] = None

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"role: expected one of {', '.join(ROLES)}, got {self.role!r}")


def config_pgd(settings: Dict[str, Any], distance: str, eps: float, **fixed: Any) -> PGD:
    """The PGD of a row config's attack entry: its PGD settings (steps, step_size, loss, update,
    random_start, start_from, restarts, early_stop; others such as EOT ``samples`` are ignored),
    ``kappa=None`` (the CW margin without floor) unless ``fixed`` says otherwise."""
    chosen = {key: settings[key] for key in _PGD_KEYS if key in settings}
    return PGD(distance=distance, eps=eps, **{"kappa": None, **chosen, **fixed})


def pgd_of(entry: str, *, seeded: bool = False, **fixed: Any) -> Callable[..., PGD]:
    """``Evaluation.attack`` for the PGD of the row config's ``entry`` (:func:`config_pgd`) at the row's
    threat model; ``seeded``: its own generator seeded with the run seed (else the evaluator's stream)."""

    def attack(row: RowSpec, ctx: RunContext, setup: Optional[Dict[str, Any]] = None) -> PGD:
        return config_pgd(row.config[entry], row.distance, row.eps, **fixed, **({"seed": ctx.seed} if seeded else {}))

    return attack


def _predictor(setup: Dict[str, Any], name: Optional[str]):
    return None if name is None else argmax_predictor(setup[name])


def run_evaluation(row: RowSpec, ctx: RunContext, evaluation: Evaluation, setup: Dict[str, Any],
                   x: torch.Tensor, y: torch.Tensor) -> Dict[str, Any]:
    """One evaluation's summary (after its judge, if any)."""
    predict = _predictor(setup, evaluation.predict)
    summary, x_adv = pipeline.run_attack_keeping_x_adv(ctx, row, evaluation.label, setup[evaluation.model],
                                                       evaluation.attack(row, ctx, setup), x, y, predict=predict,
                                                       distance=evaluation.distance, eps=evaluation.eps)
    if evaluation.judge is None:
        return summary
    return evaluation.judge(row, ctx, setup, evaluation, x, y, x_adv, summary)


def run_row(row: RowSpec, ctx: RunContext) -> Dict[str, Any]:
    """Run a declarative row: its setup, the clean-accuracy guard, every evaluation, its report."""
    x, y = common.test_set(ctx, row.dataset, ctx.examples(row.n_examples))
    setup = row.setup(row, ctx, x, y)
    guard = pipeline.guard_clean_accuracy(ctx, row, setup["guard"], x, y, row.config["clean_floor"])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(ctx.seed)  # anything drawing from torch's global generator outside the evaluator's streams
        summaries = {evaluation.label: run_evaluation(row, ctx, evaluation, setup, x, y)
                     for evaluation in row.evaluations}
    return {**headline(row, summaries), "clean_accuracy_guard": guard,
            **(row.report(row, ctx, setup, summaries) if row.report else {})}


def headline(row: RowSpec, summaries: Dict[str, Dict[str, Any]]) -> Dict[str, Any]:
    """The table's numbers from the evaluations' summaries (see the module docstring)."""
    by_role = {role: [(e.key, summaries[e.label]) for e in row.evaluations if e.role == role] for role in ROLES}
    if not by_role["own"] or len(by_role["adaptive"]) != 1:
        raise ValueError(f"row {row.name}: expected own evaluations and exactly one adaptive evaluation")
    own = min((summary for _, summary in by_role["own"]), key=lambda summary: summary["accuracy"])
    adaptive = by_role["adaptive"][0][1]
    first = summaries[row.evaluations[0].label]
    return {
        "clean_accuracy": first.get("classifier_only", first)["clean_accuracy"],
        "own_attack_accuracy": own["accuracy"],
        "own_attack_ci95": own["ci95"],
        "adaptive_accuracy": adaptive["accuracy"],
        "adaptive_ci95": adaptive["ci95"],
        "attacks": dict(by_role["own"] + by_role["adaptive"] + by_role["attack"]),
        **dict(by_role["extra"]),
    }


def votes_judge(row: RowSpec, ctx: RunContext, setup: Dict[str, Any], evaluation: Evaluation, x, y, x_adv,
                summary: Dict[str, Any]) -> Dict[str, Any]:
    """The same adversarial examples under the mean softmax and the majority vote of the config's
    ``vote_draws`` draws of the ``defended`` model (:func:`obfgrad.eval.vote_correct`), on a judge's
    stream of their own (apart from the attack's and the single-draw judge's); kept beside the
    single-draw accuracy under ``other_prediction_rules``."""
    draws = row.config["vote_draws"]
    seed = derive_seed(ctx.seed, f"{row.name}/{evaluation.label}/vote_judge")
    verdicts = vote_correct(setup["defended"], x, y, draws, judge_seed=seed, x_adv=x_adv,
                            distance=evaluation.distance or row.distance, eps=evaluation.eps or row.eps)
    rules = {"draws": draws, **{name: accuracy_summary(correct) for name, correct in verdicts.items()},
             "judge_seed": seed}
    ctx.log(f"  {evaluation.label} under mean softmax of {draws}: {rules['mean_softmax']['accuracy']:.3f}, "
            f"majority vote: {rules['majority_vote']['accuracy']:.3f}")
    return {**summary, "other_prediction_rules": rules}
