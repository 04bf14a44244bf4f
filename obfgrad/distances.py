"""Distances between a clean batch and its adversarial batch: the one place that owns norms,
their normalisations, projections and the threat-model check.

Every distance is an object (as in foolbox 3) rather than a flag, so attacks and the evaluator
share one definition. Values are always per example: ``distance(x, x_adv)`` has shape ``(N,)``.

The l2 normalisations are exactly those of ``protocol.md`` (Athalye, Carlini & Wagner, ICML 2018):

* ``"none"``        -- plain ``||delta||_2``.
* ``"rms_pixels"``  -- Guo et al. row: ``||delta||_2 / sqrt(H*W)``; the repo's robustml bound
  ``0.05 * 299`` at 299x299 is this distance <= 0.05.
* ``"per_value"``   -- Defense-GAN row: ``||delta||_2 / (C*H*W)``; the bound 0.005 on MNIST is
  ``||delta||_2 <= 0.005 * 784 = 3.92``.

Example:
    >>> import torch
    >>> from obfgrad.distances import get_distance
    >>> x = torch.zeros(1, 1, 28, 28)
    >>> x_adv = x.clone(); x_adv[0, 0, 0, 0] = 0.784
    >>> round(float(get_distance("l2_per_value")(x, x_adv)), 6)
    0.001
"""

from __future__ import annotations

import math
from typing import Optional, Union

import torch

from obfgrad._checks import check_choice, check_float, check_images

__all__ = ["Distance", "LInf", "L2", "get_distance", "L2_NORMALIZATIONS", "DISTANCE_NAMES"]

# Tolerance of the robustml threat-model check (robustml `threat_model.py`, Lp.check).
ROBUSTML_TOLERANCE = 1e-4

L2_NORMALIZATIONS = ("none", "rms_pixels", "per_value")
DISTANCE_NAMES = ("linf", "l2", "l2_rms_pixels", "l2_per_value")


def _flat(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1)  # also for an empty batch, where reshape(0, -1) is ambiguous


