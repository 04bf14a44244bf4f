"""Projected gradient descent (Madry et al., ICLR 2018) under any :class:`~obfgrad.distances.Distance`.

Each step moves ``x_adv`` along an ascent direction of the attack objective and projects back
into the eps-ball around ``x`` and the [0, 1] box. The step rules (``update``) mean the same for
every distance and cover the paper's notebooks:

* ``"sign"``       -- ``x += step_size * sign(g)`` (steepest ascent for l-inf).
* ``"normalized"`` -- ``x += step_size * d(g)``, ``d(g)`` the steepest-ascent direction of unit
  distance (:meth:`Distance.unit_direction`: ``g`` normalised per example for l2, ``sign(g)`` for
  l-inf).
* ``"raw"``        -- ``x += step_size * g`` on the raw gradient (Guo/Xie notebooks, "lr 0.1 on
  the raw gradient").
* ``"adam_sign"``  -- Adam with lr ``step_size`` fed ``sign(g)`` (thermometer, LID and SAP breaks,
  protocol.md rows 1, 2, 4).
* ``"adam"``       -- Adam with lr ``step_size`` on ``g``.

Works with BPDA and EOT models unchanged: the gradient comes from
:func:`obfgrad.attacks.losses.loss_and_grad`.
"""

from __future__ import annotations

from typing import Optional, Union

import torch

from obfgrad._checks import check_choice, check_float, check_int
from obfgrad.attacks.adam import AdamAscent
from obfgrad.attacks.base import ActiveSetAttack, is_success
from obfgrad.attacks.losses import LOSSES
from obfgrad.attacks.result import AttackResult
from obfgrad.distances import Distance, LInf, get_distance

__all__ = ["PGD", "UPDATES", "is_success"]

UPDATES = ("sign", "normalized", "raw", "adam_sign", "adam")


