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

import math
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

import torch

from obfgrad._checks import check_images, check_int
from obfgrad.attacks.inputs import check_labels
from obfgrad.attacks.pgd import PGD
from obfgrad.distances import Distance, get_distance
from obfgrad.eval.robustness import argmax_predictor, evaluate

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
    """Accuracy at each budget of ``eps`` (``accuracy[i]`` at ``eps[i]``) over ``n`` examples."""

    eps: List[float]
    accuracy: List[float]
    n: int
    steps: int
    attack: str
    seconds: float

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


def _checked_grid(eps_grid: Sequence[float]) -> List[float]:
    grid = [float(e) for e in eps_grid]
    if not grid or any(not math.isfinite(e) or e < 0 for e in grid):
        raise ValueError(f"eps_grid: expected a non-empty list of budgets >= 0, got {list(eps_grid)!r}")
    return grid


def accuracy_vs_eps(model: Model, x: torch.Tensor, y: torch.Tensor, *, distance: Union[str, Distance],
                    eps_grid: Sequence[float], steps: int,
                    predict: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
                    attack_model: Optional[Model] = None, early_stop: bool = True,
                    batch_size: int = 128) -> EpsCurve:
    """Accuracy of ``model`` under :func:`margin_pgd` at each budget of ``eps_grid``.

    Args:
        model: the deployed classifier (``x -> logits``); judges every adversarial example
            unless ``predict`` is given. Called once per judgement: a randomized model is
            judged on a single draw.
        x, y: images (N, C, H, W) in [0, 1] and labels (N,).
        distance: the threat model's distance (``"linf"``, ``"l2"``, ``"l2_rms_pixels"``, ...).
        eps_grid: budgets (>= 0) in the distance's units; at 0 the accuracy is the clean accuracy.
        steps: PGD steps at every budget.
        predict: ``inputs -> labels``; default the argmax of ``model``.
        attack_model: what the attack differentiates (e.g. a BPDA/EOT-wrapped ``model``);
            default ``model``.
        early_stop: passed to :func:`margin_pgd` (turn off for randomized models).
        batch_size: examples per attack call.

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
    steps = check_int(steps, "steps", low=1)
    distance = get_distance(distance)
    predict = predict if predict is not None else argmax_predictor(model)
    attack_model = attack_model if attack_model is not None else model
    started = time.perf_counter()
    accuracy = []
    for eps in grid:
        if eps == 0:
            correct = sum(int((predict(x[s:s + batch_size]).to(y.device) == y[s:s + batch_size]).sum())
                          for s in range(0, x.shape[0], batch_size))
            accuracy.append(correct / x.shape[0])
            continue
        result = evaluate(attack_model, margin_pgd(distance, eps, steps, early_stop=early_stop), x, y,
                          distance=distance, eps=eps, batch_size=batch_size, predict=predict, progress=False)
        accuracy.append(result.robust_accuracy)
    return EpsCurve(eps=grid, accuracy=accuracy, n=int(x.shape[0]), steps=steps,
                    attack=f"PGD on the CW margin, {steps} steps of 2.5·eps/steps ({distance.name})",
                    seconds=round(time.perf_counter() - started, 2))
