"""Accuracy as a function of the perturbation budget: the curve of Athalye et al. (2018, Sec. 3,
"Identifying obfuscated & masked gradients", check 5). For a real defense it falls as eps grows
and reaches 0 once the budget covers the whole image box; a plateau well above 0 at large eps
is the mark of obfuscated gradients.

The attack at every budget is :func:`margin_pgd`: PGD on the Carlini-Wagner margin with no floor
and step ``2.5 * eps / steps`` (Madry et al., ICLR 2018), the attack ``obfgrad diagnose`` uses.
Accuracy follows the robustml rule of :func:`obfgrad.eval.evaluate`: an adversarial example
outside the threat model is judged at its clean input.
"""

from __future__ import annotations

import functools
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

import torch

from obfgrad._checks import check_images, check_int
from obfgrad.attacks.inputs import check_labels
from obfgrad.attacks.pgd import PGD
from obfgrad.distances import Distance, get_distance
from obfgrad.eval.robustness import EvalResult, argmax_predictor, evaluate

__all__ = ["EpsCurve", "accuracy_vs_eps", "margin_pgd"]

Model = Callable[[torch.Tensor], torch.Tensor]


def margin_pgd(distance: Union[str, Distance], eps: float, steps: int, *, early_stop: bool = True) -> PGD:
    """PGD on the CW margin (no floor, so the margin keeps growing past the boundary), ``steps``
    steps of ``2.5 * eps / steps`` from ``x`` (Madry et al.: enough to cross the ball and back).

    Args:
        distance: the threat model's distance (name or :class:`~obfgrad.distances.Distance`).
        eps: the budget, > 0.
        steps: gradient steps, >= 1.
        early_stop: stop updating an example once it is misclassified; turn it off for a
            randomized model, whose verdict at one draw is noise.

    Example:
        >>> margin_pgd("linf", 0.1, 10).step_size
        0.025
    """
    steps = check_int(steps, "steps", low=1)
    return PGD(distance=distance, eps=eps, steps=steps, step_size=2.5 * eps / steps, loss="margin", kappa=None,
               early_stop=early_stop)


@dataclass
class EpsCurve:
    """Accuracy at each budget of ``eps`` (``accuracy[i]`` at ``eps[i]``) over ``n`` examples.

    With a ``judge`` (:func:`accuracy_vs_eps`), ``accuracy`` is the judge's and
    ``single_draw_accuracy`` the evaluator's one-pass accuracy; ``verdicts[i]`` holds the judge's
    per-example verdicts at ``eps[i]`` (not part of :meth:`to_dict`)."""

    eps: List[float]
    accuracy: List[float]
    n: int
    steps: Optional[int]
    attack: str
    seconds: float
    single_draw_accuracy: Optional[List[float]] = None
    verdicts: Optional[List[torch.Tensor]] = field(default=None, repr=False, compare=False)

    def to_dict(self) -> Dict[str, Any]:
        out = {key: value for key, value in asdict(self).items() if key != "verdicts"}
        if self.single_draw_accuracy is None:
            del out["single_draw_accuracy"]
        return out


def _checked_grid(eps_grid: Sequence[float]) -> List[float]:
    grid = [float(e) for e in eps_grid]
    if not grid or any(not math.isfinite(e) or e < 0 for e in grid):
        raise ValueError(f"eps_grid: expected a non-empty list of budgets >= 0, got {list(eps_grid)!r}")
    return grid


def _single_draw(eps, attack_model, attack, x, y, distance, predict, batch_size, evaluator, keep_x_adv):
    """Per example at ``eps``: the evaluator's one-pass verdict (correct), and the attack's x_adv."""
    if eps == 0:  # no attack: the clean accuracy
        return torch.cat([predict(x[s:s + batch_size]).to(y.device) == y[s:s + batch_size]
                          for s in range(0, x.shape[0], batch_size)]), x
    result = evaluator(attack_model, attack(eps), x, y, distance=distance, eps=eps, batch_size=batch_size,
                       predict=predict, keep_x_adv=keep_x_adv)
    return torch.tensor([r["adv_correct"] for r in result.records], dtype=torch.bool), result.x_adv