def _per_example(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Reshape an (N,) tensor so it broadcasts against an NCHW tensor."""
    return values.reshape((-1,) + (1,) * (like.dim() - 1))


def _eps_tensor(eps, like: torch.Tensor) -> torch.Tensor:
    """A per-example budget as a broadcastable tensor; ``eps`` is a number or an (N,) tensor."""
    if isinstance(eps, torch.Tensor):
        if eps.dim() == 0:
            eps = eps.expand(like.shape[0])
        if eps.shape != (like.shape[0],):
            raise ValueError(f"eps: expected a number or a tensor of shape ({like.shape[0]},), got {tuple(eps.shape)}")
        if eps.numel() and not bool((torch.isfinite(eps) & (eps >= 0)).all()):  # NaN would pass into x_adv
            raise ValueError("eps: expected finite budgets >= 0 in the tensor")
        return _per_example(eps.to(device=like.device, dtype=like.dtype), like)
    check_float(eps, "eps", low=0.0)
    return torch.full(_per_example(torch.empty(like.shape[0]), like).shape, float(eps),
                      device=like.device, dtype=like.dtype)


def _check_pair(x: torch.Tensor, x_adv: torch.Tensor) -> None:
    check_images(x, "x", in_unit_range=False)
    check_images(x_adv, "x_adv", in_unit_range=False)
    if x.shape != x_adv.shape:
        raise ValueError(f"x_adv: expected the shape of x {tuple(x.shape)}, got {tuple(x_adv.shape)}")


class Distance:
    """A per-example distance with its projection and the threat-model check.

    Subclasses implement :meth:`norm` (the distance of a perturbation), :meth:`project_ball`,
    :meth:`unit_direction` (the steepest-ascent direction of unit distance for a gradient) and
    :meth:`random_point`.
    """

    name: str = "distance"

    # -- the distance itself -------------------------------------------------------------------
    def norm(self, delta: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, x: torch.Tensor, x_adv: torch.Tensor) -> torch.Tensor:
        """Per-example distance ``d(x, x_adv)``, shape ``(N,)``, floating point (float32 or wider)."""
        _check_pair(x, x_adv)
        dtype = torch.promote_types(x.dtype, torch.float32)
        return self.norm(x_adv.detach().to(dtype) - x.detach().to(dtype))

    # -- projections ---------------------------------------------------------------------------
    def project_ball(self, delta: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def project(self, x: torch.Tensor, x_adv: torch.Tensor, eps) -> torch.Tensor:
        """The point ``x + delta`` with ``delta`` projected into the eps-ball, then clipped to [0, 1].

        Clipping to the box after the ball projection keeps the point in the ball: ``x`` lies in
        the box, so clipping moves every coordinate of ``delta`` towards 0 and no norm grows.
        """
        eps_t = _eps_tensor(eps, x)
        delta = self.project_ball(x_adv - x, eps_t)
        return (x + delta).clamp(0.0, 1.0)

    def unit_direction(self, grad: torch.Tensor) -> torch.Tensor:
        """The gradient rescaled per example to distance 1 (the normalised steepest-ascent step)."""
        raise NotImplementedError

    def random_point(self, x: torch.Tensor, eps, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """A random point of the eps-ball around ``x`` (uniform in the ball), clipped to [0, 1].

        Random numbers are drawn on the generator's device (CPU by default) and moved to ``x``'s
        device, so one seed gives the same start on CPU and GPU.
        """
        raise NotImplementedError

    # -- threat model --------------------------------------------------------------------------
    def within(self, x: torch.Tensor, x_adv: torch.Tensor, eps, tol: float = ROBUSTML_TOLERANCE) -> torch.Tensor:
        """robustml's ``Lp.check``, per example: False if any pixel of ``x_adv`` is outside
        ``[-tol, 1 + tol]`` or the distance exceeds the budget by more than ``tol``.

        As in robustml, ``tol`` applies to the un-normalised norm (robustml states Guo's bound as
        ``||delta||_2 <= 0.05 * 299``), so for a normalised l2 the check is
        ``distance <= eps + tol * scale``. The norm is computed in float64.
        """
        _check_pair(x, x_adv)
        check_float(tol, "tol", low=0.0)
        flat = _flat(x_adv.detach())
        in_box = (flat >= -tol).all(dim=1) & (flat <= 1.0 + tol).all(dim=1)
        eps_t = _eps_tensor(eps, x).reshape(-1).to(torch.float64)
        distance = self.norm(x_adv.detach().to(torch.float64) - x.detach().to(torch.float64))
        return in_box & (distance <= eps_t + tol * self.raw_norm_scale(x.shape))

    def raw_norm_scale(self, shape) -> float:
        """Factor from the un-normalised norm to this distance (1 unless normalised)."""
        return 1.0

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    def __eq__(self, other) -> bool:
        return type(self) is type(other) and repr(self) == repr(other)

    def __hash__(self) -> int:
        return hash(repr(self))


class LInf(Distance):
    """``max_i |delta_i|`` on the [0, 1] pixel scale (0.031 = 8/255)."""

    name = "linf"

    def norm(self, delta: torch.Tensor) -> torch.Tensor:
        return _flat(delta).abs().amax(dim=1)

    def project_ball(self, delta: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        return torch.maximum(torch.minimum(delta, eps), -eps)

    def unit_direction(self, grad: torch.Tensor) -> torch.Tensor:
        return grad.sign()

    def random_point(self, x: torch.Tensor, eps, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        eps_t = _eps_tensor(eps, x)
        gen_device = generator.device if generator is not None else torch.device("cpu")
        u = torch.rand(x.shape, generator=generator, device=gen_device, dtype=torch.float32)
        delta = (2.0 * u.to(device=x.device, dtype=x.dtype) - 1.0) * eps_t
        return (x + delta).clamp(0.0, 1.0)


class L2(Distance):
    """``||delta||_2`` divided by a normalisation that depends on the image size.

    Args:
        normalization: ``"none"``, ``"rms_pixels"`` (divide by ``sqrt(H*W)``, Guo et al.) or
            ``"per_value"`` (divide by ``C*H*W``, Defense-GAN). See ``protocol.md``.
    """

    def __init__(self, normalization: str = "none"):
        self.normalization = check_choice(normalization, "normalization", L2_NORMALIZATIONS)
        self.name = "l2" if normalization == "none" else f"l2_{normalization}"

    def raw_norm_scale(self, shape) -> float:
        return self.scale(shape)

    def scale(self, shape) -> float:
        """Factor ``s`` with ``distance = s * ||delta||_2`` for images of this NCHW shape."""
        _, c, h, w = shape
        if self.normalization == "rms_pixels":
            return 1.0 / math.sqrt(h * w)
        if self.normalization == "per_value":
            return 1.0 / (c * h * w)
        return 1.0

    def norm(self, delta: torch.Tensor) -> torch.Tensor:
        return _flat(delta).norm(p=2, dim=1) * self.scale(delta.shape)

    def project_ball(self, delta: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        norms = _per_example(self.norm(delta), delta)
        # Shrink only the examples outside the ball; the tiny floor avoids 0/0.
        factor = torch.where(norms > eps, eps / norms.clamp_min(1e-12), torch.ones_like(norms))
        return delta * factor

    def unit_direction(self, grad: torch.Tensor) -> torch.Tensor:
        # Divide by the largest entry first: gradients of confident models can be ~1e-22, whose
        # squares underflow in float32 and would give a zero norm.
        peak = _per_example(_flat(grad).abs().amax(dim=1), grad).clamp_min(torch.finfo(grad.dtype).tiny)
        scaled = grad / peak
        norms = _per_example(self.norm(scaled), grad)
        return scaled / norms.clamp_min(torch.finfo(grad.dtype).tiny)

    def random_point(self, x: torch.Tensor, eps, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        # Uniform in the ball: a uniform direction (normalised Gaussian) and radius eps * U^(1/d).
        eps_t = _eps_tensor(eps, x)
        gen_device = generator.device if generator is not None else torch.device("cpu")
        gauss = torch.randn(x.shape, generator=generator, device=gen_device, dtype=torch.float32)
        u = torch.rand(x.shape[0], generator=generator, device=gen_device, dtype=torch.float64)
        dims = x[0].numel()
        radius = _per_example(u.pow(1.0 / max(dims, 1)), x).to(device=x.device, dtype=x.dtype)
        direction = self.unit_direction(gauss.to(device=x.device, dtype=x.dtype))
        return (x + direction * radius * eps_t).clamp(0.0, 1.0)

    def __repr__(self) -> str:
        return f"L2(normalization={self.normalization!r})"


_BY_NAME = {
    "linf": LInf,
    "l2": lambda: L2("none"),
    "l2_rms_pixels": lambda: L2("rms_pixels"),
    "l2_per_value": lambda: L2("per_value"),
}


def get_distance(distance: Union[str, Distance]) -> Distance:
    """A :class:`Distance` from its name (``"linf"``, ``"l2"``, ``"l2_rms_pixels"``,
    ``"l2_per_value"``) or the object itself."""
    if isinstance(distance, Distance):
        return distance
    if not isinstance(distance, str):
        raise TypeError(f"distance: expected a name or a Distance, got {type(distance).__name__}")
    check_choice(distance, "distance", DISTANCE_NAMES)
    return _BY_NAME[distance]()
