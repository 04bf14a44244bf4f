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

Geometry (``geometry``):

* ``"centred"`` (default): half-pixel-centred bilinear resizes (``F.interpolate``,
  ``align_corners=False``) both ways, and the padding offsets uniform over every placement,
  ``0..padded - r``.
* ``"authors"``: what Athalye et al. ran (``randomization/defense.py`` and the InceptionV3
  wrapper ``randomization/inceptionv3.py``): the resize to ``r`` is ``tf.image.crop_and_resize``
  with the box ``[0, 0, 1, 1]`` (corners aligned), the offsets are drawn from ``[0, padded - r)``
  (``tf.random_uniform`` excludes the upper end, so the image never touches the bottom or right
  edge), and the resize back is TF1's ``resize_bilinear`` without half-pixel centres (see
  :mod:`obfgrad.defenses.tf_resize`). It reproduces their outputs bit for bit
  (``tests/test_authors_golden.py``); the paper profile uses it. The default stays the
  centred one: it samples symmetrically (TF1's legacy resize shifts the image by up to a source
  pixel towards the top left) and uses every placement.

:func:`resize_and_pad` is the functional form with the randomness given from outside (sizes
and offsets), e.g. to replay the authors' draws.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from obfgrad._checks import check_choice, check_float, check_images, check_int
from obfgrad.defenses.input_transforms import InputTransform
from obfgrad.defenses.tf_resize import _crop_and_resize, _resize_bilinear_tf1

__all__ = ["RandomResizePad", "resize_and_pad", "scaled_sizes", "GEOMETRIES"]

PAPER_SIDE, PAPER_MIN, PAPER_PADDED = 299, 299, 331
#: ``"centred"``: half-pixel-centred resizes, offsets over every placement; ``"authors"``:
#: Athalye et al.'s TF1 geometry (see the module docstring).
GEOMETRIES = ("centred", "authors")


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
        geometry: ``"centred"`` (default) or ``"authors"`` (Athalye et al.'s TF1 resizes and
            offset range; the paper profile's); see the module docstring.
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
                 geometry: str = "centred", seed: Optional[int] = None, generator: Optional[torch.Generator] = None):
        super().__init__(seed, generator)
        self.min_size = None if min_size is None else check_int(min_size, "min_size", low=1)
        self.max_size = None if max_size is None else check_int(max_size, "max_size", low=2)
        self.padded = None if padded is None else check_int(padded, "padded", low=2)
        self.pad_value = check_float(pad_value, "pad_value", low=0.0, high=1.0)
        self.resize_back = bool(resize_back)
        self.geometry = check_choice(geometry, "geometry", GEOMETRIES)
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
        n, _, height, _ = x.shape
        lo, hi, padded = self.sizes(height)
        generator = torch.Generator().manual_seed(seed)
        sides = torch.randint(lo, hi, (n,), generator=generator)
        # Offsets uniform in [0, padded - r] ("centred": every placement) or in [0, padded - r)
        # ("authors": tf.random_uniform((), 0, 331 - r, dtype=tf.int32) excludes the upper end).
        placements = padded - sides + (0 if self.geometry == "authors" else 1)
        starts = (torch.rand((n, 2), generator=generator) * placements[:, None]).long()
        return _resize_and_pad(x, sides, starts, padded, self.pad_value, self.resize_back, self.geometry)

    def extra_repr(self) -> str:
        return (f"min_size={self.min_size}, max_size={self.max_size}, padded={self.padded}, "
                f"pad_value={self.pad_value}, resize_back={self.resize_back}, geometry={self.geometry!r}")