class PGD(ActiveSetAttack):
    """Projected gradient attack, l-inf or l2, untargeted or targeted.

    Args:
        distance: a :class:`Distance` or its name (``"linf"``, ``"l2"``, ``"l2_rms_pixels"``, ...).
        eps: the budget, in the distance's units.
        steps: gradient steps per restart (0 evaluates the start point only).
        step_size: step length in the distance's units (the learning rate for Adam updates).
        loss: ``"ce"`` (cross-entropy) or ``"margin"`` (Carlini-Wagner margin).
        targeted: move towards ``target`` instead of away from ``y``.
        random_start: start from a uniform point of the ball instead of ``x``.
        start_from: start from the point of the ball (and the [0, 1] box) nearest the constant
            image of this value instead of ``x`` (None: ``x``). The robustml attacks of Athalye et
            al. start their variable at zeros and clip it into the ball
            (``sap/robustml_attack.py``, ``thermometer/robustml_attack.py``, ``lid/lid.ipynb``):
            ``start_from=0.0`` on a model fed the [0, 1] (or 0-255) scale is ``max(x - eps, 0)``;
            ``0.5`` is the zero of the [-0.5, 0.5] scale LID's model is fed.
        restarts: independent runs; later runs only attack the examples not yet broken, and each
            example keeps its best run (successful first, then highest objective).
        early_stop: stop updating an example once it succeeds (its ``steps`` records when).
        update: ``"sign"``, ``"normalized"``, ``"raw"``, ``"adam_sign"`` or ``"adam"`` (see the
            module docstring); None picks ``"sign"`` for l-inf and ``"normalized"`` for l2.
        kappa: floor of the margin loss (None: no floor).
        seed: seed of the random starts (None: torch's global generator).
        progress: show a tqdm bar over the steps (quiet when not on a terminal).

    Example:
        >>> import torch
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
        >>> x, y = torch.full((3, 1, 2, 2), 0.5), torch.tensor([0, 1, 0])
        >>> result = PGD("linf", 0.1, steps=5, step_size=0.05)(model, x, y)
        >>> tuple(result.x_adv.shape), bool((result.distance <= 0.1 + 1e-6).all())
        ((3, 1, 2, 2), True)
    """

    bar_label = "PGD"

    def __init__(self, distance: Union[str, Distance], eps: float, *, steps: int = 40, step_size: float = 2 / 255,
                 loss: str = "ce", targeted: bool = False, random_start: bool = False,
                 start_from: Optional[float] = None, restarts: int = 1, early_stop: bool = True,
                 update: Optional[str] = None, kappa: Optional[float] = 0.0, seed: Optional[int] = None,
                 progress: bool = False):
        self.distance = get_distance(distance)
        self.eps = check_float(eps, "eps", low=0.0, low_inclusive=False)
        self.steps = check_int(steps, "steps", low=0)
        self.step_size = check_float(step_size, "step_size", low=0.0, low_inclusive=False)
        self.loss = check_choice(loss, "loss", LOSSES)
        self.targeted = bool(targeted)
        self.random_start = bool(random_start)
        self.start_from = None if start_from is None else check_float(start_from, "start_from", low=0.0, high=1.0)
        if self.random_start and self.start_from is not None:
            raise ValueError("start_from: give either random_start=True or start_from, not both")
        self.restarts = self.bar_total_factor = check_int(restarts, "restarts", low=1)
        self.early_stop = bool(early_stop)
        self.update = check_update(update, self.distance)
        self.kappa = None if kappa is None else check_float(kappa, "kappa", low=0.0)
        self.seed = None if seed is None else check_int(seed, "seed")
        self.progress = bool(progress)

    def __repr__(self) -> str:
        return (f"PGD(distance={self.distance!r}, eps={self.eps}, steps={self.steps}, step_size={self.step_size}, "
                f"loss={self.loss!r}, targeted={self.targeted}, random_start={self.random_start}, "
                + (f"start_from={self.start_from}, " if self.start_from is not None else "")
                + f"restarts={self.restarts}, early_stop={self.early_stop}, update={self.update!r}, "
                f"kappa={self.kappa})")

    # -- the run: restarts around the shared active-set loop ------------------------------------
    def _attack(self, model, x, y, target, bar) -> AttackResult:
        n = x.shape[0]
        generator = torch.Generator().manual_seed(self.seed) if self.seed is not None else None
        best_x = x.clone()
        best_success = torch.zeros(n, dtype=torch.bool, device=x.device)
        best_value = torch.full((n,), float("-inf"), device=x.device)
        best_steps = torch.zeros(n, dtype=torch.long, device=x.device)
        todo = torch.arange(n, device=x.device)
        for _ in range(self.restarts):
            if todo.numel() == 0:
                break
            sub_x, sub_target = x[todo], target[todo] if target is not None else None
            adam = AdamAscent(sub_x, self.step_size) if self.update in ("adam", "adam_sign") else None
            x_run, success, value, steps = self._descend(model, sub_x, y[todo], sub_target,
                                                         self._start(sub_x, generator), bar, adam)
            better = (success & ~best_success[todo]) | (~success & ~best_success[todo] & (value > best_value[todo]))
            rows = todo[better]
            best_x[rows], best_success[rows] = x_run[better], success[better]
            best_value[rows], best_steps[rows] = value[better], steps[better]
            todo = todo[~best_success[todo]]
        return AttackResult(x_adv=best_x, success=best_success.clone(),
                            distance=self.distance.norm(best_x - x).detach(), steps=best_steps)

    def _start(self, x: torch.Tensor, generator: Optional[torch.Generator]) -> torch.Tensor:
        if self.random_start:
            return self.distance.random_point(x, self.eps, generator)
        if self.start_from is not None:  # the ball's point nearest the constant image start_from
            return self.distance.project(x, torch.full_like(x, self.start_from), self.eps)
        return x.clone()

    def _update(self, x, x_adv, grad, rows, adam: Optional[AdamAscent]):
        return self.distance.project(x, x_adv + self._step(grad, rows, adam), self.eps)

    def _step(self, grad: torch.Tensor, rows: Optional[torch.Tensor], adam: Optional[AdamAscent]) -> torch.Tensor:
        if self.update == "sign":
            return self.step_size * grad.sign()
        if self.update == "raw":
            return self.step_size * grad
        if self.update == "normalized":
            return self.step_size * self.distance.unit_direction(grad)
        feed = grad.sign() if self.update == "adam_sign" else grad
        return adam.step(feed, rows)


def check_update(update: Optional[str], distance: Distance) -> str:
    """``update`` checked against :data:`UPDATES`; None is the steepest ascent of the distance."""
    if update is None:
        return "sign" if isinstance(distance, LInf) else "normalized"
    if update == "grad":
        raise ValueError('update: "grad" was renamed, as it meant the raw gradient for l-inf and the normalised '
                         'one for l2: use "raw" (step_size * g) or "normalized" (step_size * unit direction)')
    return check_choice(update, "update", UPDATES)
