"""Gradient descent on a loss plus a normalised l2 penalty: the attack of Athalye et al.'s Guo et
al. notebooks (protocol.md row 3).

Each step maximises ``objective(f(x_adv)) - penalty * ||x_adv - x||_2^2 / ||x||_2^2`` (targeted:
``objective = -CE(target)``, i.e. the notebooks' ``xent(target) + lambda ||delta||^2/||x||^2``
minimised) by plain gradient steps ``x_adv += lr * grad`` on the raw gradient (no sign, no
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
from obfgrad.attacks.inputs import check_attack_inputs, check_eot_outermost, checked_objective
from obfgrad.attacks.losses import LOSSES, expected_loss, loss_and_grad, make_objective
from obfgrad.attacks.pgd import is_success
from obfgrad.attacks.result import AttackResult
from obfgrad.distances import Distance, get_distance

__all__ = ["PenalizedGradientDescent"]


class PenalizedGradientDescent:
    """Raw-gradient descent on ``loss + penalty * ||delta||^2 / ||x||^2`` (Athalye et al.'s Guo attack).

    Args:
        distance, eps: the threat model (for projection and the in-budget early stop).
        steps: gradient steps (notebooks: 10 for bit-depth, JPEG, TV; 50 for crop, quilting).
        lr: step size on the raw gradient (notebooks: 0.1).
        penalty: lambda of the squared normalised l2 term (notebooks: 1.0).
        loss: ``"ce"`` or ``"margin"``.
        targeted: move towards ``target`` instead of away from ``y``.
        project: project into the eps-ball after each step.
        early_stop: freeze an example at its first successful in-budget iterate.
        normalize: step ``lr`` in the distance's units along the ascent direction (PGD's l2 step)
            instead of ``lr`` times the raw gradient. The raw step stalls on confidently
            classified examples, whose cross-entropy gradient is vanishingly small (1e-4 against
            1 for others on the smoke CNN); the normalised step does not.

    Example:
        >>> import torch
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
        >>> x, y = torch.full((3, 1, 2, 2), 0.5), torch.tensor([0, 1, 0])
        >>> attack = PenalizedGradientDescent("l2", eps=0.2, steps=5, lr=0.1)
        >>> result = attack(model, x, y)
        >>> bool((result.distance <= 0.2 + 1e-6).all())
        True
    """

    def __init__(self, distance: Union[str, Distance] = "l2_rms_pixels", eps: float = 0.05, steps: int = 10,
                 lr: float = 0.1, penalty: float = 1.0, loss: str = "ce", targeted: bool = False,
                 project: bool = True, early_stop: bool = True, normalize: bool = False):
        self.distance = get_distance(distance)
        self.eps = check_float(eps, "eps", low=0.0, low_inclusive=False)
        self.steps = check_int(steps, "steps", low=0)
        self.lr = check_float(lr, "lr", low=0.0, low_inclusive=False)
        self.penalty = check_float(penalty, "penalty", low=0.0)
        self.loss = check_choice(loss, "loss", LOSSES)
        self.targeted = bool(targeted)
        self.project = bool(project)
        self.early_stop = bool(early_stop)
        self.normalize = bool(normalize)

    def __repr__(self) -> str:
        return (f"PenalizedGradientDescent(distance={self.distance!r}, eps={self.eps}, steps={self.steps}, "
                f"lr={self.lr}, penalty={self.penalty}, loss={self.loss!r}, targeted={self.targeted}, "
                f"project={self.project}, early_stop={self.early_stop}, normalize={self.normalize})")

    def __call__(self, model, x: torch.Tensor, y: torch.Tensor,
                 target: Optional[torch.Tensor] = None) -> AttackResult:
        x, y, target = check_attack_inputs(x, y, target, self.targeted)
        check_eot_outermost(model)
        if x.shape[0] == 0:
            return AttackResult.empty(x)
        x = x.detach()
        n = x.shape[0]
        labels = target if target is not None else y
        x_norm2 = x.flatten(1).pow(2).sum(1).clamp_min(1e-12).view(-1, *([1] * (x.dim() - 1)))
        x_adv = x.clone()
        success = torch.zeros(n, dtype=torch.bool, device=x.device)
        steps = torch.zeros(n, dtype=torch.long, device=x.device)
        active = torch.arange(n, device=x.device)
        for t in range(self.steps + 1):
            objective = make_objective(self.loss, labels[active], targeted=self.targeted)
            if t == 0:
                objective = checked_objective(objective, labels, "target" if target is not None else "y")
            if t == self.steps:
                with torch.no_grad():
                    _, logits = expected_loss(model, x_adv[active], objective)
                grad = None
            else:
                _, grad, logits = loss_and_grad(model, x_adv[active], objective)
            sub_target = target[active] if target is not None else None
            inside = self.distance.within(x[active], x_adv[active], self.eps)
            now = is_success(logits, y[active], sub_target) & inside
            success[active] = now
            if grad is None:
                break
            if self.early_stop:
                active, grad = active[~now], grad[~now]
                if active.numel() == 0:
                    break
            delta = x_adv[active] - x[active]
            ascent = grad - self.penalty * 2.0 * delta / x_norm2[active]
            if self.normalize:
                ascent = self.distance.unit_direction(ascent)
            moved = (x_adv[active] + self.lr * ascent).clamp(0.0, 1.0)
            if self.project:
                moved = self.distance.project(x[active], moved, self.eps)
            x_adv[active] = moved
            steps[active] += 1
        return AttackResult(x_adv=x_adv, success=success, distance=self.distance.norm(x_adv - x).detach(),
                            steps=steps)
