"""Per-example attack losses on logits, and the one function attacks use to get a loss and its
gradient from a model.

Convention: an *objective* maps logits ``(N, K)`` to a per-example value ``(N,)`` that the attack
**maximises**. :func:`make_objective` builds it from a loss name:

* ``"ce"``: untargeted ``CE(z, y)``; targeted to ``t``: ``-CE(z, t)``.
* ``"margin"``: untargeted ``-max(z_y - max_{j!=y} z_j, -kappa)``; targeted
  ``-max(max_{j!=t} z_j - z_t, -kappa)``.

The margin is Carlini & Wagner's f_6 (S&P 2017); with ``kappa=None`` there is no floor and the
attack keeps pushing the margin ("high confidence" PGD of the LID break, protocol.md row 2).

Expectation over transformation plugs in through :func:`expected_loss`: a model that defines
``expected_loss(x, objective) -> (loss (N,), logits (N, K))`` (the :class:`SupportsExpectedLoss`
protocol, implemented by :class:`obfgrad.attacks.EOT`) computes the objective per random draw and
averages it, so the gradient every attack uses is the mean of the per-draw gradients
(Athalye et al. 2018, Sec. 4.3), never the gradient at averaged logits.
"""

from __future__ import annotations

from typing import Callable, Optional, Protocol, Tuple, runtime_checkable

import torch
import torch.nn.functional as F

from obfgrad.attacks.inputs import check_logits

__all__ = [
    "LOSSES",
    "Objective",
    "SupportsExpectedLoss",
    "cross_entropy",
    "margin",
    "make_objective",
    "expected_loss",
    "loss_and_grad",
    "gradient_wrt",
    "NoGradientError",
]

LOSSES = ("ce", "margin")

Objective = Callable[[torch.Tensor], torch.Tensor]


@runtime_checkable
class SupportsExpectedLoss(Protocol):
    """A (randomised) model that averages an objective over its own random draws.

    :func:`expected_loss` and :func:`loss_and_grad` look the methods up by name (duck typing);
    ``loss_and_grad`` is optional and lets the model differentiate in pieces to bound memory.
    """

    def expected_loss(self, x: torch.Tensor, objective: Objective) -> Tuple[torch.Tensor, torch.Tensor]:
        """Return ``(mean over draws of objective(logits_draw), prediction logits)``, both
        differentiable w.r.t. ``x``; shapes ``(N,)`` and ``(N, K)``."""
        ...

    def loss_and_grad(self, x: torch.Tensor, objective: Objective
                      ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return ``(expected objective, its gradient w.r.t. x, prediction logits)``, detached."""
        ...


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-example cross-entropy ``-log softmax(z)_y``, shape ``(N,)``."""
    return F.cross_entropy(logits, labels, reduction="none")


def margin(logits: torch.Tensor, labels: torch.Tensor, kappa: Optional[float] = None) -> torch.Tensor:
    """Carlini-Wagner margin ``z_y - max_{j != y} z_j``, floored at ``-kappa`` when kappa is given.

    Negative means the model prefers another class to ``labels``.
    """
    true_logit = logits.gather(1, labels[:, None]).squeeze(1)
    others = logits.scatter(1, labels[:, None], float("-inf"))
    value = true_logit - others.amax(dim=1)
    if kappa is not None:
        value = value.clamp_min(-float(kappa))
    return value


def make_objective(loss: str, labels: torch.Tensor, *, targeted: bool = False,
                   kappa: Optional[float] = None) -> Objective:
    """The per-example objective to maximise; ``labels`` are true labels or targets (targeted)."""
    if loss == "ce":
        if targeted:
            return lambda logits: -cross_entropy(logits, labels)
        return lambda logits: cross_entropy(logits, labels)
    if loss == "margin":
        if targeted:
            # -max(max_{j!=t} z_j - z_t, -kappa) = min(z_t - max_{j!=t} z_j, kappa)
            ceiling = float("inf") if kappa is None else float(kappa)
            return lambda logits: margin(logits, labels).clamp_max(ceiling)
        return lambda logits: -margin(logits, labels, kappa)
    raise ValueError(f"loss: expected one of {', '.join(map(repr, LOSSES))}, got {loss!r}")


def expected_loss(model, x: torch.Tensor, objective: Objective) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(objective per example, prediction logits)`` at ``x``, differentiable.

    Models implementing :class:`SupportsExpectedLoss` (EOT) average the objective over draws;
    any other callable is evaluated once.
    """
    # A duck-typed look-up: isinstance() on a runtime Protocol costs ~0.1 ms per call, per step.
    model_expected_loss = getattr(model, "expected_loss", None)
    if callable(model_expected_loss):
        return model_expected_loss(x, objective)
    logits = check_logits(model(x), x.shape[0])
    return objective(logits), logits


def loss_and_grad(model, x: torch.Tensor, objective: Objective
                  ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(objective (N,), d objective / dx (N, ...), prediction logits (N, K))``, all detached.

    Examples are independent (the objective is summed before differentiation), so the gradient of
    row ``i`` is the gradient of example ``i``'s objective alone. A model with its own
    ``loss_and_grad(x, objective)`` method (EOT) computes the triple itself.
    """
    model_loss_and_grad = getattr(model, "loss_and_grad", None)
    if callable(model_loss_and_grad):  # EOT: differentiates pass by pass to bound memory
        return model_loss_and_grad(x, objective)
    x_var = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        value, logits = expected_loss(model, x_var, objective)
        grad = gradient_wrt(value.sum(), x_var)
    return value.detach(), grad.detach(), logits.detach()


class NoGradientError(RuntimeError):
    """The model's output is cut from the autograd graph of its input. ``output_in_graph``: the
    output still depends on other tensors requiring grad (trainable weights), so the input's
    gradient is zero rather than undefined."""

    def __init__(self, message: str, output_in_graph: bool = False):
        super().__init__(message)
        self.output_in_graph = output_in_graph


def gradient_wrt(total: torch.Tensor, x_var: torch.Tensor) -> torch.Tensor:
    """``d total / d x_var``, or :class:`NoGradientError` when ``x_var`` is not in the graph at all.

    A silent zero gradient there would let every gradient attack fail and report the model
    robust. A model whose true gradient is zero says so explicitly (e.g. ``0 * x`` in the graph,
    as ``ThermometerDefense(gradient="true")`` does) and gets zeros."""
    grad = None
    if total.requires_grad:
        (grad,) = torch.autograd.grad(total, x_var, allow_unused=True)
    if grad is None:
        raise NoGradientError(
            "model: no gradient reaches x (a step cuts x from the autograd graph, e.g. .detach(), numpy, or "
            "torch.no_grad): wrap non-differentiable steps in obfgrad.attacks.BPDA",
            output_in_graph=total.requires_grad)
    return grad
