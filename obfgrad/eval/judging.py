"""Judging rules: how an adversarial example is scored once an attack has produced it.

:func:`obfgrad.eval.evaluate` judges each example once, by the argmax of one forward pass. The
paper's rows need other verdicts on the same adversarial examples, and each is an option here:

* :func:`judged_inputs`, the robustml rule every rule starts from: an adversarial example outside
  the threat model (a pixel outside ``[0, 1]`` or a distance over ``eps``, with robustml's
  tolerance) is a failure of the attack and counts as the clean image;
* :func:`correct_in_any_draw`, Xie et al.'s rule for a randomized defense: an example survives if
  some of ``draws`` fresh draws of the defense classifies it correctly (the attack must win all
  ``draws``: "10 out of 10");
* :func:`vote_correct`, a stochastic model's prediction as the mean softmax and as the majority
  vote of ``draws`` draws (SAP);
* :func:`correct_or_detected`, a detector defense (LID): an adversarial example is a success only
  if it is misclassified and not detected.

A randomized judge draws from the judge's stream (``judge_seed``, :mod:`obfgrad.eval.streams`),
never from the attack's: an example is not judged on randomness the attack has already seen.

Example:
    >>> import torch
    >>> x, x_adv = torch.zeros(2, 1, 1, 1), torch.tensor([0.05, 0.5]).view(2, 1, 1, 1)
    >>> judged_inputs(x, x_adv, "linf", 0.1).flatten().tolist()  # the second is over the budget
    [0.05000000074505806, 0.0]
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Tuple, Union

import torch

from obfgrad._checks import SEED_BOUND, check_int
from obfgrad.distances import Distance, get_distance
from obfgrad.eval.confidence import clopper_pearson
from obfgrad.eval.streams import random_stream

__all__ = ["robustml_rule", "judged_inputs", "within_threat_model", "correct_in_any_draw", "vote_correct",
           "correct_or_detected", "accuracy_summary"]

Model = Callable[[torch.Tensor], torch.Tensor]


def within_threat_model(x: torch.Tensor, x_adv: torch.Tensor, distance: Union[str, Distance],
                        eps: float) -> torch.Tensor:
    """Per example: ``x_adv`` is inside the threat model (robustml's ``Lp.check``)."""
    if x.shape != x_adv.shape:
        raise ValueError(f"x_adv: expected the shape of x {tuple(x.shape)}, got {tuple(x_adv.shape)}")
    return get_distance(distance).within(x, x_adv, eps)


def robustml_rule(x: torch.Tensor, x_adv: torch.Tensor, distance: Union[str, Distance],
                  eps: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(x_final, within)``: what a judge classifies (``x_adv`` where it is inside the threat
    model, the clean ``x`` where it is not: a violation is an attack failure) and, per example,
    whether ``x_adv`` was inside. The one place of the rule in obfgrad."""
    within = within_threat_model(x, x_adv, distance, eps)
    return torch.where(within.view(-1, *([1] * (x.dim() - 1))), x_adv, x), within


def judged_inputs(x: torch.Tensor, x_adv: torch.Tensor, distance: Union[str, Distance], eps: float) -> torch.Tensor:
    """``x_final`` of :func:`robustml_rule`."""
    return robustml_rule(x, x_adv, distance, eps)[0]


def _check_draws(draws: int, judge_seed: int) -> None:
    check_int(draws, "draws", low=1)
    check_int(judge_seed, "judge_seed", low=0, high=SEED_BOUND - 1)


@torch.no_grad()
def correct_in_any_draw(model: Model, x: torch.Tensor, y: torch.Tensor, draws: int, *, judge_seed: int,
                        x_adv: Optional[torch.Tensor] = None, distance: Union[str, Distance, None] = None,
                        eps: Optional[float] = None) -> torch.Tensor:
    """Per example: some of ``draws`` fresh draws of ``model`` (the judge's stream ``judge_seed``)
    predicts ``y`` (Xie et al.'s rule). With ``x_adv`` (and ``distance``, ``eps``) the draws judge
    :func:`judged_inputs`; without, ``x`` itself. Each draw is one call of ``model`` on all of ``x``."""
    _check_draws(draws, judge_seed)
    inputs = x if x_adv is None else _judged(x, x_adv, distance, eps)
    correct = torch.zeros(inputs.shape[0], dtype=torch.bool, device=y.device)
    with random_stream(judge_seed, x.device):
        for _ in range(draws):
            correct |= model(inputs).argmax(dim=1) == y
    return correct


def _judged(x, x_adv, distance, eps) -> torch.Tensor:
    if distance is None or eps is None:
        raise ValueError("distance, eps: needed to judge x_adv (the robustml rule); got None")
    return judged_inputs(x, x_adv, distance, eps)


@torch.no_grad()
def vote_correct(model: Model, x: torch.Tensor, y: torch.Tensor, draws: int, *, judge_seed: int,
                 x_adv: Optional[torch.Tensor] = None, distance: Union[str, Distance, None] = None,
                 eps: Optional[float] = None, batch_size: int = 250) -> Dict[str, torch.Tensor]:
    """Per example, under two predictions of a stochastic ``model`` from ``draws`` draws per batch
    (the judge's stream ``judge_seed``): ``"mean_softmax"`` (argmax of the mean of the draws'
    softmax) and ``"majority_vote"`` (the class most draws predict; ties to the lowest class)."""
    _check_draws(draws, judge_seed)
    batch_size = check_int(batch_size, "batch_size", low=1)
    inputs = x if x_adv is None else _judged(x, x_adv, distance, eps)
    mean_correct, vote = [], []
    with random_stream(judge_seed, x.device):
        for start in range(0, inputs.shape[0], batch_size):
            logits = torch.stack([model(inputs[start:start + batch_size]) for _ in range(draws)])  # (draws, n, K)
            labels = y[start:start + batch_size]
            mean_correct.append(torch.softmax(logits, dim=-1).mean(0).argmax(1) == labels)
            votes = torch.nn.functional.one_hot(logits.argmax(-1), logits.shape[-1]).sum(0)
            vote.append(votes.argmax(1) == labels)
    return {"mean_softmax": torch.cat(mean_correct), "majority_vote": torch.cat(vote)}


def correct_or_detected(correct: torch.Tensor, flagged: torch.Tensor) -> torch.Tensor:
    """Per example, the verdict for a detector defense: robust when the classifier is still right
    OR the detector flags the input (an attack succeeds only misclassified AND undetected)."""
    correct, flagged = torch.as_tensor(correct), torch.as_tensor(flagged)
    if correct.shape != flagged.shape or correct.dim() != 1:
        raise ValueError(f"correct, flagged: expected two vectors of one shape, got {tuple(correct.shape)} and "
                         f"{tuple(flagged.shape)}")
    return correct.bool() | flagged.bool()


def accuracy_summary(correct: torch.Tensor) -> Dict[str, Any]:
    """``{"accuracy", "ci95"}`` (exact Clopper-Pearson) of a vector of per-example verdicts."""
    correct = torch.as_tensor(correct)
    n, k = int(correct.numel()), int(correct.sum())
    if n == 0:
        raise ValueError("correct: expected at least one verdict, got none")
    return {"accuracy": k / n, "ci95": list(clopper_pearson(k, n))}