def resize_and_pad(x: torch.Tensor, sizes: torch.Tensor, offsets: torch.Tensor, *, padded: int,
                   pad_value: float = 0.5, resize_back: bool = True, geometry: str = "centred") -> torch.Tensor:
    """Xie et al.'s transformation with the randomness given: image ``n`` resized to
    ``sizes[n]`` square, placed at ``offsets[n] = (top, left)`` on a ``padded`` square canvas of
    ``pad_value``, and (``resize_back``) resized back to the input size.

    Args:
        x: images (N, C, H, W) in [0, 1].
        sizes: (N,) ints in ``[1, padded]``.
        offsets: (N, 2) ints, ``0 <= top, left <= padded - size``.
        padded, pad_value, resize_back: as :class:`RandomResizePad`.
        geometry: ``"centred"`` or ``"authors"`` (Athalye et al.'s TF1 resizes; see the module).

    Example:
        >>> import torch
        >>> x = torch.rand(1, 3, 299, 299)
        >>> out = resize_and_pad(x, torch.tensor([312]), torch.tensor([[16, 18]]), padded=331,
        ...                      resize_back=False, geometry="authors")
        >>> out.shape, float(out[0, 0, 15, 100]), bool(out[0, 0, 16 + 311, 18 + 311] == x[0, 0, -1, -1])
        (torch.Size([1, 3, 331, 331]), 0.5, True)
    """
    check_images(x.detach(), "x")
    padded = check_int(padded, "padded", low=1)
    pad_value = check_float(pad_value, "pad_value", low=0.0, high=1.0)
    check_choice(geometry, "geometry", GEOMETRIES)
    n = x.shape[0]
    if not isinstance(sizes, torch.Tensor) or tuple(sizes.shape) != (n,) or sizes.is_floating_point():
        raise ValueError(f"sizes: expected ({n},) integers, got {getattr(sizes, 'shape', sizes)}")
    if not isinstance(offsets, torch.Tensor) or tuple(offsets.shape) != (n, 2) or offsets.is_floating_point():
        raise ValueError(f"offsets: expected ({n}, 2) integers, got {getattr(offsets, 'shape', offsets)}")
    sizes, offsets = sizes.cpu().long(), offsets.cpu().long()
    if n and (int(sizes.min()) < 1 or int(sizes.max()) > padded):
        raise ValueError(f"sizes: expected values in [1, {padded}], got [{int(sizes.min())}, {int(sizes.max())}]")
    if n and (int(offsets.min()) < 0 or bool((offsets.max(dim=1).values > padded - sizes).any())):
        raise ValueError("offsets: expected 0 <= top, left <= padded - size")
    return _resize_and_pad(x, sizes, offsets, padded, pad_value, bool(resize_back), geometry)


def _resize_and_pad(x: torch.Tensor, sides: torch.Tensor, starts: torch.Tensor, padded: int, pad_value: float,
                    resize_back: bool, geometry: str) -> torch.Tensor:
    height, width = x.shape[2], x.shape[3]
    out = x.new_full((x.shape[0], x.shape[1], padded, padded), pad_value)
    for side in sides.unique().tolist():  # one resize per distinct r, one scatter per resize
        members = (sides == side).nonzero().flatten()
        batch = x[members.to(x.device)]
        if geometry == "authors":
            whole = torch.tensor([[0.0, 0.0, 1.0, 1.0]], device=x.device).expand(batch.shape[0], 4)
            resized = _crop_and_resize(batch, whole, (side, side))
        else:
            resized = F.interpolate(batch, size=(side, side), mode="bilinear", align_corners=False)
        out[members.to(x.device)] = _place(resized, starts[members].to(x.device), padded, pad_value)
    if resize_back:
        if geometry == "authors":
            out = _resize_bilinear_tf1(out, (height, width))
        else:
            out = F.interpolate(out, size=(height, width), mode="bilinear", align_corners=False)
    return out


def _place(resized: torch.Tensor, starts: torch.Tensor, padded: int, pad_value: float) -> torch.Tensor:
    """Each ``r x r`` image at its (top, left) on a ``padded`` canvas of ``pad_value``
    (a scatter into the flattened canvas, differentiable in ``resized``)."""
    m, channels, side, _ = resized.shape
    offsets = torch.arange(side, device=resized.device)
    rows = starts[:, 0, None, None] + offsets[None, :, None]
    cols = starts[:, 1, None, None] + offsets[None, None, :]
    index = (rows * padded + cols).reshape(m, 1, side * side).expand(m, channels, side * side)
    canvas = resized.new_full((m, channels, padded * padded), pad_value)
    canvas = canvas.scatter(2, index, resized.reshape(m, channels, side * side))
    return canvas.view(m, channels, padded, padded)
