"""Xie et al. (ICLR 2018), "Mitigating Adversarial Effects Through Randomization": Table 1's row 5.

At inference the image is resized to a random ``r x r`` with ``r`` uniform in ``[299, 331)``
(bilinear) and padded at a random position to ``331 x 331``; Athalye et al.'s
``randomization/defense.py`` pads with 0.5 (0 after the network's [-1, 1] scaling) and their
InceptionV3 wrapper then bilinearly resizes the ``331 x 331`` image back to ``299 x 299``
(``resize_back``, on by default, as the paper's code does).

Sizes scale with the input: for an ``S x S`` image the resize range is ``[round(S * 299/299),
round(S * 331/299))`` and the padded size ``round(S * 331/299)`` (28 -> r in [28, 31), pad to
31), unless given explicitly. Every example of a batch gets its own ``r`` and padding. Random:
one seed keys all of them; the transform is differentiable (EOT needs no BPDA).
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from obfgrad._checks import check_float, check_int
from obfgrad.defenses.input_transforms import InputTransform

__all__ = ["RandomResizePad", "scaled_sizes"]

PAPER_SIDE, PAPER_MIN, PAPER_PADDED = 299, 299, 331


def scaled_sizes(side: int) -> Tuple[int, int, int]:
    """``(r_min, r_max_exclusive, padded)`` of Xie et al.'s 299 -> [299, 331) -> 331, scaled to ``side``."""
    padded = max(side + 1, round(side * PAPER_PADDED / PAPER_SIDE))
    return round(side * PAPER_MIN / PAPER_SIDE), padded, padded


class RandomResizePad(InputTransform):
    """Random resize to ``r x r``, ``r`` in ``[min_size, max_size)``, then random padding to
    ``padded x padded`` with ``pad_value`` (and, with ``resize_back``, a bilinear resize to the
    input size).

    Args:
        min_size, max_size: the range of ``r`` (None: scaled from 299..331 to the input side).
        padded: the padded side (None: scaled from 331).
        pad_value: value of the padding (0.5, Athalye et al.'s choice; the paper says zero).
        resize_back: resize the padded image back to the input size (the repo's InceptionV3
            wrapper does); False returns ``padded x padded`` images.
        seed, generator: see :class:`~obfgrad.defenses.input_transforms.InputTransform`.

    Example:
        >>> import torch
        >>> pad = RandomResizePad()
        >>> x = torch.rand(3, 1, 28, 28)
        >>> pad(x).shape, RandomResizePad(resize_back=False)(x).shape
        (torch.Size([3, 1, 28, 28]), torch.Size([3, 1, 31, 31]))
        >>> torch.equal(pad(x, seed=4), pad(x, seed=4))
        True
    """

    random = True

    def __init__(self, min_size: Optional[int] = None, max_size: Optional[int] = None,
                 padded: Optional[int] = None, pad_value: float = 0.5, resize_back: bool = True,
                 seed: Optional[int] = None, generator: Optional[torch.Generator] = None):
        super().__init__(seed, generator)
        self.min_size = None if min_size is None else check_int(min_size, "min_size", low=1)
        self.max_size = None if max_size is None else check_int(max_size, "max_size", low=2)
        self.padded = None if padded is None else check_int(padded, "padded", low=2)
        self.pad_value = check_float(pad_value, "pad_value", low=0.0, high=1.0)
        self.resize_back = bool(resize_back)
        # The sizes given must already be consistent (the others follow the input at each call).
        lo, hi, padded = self.min_size, self.max_size, self.padded
        if (lo is not None and hi is not None and not lo < hi) or (hi is not None and padded is not None and
                                                                    not hi <= padded) or \
                (lo is not None and padded is not None and not lo < padded):
            raise ValueError(f"sizes: expected min_size < max_size <= padded, got {self.min_size}, {self.max_size}, "
                             f"{self.padded}")

    def sizes(self, side: int) -> Tuple[int, int, int]:
        lo, hi, padded = scaled_sizes(side)
        lo = self.min_size if self.min_size is not None else lo
        hi = self.max_size if self.max_size is not None else hi
        padded = self.padded if self.padded is not None else padded
        if not lo < hi <= padded:
            raise ValueError(f"sizes: expected min_size < max_size <= padded, got {lo}, {hi}, {padded}")
        return lo, hi, padded

    def transform(self, x: torch.Tensor, seed: int) -> torch.Tensor:
        n, _, height, width = x.shape
        lo, hi, padded = self.sizes(height)
        generator = torch.Generator().manual_seed(seed)
        sides = torch.randint(lo, hi, (n,), generator=generator)
        # Offsets uniform in [0, padded - r] (the repo: tf.random_uniform((), 0, 331 - r), int).
        starts = (torch.rand((n, 2), generator=generator) * (padded - sides + 1)[:, None]).long()
        out = x.new_full((n, x.shape[1], padded, padded), self.pad_value)
        for side in sides.unique().tolist():  # one resize per distinct r, one scatter per resize
            members = (sides == side).nonzero().flatten()
            resized = F.interpolate(x[members.to(x.device)], size=(side, side), mode="bilinear", align_corners=False)
            out[members.to(x.device)] = self._place(resized, starts[members].to(x.device), padded)
        if self.resize_back:
            out = F.interpolate(out, size=(height, width), mode="bilinear", align_corners=False)
        return out

    def _place(self, resized: torch.Tensor, starts: torch.Tensor, padded: int) -> torch.Tensor:
        """Each ``r x r`` image at its (top, left) on a ``padded`` canvas of ``pad_value``
        (a scatter into the flattened canvas, differentiable in ``resized``)."""
        m, channels, side, _ = resized.shape
        offsets = torch.arange(side, device=resized.device)
        rows = starts[:, 0, None, None] + offsets[None, :, None]
        cols = starts[:, 1, None, None] + offsets[None, None, :]
        index = (rows * padded + cols).reshape(m, 1, side * side).expand(m, channels, side * side)
        canvas = resized.new_full((m, channels, padded * padded), self.pad_value)
        canvas = canvas.scatter(2, index, resized.reshape(m, channels, side * side))
        return canvas.view(m, channels, padded, padded)

    def extra_repr(self) -> str:
        return (f"min_size={self.min_size}, max_size={self.max_size}, padded={self.padded}, "
                f"pad_value={self.pad_value}, resize_back={self.resize_back}")
