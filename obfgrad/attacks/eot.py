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

import math
from typing import Callable, List, Optional, Tuple

import torch
from torch import nn

from obfgrad._checks import check_choice, check_int
from obfgrad.attacks import losses
from obfgrad.attacks.inputs import check_logits

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
        draws_per_pass: draws stacked along the batch dimension in one forward pass (``k*N``
            rows). None (default) stacks all S draws: right for a model that draws its randomness
            independently per example. Use 1 for a model that draws one random transform per
            call (then S calls are made), or a small k to bound memory: in attacks, the gradient
            of each pass is taken before the next pass runs.

    Example:
        >>> import torch
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> noisy = lambda x: x.flatten(1)[:, :3] + 0.1 * torch.randn(x.shape[0], 3)
        >>> eot = EOT(noisy, samples=8)
        >>> eot(torch.zeros(2, 1, 2, 2)).shape
        torch.Size([2, 3])
    """

    def __init__(self, model: Callable[[torch.Tensor], torch.Tensor], *, samples: int = 10,
                 reduction: str = "logits", draws_per_pass: Optional[int] = None):
        super().__init__()
        if not callable(model):
            raise TypeError(f"model: expected a callable or nn.Module, got {type(model).__name__}")
        self.model = model
        self.samples = check_int(samples, "samples", low=1)
        self.reduction = check_choice(reduction, "reduction", REDUCTIONS)
        self.draws_per_pass = None if draws_per_pass is None else check_int(draws_per_pass, "draws_per_pass", low=1)

    def extra_repr(self) -> str:
        return f"samples={self.samples}, reduction={self.reduction!r}, draws_per_pass={self.draws_per_pass}"

    # -- prediction ----------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.reduce(self.draw_logits(x))

    def draw_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of each draw, shape ``(S, N, K)``."""
        return torch.cat([self._pass(x, k)[1] for k in self._pass_sizes()])

    def reduce(self, draws: torch.Tensor) -> torch.Tensor:
        """``(S, N, K)`` draw logits to prediction logits ``(N, K)``."""
        if self.reduction == "logits":
            return draws.mean(dim=0)
        # log mean_s softmax(z_s), computed stably in log space.
        log_probs = torch.log_softmax(draws, dim=-1)
        return torch.logsumexp(log_probs, dim=0) - math.log(draws.shape[0])

    # -- attacks (SupportsExpectedLoss) --------------------------------------------------------
    def expected_loss(self, x: torch.Tensor, objective: losses.Objective) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(mean over draws of objective(draw logits), prediction logits)``; both differentiable.

        Nested wrappers compose: the wrapped model's own ``expected_loss`` is used when it has one.
        """
        values, logits = zip(*(self._pass(x, k, objective) for k in self._pass_sizes()))
        return torch.cat(values).mean(dim=0), self.reduce(torch.cat(logits))

    def loss_and_grad(self, x: torch.Tensor, objective: losses.Objective
                      ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(mean objective, mean of per-draw gradients, prediction logits)``, detached.

        Differentiates pass by pass, so only one pass's graph is alive at a time.
        """
        value_sum, grad_sum, all_logits = 0.0, torch.zeros_like(x), []
        for k in self._pass_sizes():
            x_var = x.detach().clone().requires_grad_(True)
            with torch.enable_grad():
                values, logits = self._pass(x_var, k, objective)
                grad = losses.gradient_wrt(values.sum(), x_var)
            value_sum = value_sum + values.detach().sum(dim=0)
            grad_sum += grad
            all_logits.append(logits.detach())
        return value_sum / self.samples, grad_sum / self.samples, self.reduce(torch.cat(all_logits))

    # -- helpers -------------------------------------------------------------------------------
    def _pass_sizes(self) -> List[int]:
        per_pass = self.samples if self.draws_per_pass is None else min(self.draws_per_pass, self.samples)
        sizes = [per_pass] * (self.samples // per_pass)
        if self.samples % per_pass:
            sizes.append(self.samples % per_pass)
        return sizes

    def _pass(self, x: torch.Tensor, draws: int, objective: Optional[losses.Objective] = None
              ) -> Tuple[Optional[torch.Tensor], torch.Tensor]:
        """``draws`` draws of the whole batch in one call: ``(objective (draws, N) or None,
        logits (draws, N, K))``. Rows ``[s*N, (s+1)*N)`` of the stacked batch are draw ``s``."""
        n = x.shape[0]
        stacked = x if draws == 1 else x.repeat((draws,) + (1,) * (x.dim() - 1))
        if objective is None:
            return None, self._check_logits(self.model(stacked), stacked.shape[0]).view(draws, n, -1)

        def per_draw(stacked_logits: torch.Tensor) -> torch.Tensor:
            return torch.cat([objective(chunk) for chunk in stacked_logits.split(n)])

        values, logits = losses.expected_loss(self.model, stacked, per_draw)
        self._check_logits(logits, stacked.shape[0])
        return values.view(draws, n), logits.view(draws, n, -1)

    @staticmethod
    def _check_logits(logits, rows: int) -> torch.Tensor:
        return check_logits(logits, rows)
