"""What every attack returns: the adversarial batch and a per-example record."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List

import torch

__all__ = ["AttackResult"]


@dataclass
class AttackResult:
    """Output of an attack on a batch of N examples.

    Attributes:
        x_adv: adversarial batch ``(N, C, H, W)``, detached, on the device of the input.
        success: ``bool[N]``, the attack's own verdict on the model's prediction at ``x_adv``
            (misclassified, or equal to the target when targeted).
        distance: ``float[N]``, the attack's distance between ``x`` and ``x_adv``.
        steps: ``long[N]``, gradient updates applied to produce ``x_adv`` (for an early-stopped
            example, the step at which it first succeeded).
    """

    x_adv: torch.Tensor
    success: torch.Tensor
    distance: torch.Tensor
    steps: torch.Tensor

    def __post_init__(self) -> None:
        n = self.x_adv.shape[0]
        for name in ("success", "distance", "steps"):
            value = getattr(self, name)
            if value.shape != (n,):
                raise ValueError(f"{name}: expected shape ({n},), got {tuple(value.shape)}")

    @classmethod
    def empty(cls, x: torch.Tensor) -> AttackResult:
        """The result on an empty batch (N = 0): the ops accept one, so the attacks do too."""
        n_zero = torch.zeros(0, device=x.device)
        return cls(x_adv=x.detach().clone(), success=n_zero.bool(), distance=n_zero, steps=n_zero.long())

    def __len__(self) -> int:
        return self.x_adv.shape[0]

    @property
    def success_rate(self) -> float:
        return float(self.success.float().mean()) if len(self) else 0.0

    def to_records(self) -> List[Dict[str, Any]]:
        """One plain-Python dict per example: ``success``, ``distance``, ``steps``."""
        return [
            {"success": bool(s), "distance": float(d), "steps": int(k)}
            for s, d, k in zip(self.success.tolist(), self.distance.tolist(), self.steps.tolist())
        ]
