"""Stochastic Activation Pruning (Dhillon et al., ICLR 2018), as Athalye et al. reimplemented it
(``sap/sap_model.py:SAPModel._conv`` of anishathalye/obfuscated-gradients; protocol.md row 4).

After a layer, each example's activations ``h`` (all ``n`` values of the layer) are pruned at
random and the survivors rescaled so the expectation is unchanged:

.. math::  p_i = \\frac{|h_i|}{\\sum_j |h_j|},\\qquad q_i = 1 - e^{-N p_i},\\qquad
           m_i \\sim \\mathrm{Bernoulli}(q_i),\\qquad \\mathrm{SAP}(h)_i = \\frac{h_i\\, m_i}{q_i + \\epsilon},

with ``N = 2n`` and ``epsilon = 1e-8`` (so ``E[SAP(h)] = h q/(q + eps) ~ h``). The ``epsilon`` is
the fix for divisions by near-zero keep probabilities whose gradients otherwise explode
(Athalye et al., Sec. 5.3). Randomness is drawn independently per example (and per call), so
stacking draws along the batch dimension (:class:`obfgrad.attacks.EOT`) gives independent draws.

The defense is applied at test time to a naturally trained network, without retraining:
:class:`SAP` attaches the pruning to the output of every layer of the chosen types (every
``nn.Conv2d`` by default: the stem and the two convolutions of each residual unit, 31 layers of
Madry's wide ResNet).
"""

from __future__ import annotations

import copy
from typing import Optional, Tuple, Type

import torch
from torch import nn

from obfgrad._checks import check_float

__all__ = ["sap_prune", "keep_probability", "SAP"]


def keep_probability(h: torch.Tensor, draws_factor: float = 2.0) -> torch.Tensor:
    """``q = 1 - exp(-N p)`` per activation, ``p = |h| / sum|h|`` per example, ``N = draws_factor * n``."""
    flat = h.abs().flatten(1)
    total = flat.sum(dim=1, keepdim=True)
    p = flat / total.clamp_min(torch.finfo(h.dtype).tiny)
    n_draws = draws_factor * flat.shape[1]
    return (-torch.expm1(-n_draws * p)).view_as(h)


def sap_prune(h: torch.Tensor, eps: float = 1e-8, generator: Optional[torch.Generator] = None,
              draws_factor: float = 2.0) -> torch.Tensor:
    """One random SAP draw of the activations ``h`` (``(N, ...)``; statistics per example).

    Example:
        >>> import torch
        >>> h = torch.tensor([[0.0, 1.0, 3.0, -4.0]])
        >>> out = sap_prune(h, generator=torch.Generator().manual_seed(0))
        >>> bool(out[0, 0] == 0)  # a zero activation is never kept
        True
    """
    q = keep_probability(h, draws_factor)
    # The mask is a sample, not a function of h: no gradient flows through it.
    mask = (torch.rand(h.shape, generator=generator, device="cpu").to(h.device) < q.detach()).to(h.dtype)
    return h * mask / (q + eps)


class SAP(nn.Module):
    """A copy of ``model`` with SAP after every layer of ``layer_types``.

    Args:
        model: a trained classifier (not modified; its weights are shared).
        layer_types: module types whose outputs are pruned (default ``nn.Conv2d``).
        eps: the denominator's guard (1e-8, the authors' repository).
        enabled: prune (True) or pass activations through (the undefended network).

    The pruning is random in train and eval mode alike: it is the defense, not a regulariser.

    Example:
        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.Flatten(), torch.nn.LazyLinear(3))
        >>> _ = net(torch.rand(1, 1, 5, 5))
        >>> sap = SAP(net)
        >>> sap.num_pruned_layers, sap(torch.rand(4, 1, 5, 5)).shape
        (1, torch.Size([4, 3]))
    """

    def __init__(self, model: nn.Module, layer_types: Tuple[Type[nn.Module], ...] = (nn.Conv2d,), eps: float = 1e-8,
                 enabled: bool = True):
        super().__init__()
        self.model = _shallow_replica(model)  # shares parameters; the pruned layers are ours
        self.eps = check_float(eps, "eps", low=0.0)
        self.enabled = bool(enabled)
        self.generator: Optional[torch.Generator] = None
        self.num_pruned_layers = 0
        self._wrap(self.model, tuple(layer_types))

    def _wrap(self, module: nn.Module, layer_types: Tuple[Type[nn.Module], ...]) -> None:
        for name, child in list(module.named_children()):
            if isinstance(child, layer_types):
                setattr(module, name, _Pruned(child, self))
                self.num_pruned_layers += 1
            else:
                replica = _shallow_replica(child)
                setattr(module, name, replica)
                self._wrap(replica, layer_types)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def extra_repr(self) -> str:
        return f"pruned_layers={self.num_pruned_layers}, eps={self.eps}, enabled={self.enabled}"


def _shallow_replica(module: nn.Module) -> nn.Module:
    """A copy of ``module`` sharing parameters and buffers but with its own table of children,
    so replacing a child leaves the original untouched."""
    replica = copy.copy(module)
    replica._modules = dict(module._modules)
    return replica


class _Pruned(nn.Module):
    """A layer followed by SAP (the owner decides whether pruning is on)."""

    def __init__(self, layer: nn.Module, owner: SAP):
        super().__init__()
        self.layer = layer
        self._owner = [owner]  # a list: not registered as a submodule (no cycle)

    def forward(self, *args, **kwargs):
        out = self.layer(*args, **kwargs)
        owner = self._owner[0]
        return sap_prune(out, owner.eps, owner.generator) if owner.enabled else out
