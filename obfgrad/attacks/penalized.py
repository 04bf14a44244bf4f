"""Gradient descent on a loss plus a normalised l2 penalty: the attack of Athalye et al.'s Guo et
al. notebooks (protocol.md row 3).

Each step maximises ``objective(f(x_adv)) - penalty * ||x_adv - x||_2^2 / ||x||_2^2`` (targeted:
``objective = -CE(target)``, i.e. the notebooks' ``xent(target) + lambda ||delta||^2/||x||^2``
minimised) by plain gradient steps ``x_adv += step_size * grad`` on the raw gradient (no sign, no
normalisation), then clips to [0, 1]. The objective's gradient comes from
:func:`obfgrad.attacks.losses.loss_and_grad`, so BPDA and EOT models work unchanged; the
penalty's gradient is analytic (``2 delta / ||x||^2``).

The notebooks do not project; robustml then rejects over-budget results. With ``project=True``
(default) each step also projects into the threat model's ball, so a result never fails the
check for size alone. With ``early_stop`` an example stops at the first iterate that succeeds
(misclassified / on target) inside the budget, as robustml's BPDA attack does.
"""

from __future__ import annotations

from typing import Optional, Union

import torch

from obfgrad._checks import check_choice, check_float, check_int
from obfgrad.attacks.base import ActiveSetAttack
from obfgrad.attacks.losses import LOSSES
from obfgrad.attacks.result import AttackResult
from obfgrad.distances import Distance, get_distance

__all__ = ["PenalizedGradientDescent"]


class PenalizedGradientDescent(ActiveSetAttack):
    """Raw-gradient descent on ``loss + penalty * ||delta||^2 / ||x||^2`` (Athalye et al.'s Guo attack).

    Args:
        distance, eps: the threat model (for projection and the in-budget early stop).
        steps: gradient steps (notebooks: 10 for bit-depth, JPEG, TV; 50 for crop, quilting).
        step_size: step length (notebooks: lr 0.1 on the raw gradient).
        penalty: lambda of the squared normalised l2 term (notebooks: 1.0).
        loss: ``"ce"`` or ``"margin"``.
        targeted: move towards ``target`` instead of away from ``y``.
        project: project into the eps-ball after each step.
        early_stop: freeze an example at its first successful in-budget iterate.
        update: ``"raw"`` (the notebooks: ``step_size`` times the raw ascent direction) or
            ``"normalized"`` (``step_size`` in the distance's units along it, PGD's l2 step). The
            raw step stalls on confidently classified examples, whose cross-entropy gradient is
            vanishingly small (1e-4 against 1 for others on the smoke CNN); the normalised step
            does not. The names mean what they mean for :class:`~obfgrad.attacks.PGD`.
        progress: show a tqdm bar over the steps (quiet when not on a terminal).

    Example:
        >>> import torch
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
        >>> x, y = torch.full((3, 1, 2, 2), 0.5), torch.tensor([0, 1, 0])
        >>> attack = PenalizedGradientDescent("l2", 0.2, steps=5, step_size=0.1)
        >>> result = attack(model, x, y)
        >>> bool((result.distance <= 0.2 + 1e-6).all())
        True
    """

    bar_label = "penalized descent"

    def __init__(self, distance: Union[str, Distance], eps: float, *, steps: int = 10, step_size: float = 0.1,
                 penalty: float = 1.0, loss: str = "ce", targeted: bool = False, project: bool = True,
                 early_stop: bool = True, update: str = "raw", progress: bool = False):
        self.distance = get_distance(distance)
        self.eps = check_float(eps, "eps", low=0.0, low_inclusive=False)
        self.steps = check_int(steps, "steps", low=0)
        self.step_size = check_float(step_size, "step_size", low=0.0, low_inclusive=False)
        self.penalty = check_float(penalty, "penalty", low=0.0)
        self.loss = check_choice(loss, "loss", LOSSES)
        self.targeted = bool(targeted)
        self.project = bool(project)
        self.early_stop = bool(early_stop)
        self.update = check_choice(update, "update", ("raw", "normalized"))
        self.progress = bool(progress)

    def __repr__(self) -> str:
        return (f"PenalizedGradientDescent(distance={self.distance!r}, eps={self.eps}, steps={self.steps}, "
                f"step_size={self.step_size}, penalty={self.penalty}, loss={self.loss!r}, targeted={self.targeted}, "
                f"project={self.project}, early_stop={self.early_stop}, update={self.update!r})")

    def _attack(self, model, x, y, target, bar) -> AttackResult:
        x_norm2 = x.flatten(1).pow(2).sum(1).clamp_min(1e-12).view(-1, *([1] * (x.dim() - 1)))
        x_adv, success, _, steps = self._descend(model, x, y, target, x.clone(), bar, x_norm2)
        return AttackResult(x_adv=x_adv, success=success, distance=self.distance.norm(x_adv - x).detach(),
                            steps=steps)

    def _succeeded(self, logits, y, target, x, x_adv) -> torch.Tensor:
        """Success counts only inside the budget (robustml rejects the rest)."""
        return super()._succeeded(logits, y, target, x, x_adv) & self.distance.within(x, x_adv, self.eps)

    def _update(self, x, x_adv, grad, rows: Optional[torch.Tensor], x_norm2: torch.Tensor) -> torch.Tensor:
        ascent = grad - self.penalty * 2.0 * (x_adv - x) / (x_norm2 if rows is None else x_norm2[rows])
        if self.update == "normalized":
            ascent = self.distance.unit_direction(ascent)
        moved = (x_adv + self.step_size * ascent).clamp(0.0, 1.0)
        if self.project:
            moved = self.distance.project(x, moved, self.eps)
        return moved
