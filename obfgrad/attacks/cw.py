"""Carlini & Wagner's l2 attack (IEEE S&P 2017): the Lagrangian relaxation

    minimise_w  ||x_adv - x||_2^2 + c * f(x_adv),   x_adv = (tanh(w) + 1) / 2,

with ``f = max(z_y - max_{j!=y} z_j, -kappa)`` (untargeted) or ``max(max_{j!=t} z_j - z_t, -kappa)``
(targeted), solved with Adam for each ``c`` of a per-example binary search. The change of
variables keeps ``x_adv`` in the [0, 1] box without clipping. The attack returns, per example, the
successful point of smallest l2 distortion found over the whole search (the original ``x`` when
none succeeded). Athalye et al. use it for every l2 row of Table 1 (protocol.md, Sec. 2).
"""

from __future__ import annotations

from typing import Optional, Union

import torch

from obfgrad._checks import check_float, check_int
from obfgrad.attacks.adam import AdamAscent
from obfgrad.attacks.base import is_success, progress_bar
from obfgrad.attacks.inputs import check_model_and_inputs, checked_objective
from obfgrad.attacks.losses import expected_loss, loss_and_grad, margin
from obfgrad.attacks.result import AttackResult
from obfgrad.distances import L2, Distance, get_distance

__all__ = ["CarliniWagnerL2"]

# Search bounds from Carlini & Wagner's reference implementation: an upper bound of 1e10 means
# "no successful constant yet", and the constant grows tenfold until one succeeds.
_NO_UPPER_BOUND = 1e10
_TANH_SHRINK = 1 - 1e-6  # keeps atanh finite at pixels exactly 0 or 1


def checked_cw_settings(steps, lr, binary_search_steps, initial_const, kappa) -> tuple[int, float, int, float, float]:
    """Carlini & Wagner's optimisation settings, checked (in this order) and returned as given."""
    return (check_int(steps, "steps", low=0), check_float(lr, "lr", low=0.0, low_inclusive=False),
            check_int(binary_search_steps, "binary_search_steps", low=1),
            check_float(initial_const, "initial_const", low=0.0, low_inclusive=False),
            check_float(kappa, "kappa", low=0.0))


