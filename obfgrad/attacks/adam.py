"""Adam for attacks: per-example state, in-place on a batch, as gradient ASCENT.

Written out here rather than using ``torch.optim.Adam`` so that an attack can update only the
examples still running (early stop), and because the first ``torch.optim`` step imports
``torch._dynamo`` (seconds of one-off start-up).
"""

from __future__ import annotations

from typing import Optional

import torch

__all__ = ["AdamAscent"]


class AdamAscent:
    """Per-example Adam state for gradient *ascent* (Kingma & Ba 2015, Algorithm 1).

    The moments are kept for the whole batch and indexed by the examples still running; all of
    them have taken the same number of steps, so one step counter serves the batch.
    """

    def __init__(self, like: torch.Tensor, lr: float, betas=(0.9, 0.999), eps: float = 1e-8):
        self.m = torch.zeros_like(like)
        self.v = torch.zeros_like(like)
        self.lr, self.betas, self.eps = lr, betas, eps
        self.t = 0

    def step(self, grad: torch.Tensor, rows: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The ascent update (to add to the variable) for ``grad`` of the examples ``rows``
        (all examples when None)."""
        beta1, beta2 = self.betas
        self.t += 1
        if rows is None:
            m = self.m.mul_(beta1).add_(grad, alpha=1 - beta1)
            v = self.v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        else:
            m = self.m[rows].mul_(beta1).add_(grad, alpha=1 - beta1)
            v = self.v[rows].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            self.m[rows], self.v[rows] = m, v
        m_hat = m / (1 - beta1 ** self.t)
        v_hat = v / (1 - beta2 ** self.t)
        return self.lr * m_hat / (v_hat.sqrt() + self.eps)
