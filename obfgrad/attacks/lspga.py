"""Logit-Space Projected Gradient Ascent (LS-PGA), the attack Buckman et al. (ICLR 2018,
Algorithm 3) designed for thermometer-encoded inputs.

The attack never differentiates the encoding. For each pixel value it keeps a vector of
*activation logits* ``u`` over the ``L`` quantisation levels; only the levels reachable inside
the eps-ball are allowed (the mask). Each step relaxes the one-hot choice of a level into

.. math::  z = \\mathrm{softmax}(\\beta\\,(u \\odot m - 999999\\,(1-m))),\\qquad
           \\tau_k = \\sum_{j \\ge k} z_j   \\quad(\\text{soft thermometer code}),

feeds ``\\tau`` to the classifier on codes, and moves ``u`` by ``step * sign(d loss / d u)``;
the inverse temperature ``beta`` is multiplied by ``anneal`` after every step. The result is the
one-hot ``argmax`` of the masked logits, as a thermometer code.

Constants follow the authors' ``thermometer/discretization_attacks.py:adv_lspga``
(anishathalye/obfuscated-gradients) and protocol.md row 1: 7 steps of 0.01 at inv_temp 1,
anneal 1.2, random normal start. That code overwrites ``sign(grad)`` with the raw gradient (a
quirk); ``update="raw"`` reproduces it, ``"sign"`` (default) is the paper's algorithm.

Unlike the original (which returns a code), :class:`LSPGA` maps the chosen levels back to an
image inside the eps-ball (each pixel moved the least distance into its chosen bucket), so the
result is checked and judged like any other attack's.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch

from obfgrad._checks import check_choice, check_float, check_int
from obfgrad.attacks.base import progress_bar
from obfgrad.attacks.inputs import check_attack_inputs, check_logits
from obfgrad.attacks.losses import LOSSES, make_objective
from obfgrad.attacks.result import AttackResult
from obfgrad.distances import get_distance

__all__ = ["LSPGA", "reachable_levels", "levels_to_image", "soft_code"]

_MASKED = 999999.0  # the authors' constant for levels outside the mask
# Bucket index b(x) = floor(0.99999 * L * x), as obfgrad.ops.thermometer_op / discretize_uniform.
_SHRINK = 0.99999


def _buckets(x: torch.Tensor, levels: int) -> torch.Tensor:
    scale = torch.tensor(_SHRINK, dtype=torch.float32) * float(levels)
    return torch.floor(x.to(torch.float32).clamp(0.0, 1.0) * scale.to(x.device)).long()


def reachable_levels(x: torch.Tensor, eps: float, levels: int) -> torch.Tensor:
    """Mask ``(N, C, H, W, L)``: level ``j`` is reachable from pixel ``x`` within ``eps``
    (``b(x - eps) <= j <= b(x + eps)``, with ``x -+ eps`` clipped to [0, 1])."""
    low = _buckets(x - eps, levels).unsqueeze(-1)
    high = _buckets(x + eps, levels).unsqueeze(-1)
    j = torch.arange(levels, device=x.device)
    return ((j >= low) & (j <= high)).to(torch.float32)


def soft_code(logits: torch.Tensor, mask: torch.Tensor, inv_temp: float) -> torch.Tensor:
    """Soft thermometer code ``(N, C*L, H, W)`` of the masked activation logits ``(N, C, H, W, L)``."""
    probs = torch.softmax(inv_temp * (logits * mask - _MASKED * (1.0 - mask)), dim=-1)
    code = probs.flip(-1).cumsum(-1).flip(-1)  # tau_k = sum_{j >= k} z_j
    n, c, h, w, levels = code.shape
    return code.permute(0, 1, 4, 2, 3).reshape(n, c * levels, h, w)


def levels_to_image(x: torch.Tensor, chosen: torch.Tensor, eps: float, levels: int) -> torch.Tensor:
    """The image closest to ``x`` (per pixel) whose bucket is ``chosen``, within the eps-ball.

    ``chosen`` must be reachable (see :func:`reachable_levels`). Bucket ``j`` is
    ``[j / s, (j + 1) / s)`` with ``s = 0.99999 L``; points are nudged inside by 1e-4 of a bucket
    so float rounding cannot put them in the neighbour.
    """
    s = _SHRINK * levels
    current = _buckets(x, levels)
    lower_edge = (chosen.to(torch.float32) + 1e-4) / s
    upper_edge = (chosen.to(torch.float32) + 1.0 - 1e-4) / s
    moved = torch.where(chosen > current, lower_edge, torch.where(chosen < current, upper_edge, x))
    moved = torch.minimum(torch.maximum(moved, x - eps), x + eps)
    return moved.clamp(0.0, 1.0)


class LSPGA:
    """LS-PGA against a thermometer-encoded model (l-inf threat model).

    The model must expose ``levels`` and ``classifier`` (the network on codes), as
    :class:`obfgrad.defenses.ThermometerDefense` does.

    Args:
        eps: l-inf budget on the [0, 1] scale.
        steps: ascent steps (7 in Buckman et al.'s adversarial training).
        step_size: logit step (0.01 in the authors' code).
        inv_temp: initial inverse temperature of the relaxation (1).
        anneal: factor applied to ``inv_temp`` after every step (1.2).
        loss: ``"ce"`` (the authors') or ``"margin"``.
        random_start: start from ``u ~ N(0, 1)`` (the authors' ``noisy_grads``) instead of 0.
        update: ``"sign"`` (the paper) or ``"raw"`` (the authors' code, see the module docstring).
        seed: seed of the random start (None: torch's global generator).
        progress: show a tqdm bar over the steps (quiet when not on a terminal).

    Example:
        >>> import torch
        >>> from obfgrad.defenses import ThermometerDefense
        >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16 * 4, 3))
        >>> result = LSPGA(0.1, steps=3)(ThermometerDefense(net), torch.rand(2, 1, 2, 2), torch.tensor([0, 1]))
        >>> bool((result.distance <= 0.1 + 1e-6).all())
        True
    """

    def __init__(self, eps: float, *, steps: int = 7, step_size: float = 0.01, inv_temp: float = 1.0,
                 anneal: float = 1.2, loss: str = "ce", random_start: bool = True, update: str = "sign",
                 seed: Optional[int] = None, progress: bool = False):
        self.eps = check_float(eps, "eps", low=0.0, low_inclusive=False)
        self.steps = check_int(steps, "steps", low=0)
        self.step_size = check_float(step_size, "step_size", low=0.0, low_inclusive=False)
        self.inv_temp = check_float(inv_temp, "inv_temp", low=0.0, low_inclusive=False)
        self.anneal = check_float(anneal, "anneal", low=0.0, low_inclusive=False)
        self.loss = check_choice(loss, "loss", LOSSES)
        self.random_start = bool(random_start)
        self.update = check_choice(update, "update", ("sign", "raw"))
        self.seed = None if seed is None else check_int(seed, "seed")
        self.progress = bool(progress)
        self._distance = get_distance("linf")

    def __repr__(self) -> str:
        return (f"LSPGA(eps={self.eps}, steps={self.steps}, step_size={self.step_size}, inv_temp={self.inv_temp}, "
                f"anneal={self.anneal}, loss={self.loss!r}, random_start={self.random_start}, update={self.update!r})")

    def ascend(self, classifier, x: torch.Tensor, y: torch.Tensor, levels: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """Run the ascent; return ``(activation logits u, mask)``, both ``(N, C, H, W, L)``."""
        mask = reachable_levels(x, self.eps, levels)
        if self.random_start:
            generator = torch.Generator().manual_seed(self.seed) if self.seed is not None else None
            u = torch.randn(mask.shape, generator=generator).to(x.device)
        else:
            u = torch.zeros_like(mask)
        objective = make_objective(self.loss, y, kappa=None)
        inv_temp = self.inv_temp
        with progress_bar(self.steps, "LS-PGA", self.progress) as bar:
            for _ in range(self.steps):
                u_var = u.clone().requires_grad_(True)
                with torch.enable_grad():
                    value = objective(check_logits(classifier(soft_code(u_var, mask, inv_temp)), x.shape[0],
                                                   "model.classifier"))
                    (grad,) = torch.autograd.grad(value.sum(), u_var)
                u = u + self.step_size * (grad.sign() if self.update == "sign" else grad)
                inv_temp *= self.anneal
                bar.update(1)
        return u, mask

    def __call__(self, model, x: torch.Tensor, y: torch.Tensor, target: Optional[torch.Tensor] = None) -> AttackResult:
        if target is not None:
            raise ValueError("target: LSPGA is untargeted")
        x, y, _ = check_attack_inputs(x, y, None, False)
        levels, classifier = getattr(model, "levels", None), getattr(model, "classifier", None)
        if not isinstance(levels, int) or not callable(classifier):
            raise TypeError("model: LSPGA needs a thermometer model with `levels` and `classifier` "
                            "(obfgrad.defenses.ThermometerDefense)")
        if x.shape[0] == 0:
            return AttackResult.empty(x)
        x = x.detach()
        u, mask = self.ascend(classifier, x, y, levels)
        chosen = (u * mask - _MASKED * (1.0 - mask)).argmax(dim=-1)
        x_adv = levels_to_image(x, chosen, self.eps, levels)
        with torch.no_grad():
            success = check_logits(model(x_adv), x.shape[0]).argmax(dim=1) != y
        return AttackResult(x_adv=x_adv, success=success, distance=self._distance.norm(x_adv - x),
                            steps=torch.full_like(y, self.steps))
