"""Random target classes for targeted evaluation (the paper's ImageNet protocol: one uniformly
random target per image, different from its label)."""

from __future__ import annotations

import torch

from obfgrad._checks import check_int, check_tensor
from obfgrad.attacks.inputs import check_labels

__all__ = ["random_targets"]


def random_targets(y: torch.Tensor, num_classes: int, seed: int = 0) -> torch.Tensor:
    """A target per example, uniform over the ``num_classes - 1`` classes other than ``y``.

    Deterministic in ``seed`` (drawn on a CPU generator, returned on ``y``'s device).

    Example:
        >>> t = random_targets(torch.tensor([0, 1, 2, 3]), num_classes=4, seed=1)
        >>> bool((t != torch.tensor([0, 1, 2, 3])).all())
        True
    """
    check_int(num_classes, "num_classes", low=2)
    check_int(seed, "seed")
    check_tensor(y, "y")
    if y.dim() != 1:
        raise ValueError(f"y: expected a 1-D tensor of labels (N,), got shape {tuple(y.shape)}")
    y = check_labels(y, "y", y.shape[0], y.device)
    if y.numel() and int(y.max()) >= num_classes:
        raise ValueError(f"y: class index {int(y.max())} out of range for num_classes={num_classes}")
    generator = torch.Generator().manual_seed(seed)
    # y + U{1..K-1} mod K is uniform over the other classes.
    offsets = torch.randint(1, num_classes, (y.shape[0],), generator=generator)
    return (y.cpu() + offsets).remainder(num_classes).to(y.device)
