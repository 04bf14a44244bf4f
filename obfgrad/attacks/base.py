"""What the iterative gradient attacks share: the public call (validation, empty batch, progress
bar) and the active-set loop with per-example early stop (:class:`ActiveSetAttack`, the base of
:class:`~obfgrad.attacks.PGD` and :class:`~obfgrad.attacks.PenalizedGradientDescent`).

The loop costs what a hand-written loop costs plus one forward pass at the last iterate (to
record success there): while every example is still running it works on the whole batch in place
of gathered copies (``rows=None``), and it gathers the running rows only once some have stopped.
"""

from __future__ import annotations

from typing import Any, Optional, Tuple

import torch
from tqdm.auto import tqdm

from obfgrad.attacks.inputs import check_model_and_inputs, checked_objective
from obfgrad.attacks.losses import expected_loss, loss_and_grad, make_objective
from obfgrad.attacks.result import AttackResult

__all__ = ["ActiveSetAttack", "progress_bar", "is_success", "take"]


def progress_bar(total: int, desc: str, progress: bool) -> tqdm:
    """The tqdm bar every long attack shows: off unless ``progress``, and then quiet when not on a
    terminal (``disable=None``)."""
    return tqdm(total=total, desc=desc, disable=None if progress else True)


def is_success(logits: torch.Tensor, y: torch.Tensor, target: Optional[torch.Tensor]) -> torch.Tensor:
    """Misclassified (untargeted) or predicted as the target (targeted), per example."""
    pred = logits.argmax(dim=1)
    return pred == target if target is not None else pred != y


def take(values: Optional[torch.Tensor], rows: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """``values[rows]``; ``rows=None`` means every row (no copy)."""
    if values is None or rows is None:
        return values
    return values[rows]


class ActiveSetAttack:
    """Base of the attacks that step every example from a start point, stop an example at its
    first success (``early_stop``) and record ``(success, objective, steps)`` per example.

    Subclasses set ``steps``, ``loss``, ``targeted``, ``kappa``, ``early_stop``, ``progress`` and
    implement :meth:`_attack` (the whole run, e.g. restarts around :meth:`_descend`) and
    :meth:`_update` (one step); they may refine :meth:`_succeeded`.
    """

    steps: int
    loss: str
    targeted: bool
    kappa: Optional[float] = None
    early_stop: bool = True
    progress: bool = False
    bar_label: str = "attack"
    bar_total_factor: int = 1  # bar length = steps * this (restarts)

    # -- public entry point --------------------------------------------------------------------
    def __call__(self, model, x: torch.Tensor, y: torch.Tensor,
                 target: Optional[torch.Tensor] = None) -> AttackResult:
        x, y, target = check_model_and_inputs(model, x, y, target, self.targeted)
        if x.shape[0] == 0:
            return AttackResult.empty(x)
        bar = progress_bar(self.steps * self.bar_total_factor, self.bar_label, self.progress)
        try:
            return self._attack(model, x.detach(), y, target, bar)
        finally:
            bar.close()

    def _attack(self, model, x, y, target, bar) -> AttackResult:
        raise NotImplementedError

    # -- hooks ---------------------------------------------------------------------------------
    def _update(self, x: torch.Tensor, x_adv: torch.Tensor, grad: torch.Tensor,
                rows: Optional[torch.Tensor], state: Any) -> torch.Tensor:
        """The next iterate of the running examples ``rows`` (None: all) from their ``x``,
        ``x_adv`` and objective gradient ``grad``; ``state`` is what the run handed to
        :meth:`_descend` (e.g. Adam's moments)."""
        raise NotImplementedError

    def _succeeded(self, logits, y, target, x, x_adv) -> torch.Tensor:
        """Per-example success at ``x_adv`` (rows already selected)."""
        return is_success(logits, y, target)

    # -- the loop ------------------------------------------------------------------------------
    def _descend(self, model, x, y, target, x_adv, bar, state: Any = None
                 ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Run ``steps`` updates from ``x_adv``; return ``(x_adv, success, objective, steps)``,
        each example's record taken at its last iterate (its first success under early stop)."""
        n = x.shape[0]
        labels = target if target is not None else y
        success = torch.zeros(n, dtype=torch.bool, device=x.device)
        value = torch.full((n,), float("-inf"), device=x.device)
        steps = torch.zeros(n, dtype=torch.long, device=x.device)
        rows: Optional[torch.Tensor] = None  # the running examples; None while all are
        for t in range(self.steps + 1):
            objective = make_objective(self.loss, take(labels, rows), targeted=self.targeted, kappa=self.kappa)
            if t == 0:
                objective = checked_objective(objective, labels, "target" if target is not None else "y")
            x_now, x_rows = take(x_adv, rows), take(x, rows)
            if t == self.steps:  # last point: a forward pass is enough
                with torch.no_grad():
                    current, logits = expected_loss(model, x_now, objective)
                grad = None
            else:
                current, grad, logits = loss_and_grad(model, x_now, objective)
            now = self._succeeded(logits, take(y, rows), take(target, rows), x_rows, x_now)
            _assign(success, rows, now)
            _assign(value, rows, current.to(value.dtype))
            if grad is None:
                break
            if self.early_stop and bool(now.any()):
                running = ~now
                rows = (torch.arange(n, device=x.device) if rows is None else rows)[running]
                if rows.numel() == 0:
                    bar.update(self.steps - t)
                    break
                grad, x_now, x_rows = grad[running], x_now[running], x_rows[running]
            moved = self._update(x_rows, x_now, grad, rows, state)
            if rows is None:
                x_adv = moved
                steps += 1
            else:
                x_adv[rows] = moved
                steps[rows] += 1
            bar.update(1)
        return x_adv, success, value, steps


def _assign(target: torch.Tensor, rows: Optional[torch.Tensor], values: torch.Tensor) -> None:
    if rows is None:
        target.copy_(values)
    else:
        target[rows] = values