class CarliniWagnerL2:
    """Carlini-Wagner l2 attack with binary search over the constant c.

    Args:
        steps: Adam iterations per binary-search step.
        lr: Adam learning rate (on w, in tanh space).
        binary_search_steps: constants tried per example.
        initial_const: the first c.
        kappa: confidence margin; success requires beating the runner-up by more than kappa.
        abort_early: stop a binary-search step when the batch loss has not fallen by 0.01%
            over the last ``steps // 10`` iterations.
        targeted: reach ``target`` instead of leaving ``y``.
        distance: an l2 :class:`Distance` (or name) used to report ``distance``; the optimised
            penalty is always the plain squared l2 norm (normalisation only rescales c).
        progress: tqdm bar over all iterations.

    Example:
        >>> import torch
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
        >>> x, y = torch.full((2, 1, 2, 2), 0.5), torch.tensor([0, 1])
        >>> result = CarliniWagnerL2(steps=20, binary_search_steps=2)(model, x, y)
        >>> result.x_adv.shape
        torch.Size([2, 1, 2, 2])
    """

    def __init__(self, *, steps: int = 1000, lr: float = 0.01, binary_search_steps: int = 9,
                 initial_const: float = 1e-3, kappa: float = 0.0, abort_early: bool = True,
                 targeted: bool = False, distance: Union[str, Distance] = "l2", progress: bool = False):
        self.steps, self.lr, self.binary_search_steps, self.initial_const, self.kappa = checked_cw_settings(
            steps, lr, binary_search_steps, initial_const, kappa)
        self.abort_early = bool(abort_early)
        self.targeted = bool(targeted)
        self.distance = get_distance(distance)
        if not isinstance(self.distance, L2):
            raise ValueError(f"distance: expected an l2 distance, got {self.distance.name!r}")
        self.progress = bool(progress)

    def __repr__(self) -> str:
        return (f"CarliniWagnerL2(steps={self.steps}, lr={self.lr}, binary_search_steps={self.binary_search_steps}, "
                f"initial_const={self.initial_const}, kappa={self.kappa}, abort_early={self.abort_early}, "
                f"targeted={self.targeted}, distance={self.distance!r})")

    # -- the misclassification term ------------------------------------------------------------
    def _f(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """C&W's f_6 (to minimise): <= -kappa exactly when the example succeeds with margin kappa."""
        if self.targeted:
            return (-margin(logits, labels)).clamp_min(-self.kappa)
        return margin(logits, labels, self.kappa)

    def _succeeds(self, logits, y, target) -> torch.Tensor:
        labels = target if target is not None else y
        gap = margin(logits, labels)
        by_kappa = gap > self.kappa if self.targeted else gap < -self.kappa
        return by_kappa & is_success(logits, y, target)

    # -- public entry point --------------------------------------------------------------------
    def __call__(self, model, x: torch.Tensor, y: torch.Tensor,
                 target: Optional[torch.Tensor] = None) -> AttackResult:
        x, y, target = check_model_and_inputs(model, x, y, target, self.targeted)
        if x.shape[0] == 0:
            return AttackResult.empty(x)
        x = x.detach()
        n, device = x.shape[0], x.device
        labels = target if target is not None else y
        w_start = torch.atanh((2 * x - 1) * _TANH_SHRINK)

        lower = torch.zeros(n, dtype=torch.float64, device=device)
        upper = torch.full((n,), _NO_UPPER_BOUND, dtype=torch.float64, device=device)
        const = torch.full((n,), self.initial_const, dtype=torch.float64, device=device)
        best_l2sq = torch.full((n,), float("inf"), device=device)
        best_x = x.clone()
        best_steps = torch.zeros(n, dtype=torch.long, device=device)

        bar = progress_bar(self.steps * self.binary_search_steps, "CW-L2", self.progress)
        try:
            for search_step in range(self.binary_search_steps):
                succeeded = self._optimise(model, x, y, target, labels, w_start, const.to(x.dtype),
                                           best_l2sq, best_x, best_steps, bar, first=search_step == 0)
                lower, upper, const = self._next_const(succeeded, lower, upper, const)
        finally:
            bar.close()
        success = torch.isfinite(best_l2sq)
        return AttackResult(x_adv=best_x, success=success, distance=self.distance.norm(best_x - x).detach(),
                            steps=best_steps)

    def _optimise(self, model, x, y, target, labels, w_start, const, best_l2sq, best_x, best_steps, bar,
                  first: bool) -> torch.Tensor:
        """One binary-search step from ``x`` (C&W restart each constant from the original image);
        updates the best records in place and returns which examples succeeded at this c."""
        w = w_start.clone()
        adam = AdamAscent(w, self.lr)
        succeeded = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        check_every = max(self.steps // 10, 1)
        previous = float("inf")
        objective = lambda logits: self._f(logits, labels)  # noqa: E731
        for iteration in range(self.steps + 1):
            if first and iteration == 0:
                call = checked_objective(objective, labels, "target" if target is not None else "y")
            else:
                call = objective
            with torch.enable_grad():
                w_var = w.detach().requires_grad_(True)
                x_adv = (torch.tanh(w_var) + 1) / 2
                l2sq = (x_adv - x).flatten(1).pow(2).sum(dim=1)
            if iteration == self.steps:  # last point: a forward pass is enough
                with torch.no_grad():
                    f, logits = expected_loss(model, x_adv.detach(), call)
            else:  # df/dx_adv through the model (BPDA/EOT-aware), chained to w below
                f, grad_f, logits = loss_and_grad(model, x_adv.detach(), call)
            total = l2sq.detach() + const * f
            self._record(x_adv.detach(), l2sq.detach(), self._succeeds(logits.detach(), y, target),
                         iteration, best_l2sq, best_x, best_steps, succeeded)
            if iteration == self.steps:
                break
            with torch.enable_grad():
                # d/dw [l2sq + c * f(x_adv(w))] = d l2sq/dw + (c * df/dx_adv) . dx_adv/dw
                surrogate = l2sq.sum() + (x_adv * (const.view(-1, *[1] * (x.dim() - 1)) * grad_f)).sum()
                (grad,) = torch.autograd.grad(surrogate, w_var)
            w = w + adam.step(-grad)  # Adam descent on the C&W objective
            bar.update(1)
            if self.abort_early and iteration % check_every == 0:
                current = float(total.detach().sum())
                if current > previous * 0.9999:
                    bar.update(self.steps - iteration - 1)
                    break
                previous = current
        return succeeded

    @staticmethod
    def _record(x_adv, l2sq, success, iteration, best_l2sq, best_x, best_steps, succeeded) -> None:
        improved = success & (l2sq < best_l2sq)
        best_l2sq[improved] = l2sq[improved].to(best_l2sq.dtype)
        best_x[improved] = x_adv[improved]
        best_steps[improved] = iteration
        succeeded |= success

    @staticmethod
    def _next_const(succeeded, lower, upper, const):
        """Bisect c down after a success; after a failure bisect up, or grow 10x while unbounded."""
        upper = torch.where(succeeded, torch.minimum(upper, const), upper)
        lower = torch.where(succeeded, lower, torch.maximum(lower, const))
        bounded = upper < _NO_UPPER_BOUND / 10
        const = torch.where(bounded, (lower + upper) / 2, const * 10)
        return lower, upper, const
