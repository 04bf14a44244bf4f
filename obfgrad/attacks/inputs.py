"""Validation of what an attack is called with (done once, at the public boundary)."""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import nn

from obfgrad._checks import check_images, check_tensor


def check_labels(labels, name: str, n: int, device: torch.device) -> torch.Tensor:
    """An integer tensor of shape ``(n,)`` with non-negative entries, moved to ``device``."""
    check_tensor(labels, name)
    if labels.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8, torch.int8):
        raise TypeError(f"{name}: expected an integer (long) tensor of class indices, got {labels.dtype}")
    if labels.shape != (n,):
        raise ValueError(f"{name}: expected shape ({n},) to match x, got {tuple(labels.shape)}")
    if n and int(labels.min()) < 0:
        raise ValueError(f"{name}: expected class indices >= 0, got {int(labels.min())}")
    return labels.to(device=device, dtype=torch.long)


def check_attack_inputs(x, y, target, targeted: bool
                        ) -> Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    """``x`` float NCHW in [0, 1]; ``y`` and ``target`` long ``(N,)``; target given iff targeted."""
    check_images(x, "x")
    y = check_labels(y, "y", x.shape[0], x.device)
    if targeted and target is None:
        raise ValueError("target: required when the attack is targeted (targeted=True)")
    if not targeted and target is not None:
        raise ValueError("target: given, but the attack was built with targeted=False")
    if target is not None:
        target = check_labels(target, "target", x.shape[0], x.device)
    return x, y, target


class NonFiniteOutputError(ValueError):
    """A model returned NaN or Inf logits: no attack, evaluation or diagnosis can trust them
    (``argmax`` of NaN is an arbitrary class, ``torch.equal`` of NaN is False)."""


def check_logits(logits, rows: int, name: str = "model") -> torch.Tensor:
    """``logits`` is a finite ``(rows, K)`` tensor, the output of ``name`` on a batch of ``rows``."""
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or logits.shape[0] != rows:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(f"{name}: expected logits of shape ({rows}, K), got {shape}")
    finite = torch.isfinite(logits.detach()).all(dim=1)
    if not bool(finite.all()):
        bad = (~finite).nonzero().flatten().tolist()
        listed = ", ".join(map(str, bad[:8])) + (", ..." if len(bad) > 8 else "")
        raise NonFiniteOutputError(
            f"{name}: its output (logits) contains NaN or Inf for {len(bad)} of the batch's {rows} examples "
            f"(rows {listed} of the batch); a model must return finite logits")
    return logits


def check_num_classes(labels: torch.Tensor, name: str, num_classes: int) -> None:
    """Labels index into the model's K logits."""
    if labels.numel() and int(labels.max()) >= num_classes:
        raise ValueError(f"{name}: class index {int(labels.max())} out of range for a model with {num_classes} logits")


def checked_objective(objective, labels: torch.Tensor, name: str):
    """``objective`` that first checks ``labels`` against the number of logits it receives
    (used on an attack's first forward pass, before any loss indexes out of range)."""
    def first_call(logits: torch.Tensor) -> torch.Tensor:
        check_num_classes(labels, name, logits.shape[1])
        return objective(logits)
    return first_call


def _averages_draws(module) -> bool:
    """Implements ``expected_loss`` (:class:`obfgrad.attacks.losses.SupportsExpectedLoss`, e.g. EOT)."""
    return callable(getattr(module, "expected_loss", None))


def check_eot_outermost(model) -> None:
    """Raise when an EOT (any module with ``expected_loss``) sits inside another module.

    Attacks average per-draw gradients only through the outermost model's ``expected_loss``
    (chains of EOTs, ``EOT(EOT(m))``, compose). Wrapped in, e.g., ``nn.Sequential(norm, EOT(net))``
    the EOT is just a layer that averages logits, and the attack silently differentiates the
    averaged logits instead (Athalye et al. 2018, Sec. 4.3).
    """
    inner = model
    while _averages_draws(inner):  # EOT(EOT(...)): each level composes; look inside the last
        inner = getattr(inner, "model", None)
    if not isinstance(inner, nn.Module):
        return
    for path, sub in inner.named_modules():
        if path and _averages_draws(sub):
            raise ValueError(
                f"model: {type(sub).__name__} is nested inside {type(inner).__name__} (submodule {path!r}); "
                "an attack would differentiate its averaged logits, not average per-draw gradients. "
                "Put EOT outermost around the whole pipeline: write EOT(nn.Sequential(norm, net), samples=S) "
                "instead of nn.Sequential(norm, EOT(net, samples=S))")


def check_model_and_inputs(model, x, y, target, targeted: bool):
    """An attack's call checked: ``(x, y, target)`` as :func:`check_attack_inputs` returns them,
    after :func:`check_eot_outermost` has accepted ``model``."""
    x, y, target = check_attack_inputs(x, y, target, targeted)
    check_eot_outermost(model)
    return x, y, target
