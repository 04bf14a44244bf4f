"""Backward Pass Differentiable Approximation (Athalye, Carlini & Wagner, ICML 2018, Sec. 4.1).

The forward pass runs the true, possibly non-differentiable transform ``g``; the backward pass
differentiates a smooth approximation ``h`` with ``h(x) ~ g(x)`` instead: the vector-Jacobian
product ``v^T dh/dx`` at the same ``x``. With no approximation, ``h`` is the identity
(``g(x) ~ x``), so the gradient reaching ``g``'s output is passed to ``x`` unchanged.

An ops-level primitive: the defenses build their straight-through transforms on it (they may not
import the attacks), and :mod:`obfgrad.attacks` re-exports it as ``obfgrad.attacks.BPDA``.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import nn

__all__ = ["BPDA"]

Transform = Callable[[torch.Tensor], torch.Tensor]


class _BPDAFunction(torch.autograd.Function):
    """forward = ``forward_fn(x)`` without a graph; backward = vjp of ``approx_fn`` at ``x``."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, forward_fn: Transform, approx_fn: Optional[Transform]):
        with torch.no_grad():
            out = forward_fn(x)
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"forward_fn: expected it to return a tensor, got {type(out).__name__}")
        if approx_fn is None and out.shape != x.shape:
            raise ValueError(f"forward_fn: the identity approximation needs an output of the input's shape "
                             f"{tuple(x.shape)}, got {tuple(out.shape)}; pass approx_fn")
        ctx.approx_fn = approx_fn
        ctx.save_for_backward(x)
        return out.clone() if out is x else out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        if ctx.approx_fn is None:
            return grad_out, None, None
        (x,) = ctx.saved_tensors
        with torch.enable_grad():
            x_var = x.detach().requires_grad_(True)
            approx = ctx.approx_fn(x_var)
            if approx.shape != grad_out.shape:
                raise ValueError(f"approx_fn: expected an output of forward_fn's shape {tuple(grad_out.shape)}, "
                                 f"got {tuple(approx.shape)}")
            (grad_x,) = torch.autograd.grad(approx, x_var, grad_out, allow_unused=True)
        if grad_x is None:
            grad_x = torch.zeros_like(x)
        return grad_x, None, None


class BPDA(nn.Module):
    """A transform whose forward is ``forward_fn`` and whose gradient is ``approx_fn``'s.

    Args:
        forward_fn: the true transform (a defense's preprocessing); need not be differentiable.
        approx_fn: a differentiable approximation of ``forward_fn`` with the same output shape;
            None means the identity (``forward_fn`` must then preserve the shape).

    Composes with any classifier: ``model = nn.Sequential(BPDA(defense), classifier)``; the
    attacks need nothing else. Module arguments are registered as submodules (``.to(device)``
    moves them).

    Example:
        >>> import torch
        >>> quantize = BPDA(lambda x: torch.round(x * 7) / 7)
        >>> x = torch.tensor([[[[0.30]]]], requires_grad=True)
        >>> (quantize(x) * 3).sum().backward()
        >>> float(x.grad)
        3.0
    """

    def __init__(self, forward_fn: Transform, approx_fn: Optional[Transform] = None):
        super().__init__()
        if not callable(forward_fn):
            raise TypeError(f"forward_fn: expected a callable, got {type(forward_fn).__name__}")
        if approx_fn is not None and not callable(approx_fn):
            raise TypeError(f"approx_fn: expected a callable or None, got {type(approx_fn).__name__}")
        self.forward_fn = forward_fn
        self.approx_fn = approx_fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _BPDAFunction.apply(x, self.forward_fn, self.approx_fn)

    def extra_repr(self) -> str:
        approx = "identity" if self.approx_fn is None else getattr(self.approx_fn, "__name__", repr(self.approx_fn))
        return f"approx={approx}"
