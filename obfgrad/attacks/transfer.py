"""Transfer attack: craft on a surrogate, judge on the target (Guo et al.'s gray-box and Xie et
al.'s "vanilla" evaluations: adversarial examples of the undefended classifier, then defended).

The defended model handed to the attack is not differentiated at all; it only judges success.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import torch

from obfgrad.attacks.base import is_success
from obfgrad.attacks.inputs import check_logits
from obfgrad.attacks.result import AttackResult

__all__ = ["TransferAttack"]


class TransferAttack:
    """Run ``attack`` on ``surrogate`` and return its examples for the target model.

    Args:
        attack: ``attack(model, x, y[, target]) -> AttackResult`` (e.g. PGD).
        surrogate: the model the examples are crafted on (the undefended classifier).

    Example:
        >>> import torch
        >>> from obfgrad.attacks import PGD
        >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
        >>> transfer = TransferAttack(PGD("linf", 0.1, steps=2, step_size=0.05), net)
        >>> transfer(lambda v: net(v + 0), torch.rand(2, 1, 2, 2), torch.tensor([0, 1])).x_adv.shape
        torch.Size([2, 1, 2, 2])
    """

    def __init__(self, attack: Callable[..., AttackResult], surrogate: Callable[[torch.Tensor], torch.Tensor]):
        if not callable(attack):
            raise TypeError(f"attack: expected an attack(model, x, y) callable, got {type(attack).__name__}")
        if not callable(surrogate):
            raise TypeError(f"surrogate: expected a model (a callable x -> logits), got {type(surrogate).__name__}")
        self.attack = attack
        self.surrogate = surrogate

    def __repr__(self) -> str:
        return f"TransferAttack({self.attack!r}, surrogate={type(self.surrogate).__name__})"

    def __call__(self, model: Any, x: torch.Tensor, y: torch.Tensor,
                 target: Optional[torch.Tensor] = None) -> AttackResult:
        options = {} if target is None else {"target": target}
        crafted = self.attack(self.surrogate, x, y, **options)
        if x.shape[0] == 0:
            return crafted
        with torch.no_grad():
            success = is_success(check_logits(model(crafted.x_adv), x.shape[0]), y, target)
        return AttackResult(x_adv=crafted.x_adv, success=success, distance=crafted.distance, steps=crafted.steps)
