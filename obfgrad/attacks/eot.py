"""Expectation over Transformation (Athalye, Engstrom, Ilyas & Kwok, ICML 2018; Athalye, Carlini &
Wagner, ICML 2018, Sec. 4.3).

A randomised defense ``f_r`` is attacked through the expected loss ``E_r[L(f_r(x))]``, whose
gradient is estimated by the mean of ``samples`` per-draw gradients ``(1/S) sum_s grad L(f_{r_s}(x))``.
:class:`EOT` is that estimator as an ``nn.Module``:

* as a model, ``eot(x)`` is the mean over draws of the logits (``reduction="logits"``) or the log of
  the mean softmax (``reduction="probs"``, e.g. Guo's crop ensemble);
* in attacks, it implements ``expected_loss(x, objective)`` (see
  :class:`obfgrad.attacks.losses.SupportsExpectedLoss`): the attack objective is evaluated on every
  draw's logits and averaged, so the attack's gradient is the mean of per-draw gradients, never the
  gradient at averaged logits.
"""

from __future__ import annotations

from typing import Callable, Tuple

import torch
from torch import nn

from obfgrad._checks import check_choice, check_int
from obfgrad.attacks import losses

__all__ = ["EOT", "REDUCTIONS"]

REDUCTIONS = ("logits", "probs")


class EOT(nn.Module):
    """Average a randomised model over ``samples`` draws of its randomness.

    Args:
        model: the randomised model or defense pipeline (``x -> logits (N, K)``), e.g.
            ``nn.Sequential(BPDA(random_transform), classifier)``, or a module with internal
            randomness; it may itself be an :class:`EOT`.
        samples: draws per call (S).
        reduction: ``"logits"`` (mean of logits) or ``"probs"`` (log of the mean softmax).
        batched: stack the S draws along the batch dimension for one forward pass of ``S*N``
            examples. Right when the model draws its randomness independently per example; set
            False for a model that draws one random transform per call (then S calls are made).

    Example:
        >>> import torch
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> noisy = lambda x: x.flatten(1)[:, :3] + 0.1 * torch.randn(x.shape[0], 3)
        >>> eot = EOT(noisy, samples=8)
        >>> eot(torch.zeros(2, 1, 2, 2)).shape
        torch.Size([2, 3])
    """

    def __init__(self, model: Callable[[torch.Tensor], torch.Tensor], samples: int = 10,
                 reduction: str = "logits", batched: bool = True):
        super().__init__()
        if not callable(model):
            raise TypeError(f"model: expected a callable or nn.Module, got {type(model).__name__}")
        self.model = model
        self.samples = check_int(samples, "samples", low=1)
        self.reduction = check_choice(reduction, "reduction", REDUCTIONS)
        self.batched = bool(batched)

    def extra_repr(self) -> str:
        return f"samples={self.samples}, reduction={self.reduction!r}, batched={self.batched}"

    # -- prediction ----------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.reduce(self.draw_logits(x))

    def draw_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of each draw, shape ``(S, N, K)``."""
        if self.batched:
            return self._check_logits(self.model(self._repeat(x)), x).view(self.samples, x.shape[0], -1)
        return torch.stack([self._check_logits(self.model(x), x, 1) for _ in range(self.samples)])

    def reduce(self, draws: torch.Tensor) -> torch.Tensor:
        """``(S, N, K)`` draw logits to prediction logits ``(N, K)``."""
        if self.reduction == "logits":
            return draws.mean(dim=0)
        # log mean_s softmax(z_s), computed stably in log space.
        log_probs = torch.log_softmax(draws, dim=-1)
        return torch.logsumexp(log_probs, dim=0) - torch.log(torch.tensor(float(draws.shape[0]),
                                                                          dtype=draws.dtype, device=draws.device))

    # -- attacks (SupportsExpectedLoss) --------------------------------------------------------
    def expected_loss(self, x: torch.Tensor, objective: losses.Objective) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(mean over draws of objective(draw logits), prediction logits)``; both differentiable.

        Nested wrappers compose: the wrapped model's own ``expected_loss`` is used when it has one.
        """
        n = x.shape[0]
        if self.batched:
            def per_draw(stacked_logits: torch.Tensor) -> torch.Tensor:
                return torch.cat([objective(chunk) for chunk in stacked_logits.split(n)])

            values, logits = losses.expected_loss(self.model, self._repeat(x), per_draw)
            self._check_logits(logits, x)
            return values.view(self.samples, n).mean(dim=0), self.reduce(logits.view(self.samples, n, -1))
        values, logits = zip(*(losses.expected_loss(self.model, x, objective) for _ in range(self.samples)))
        return torch.stack(values).mean(dim=0), self.reduce(torch.stack(logits))

    # -- helpers -------------------------------------------------------------------------------
    def _repeat(self, x: torch.Tensor) -> torch.Tensor:
        # Draw-major order: rows [s*N, (s+1)*N) are draw s of the whole batch.
        return x.repeat((self.samples,) + (1,) * (x.dim() - 1))

    def _check_logits(self, logits, x: torch.Tensor, draws: int = None) -> torch.Tensor:
        rows = x.shape[0] * (self.samples if draws is None else draws)
        if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or logits.shape[0] != rows:
            shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
            raise ValueError(f"model: expected logits of shape ({rows}, K), got {shape}")
        return logits