def accuracy_vs_eps(model: Model, x: torch.Tensor, y: torch.Tensor, *, distance: Union[str, Distance],
                    eps_grid: Sequence[float], steps: Optional[int] = None,
                    predict: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
                    attack_model: Optional[Model] = None, early_stop: bool = True,
                    batch_size: int = 128, attack: Optional[Callable[[float], Any]] = None,
                    evaluator: Optional[Callable[..., EvalResult]] = None,
                    judge: Optional[Callable[..., torch.Tensor]] = None) -> EpsCurve:
    """Accuracy of ``model`` under :func:`margin_pgd` at each budget of ``eps_grid``.

    Args:
        model: the deployed classifier (``x -> logits``); judges every adversarial example
            unless ``predict`` is given. Called once per judgement: a randomized model is
            judged on a single draw.
        x, y: images (N, C, H, W) in [0, 1] and labels (N,).
        distance: the threat model's distance (``"linf"``, ``"l2"``, ``"l2_rms_pixels"``, ...).
        eps_grid: budgets (>= 0) in the distance's units; at 0 the accuracy is the clean accuracy.
        steps: PGD steps at every budget (of the default attack; required without ``attack``).
        predict: ``inputs -> labels``; default the argmax of ``model``.
        attack_model: what the attack differentiates (e.g. a BPDA/EOT-wrapped ``model``);
            default ``model``.
        early_stop: passed to :func:`margin_pgd` (turn off for randomized models).
        batch_size: examples per attack call.
        attack: ``eps -> attack`` instead of :func:`margin_pgd` (a row's own attack, scaled).
        evaluator: replaces :func:`evaluate` (same keywords; e.g. one that writes records).
        judge: ``(x, x_adv, y, eps) -> per-example correct`` (:mod:`obfgrad.eval.judging`): the
            curve's accuracy is the judge's, one-pass accuracy goes to ``single_draw_accuracy``.

    Returns:
        :class:`EpsCurve` with the grid in the given order.

    Example:
        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
        >>> x, y = torch.rand(6, 1, 2, 2), torch.zeros(6, dtype=torch.long)
        >>> curve = accuracy_vs_eps(net, x, y, distance="linf", eps_grid=[0.0, 1.0], steps=5)
        >>> curve.accuracy[1]  # the whole [0, 1] box: a linear model is always broken
        0.0
    """
    check_images(x, "x", allow_empty=False)
    y = check_labels(y, "y", x.shape[0], x.device)
    grid = _checked_grid(eps_grid)
    distance = get_distance(distance)
    if attack is None:
        steps = check_int(steps, "steps", low=1)
        attack = lambda eps: margin_pgd(distance, eps, steps, early_stop=early_stop)  # noqa: E731
    predict = predict if predict is not None else argmax_predictor(model)
    attack_model = attack_model if attack_model is not None else model
    evaluator = evaluator if evaluator is not None else functools.partial(evaluate, progress=False)
    started = time.perf_counter()
    single_draw, verdicts = [], []
    for eps in grid:
        correct, x_adv = _single_draw(eps, attack_model, attack, x, y, distance, predict, batch_size, evaluator,
                                      keep_x_adv=judge is not None)
        single_draw.append(int(correct.sum()) / x.shape[0])
        verdicts.append(correct if judge is None else judge(x, x_adv, y, eps))
    return EpsCurve(eps=grid, accuracy=[int(v.sum()) / x.shape[0] for v in verdicts], n=int(x.shape[0]), steps=steps,
                    attack=(f"PGD on the CW margin, {steps} steps of 2.5·eps/steps ({distance.name})"
                            if steps is not None else repr(attack(grid[-1] or 1.0))),
                    seconds=round(time.perf_counter() - started, 2),
                    single_draw_accuracy=single_draw if judge is not None else None, verdicts=verdicts)
