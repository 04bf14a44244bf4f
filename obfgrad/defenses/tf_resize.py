"""TensorFlow 1's bilinear resamplers in float32 torch, as Athalye et al.'s defenses ran them.

Two samplers of the authors' code (anishathalye/obfuscated-gradients) differ from torch's
``F.interpolate`` / ``F.grid_sample`` in where they sample:

* :func:`crop_and_resize`: ``tf.image.crop_and_resize`` (bilinear), used by Xie et al.'s random
  resize (``randomization/defense.py``, box ``[0, 0, 1, 1]``) and Guo et al.'s random crop
  (``inputtransformations/defense.py: defend_crop``). Box corners are normalised so that 0 and
  1 are the centres of the first and last pixel ("align corners"): output row ``i`` of an
  ``h``-row crop of box ``[y1, x1, y2, x2]`` samples source row
  ``y1 (H - 1) + i ((y2 - y1)(H - 1) / (h - 1))``; a sample outside ``[0, H - 1]`` gives 0.
* :func:`resize_bilinear_tf1`: ``tf.image.resize_bilinear(..., align_corners=False)`` without
  half-pixel centres, the resize of both InceptionV3 wrappers (``*/inceptionv3.py:
  _preprocess``): output row ``i`` samples source row ``i (H_in / H_out)`` (the first rows
  align, the image shifts by up to one source pixel against half-pixel-centred resizing).

Both interpolate as TF does: with ``y0 = floor(y)``, ``y1 = ceil(y)`` (the resize clamps it to the
last row), weights ``wy = y - y0`` and likewise for columns,
``top = TL + (TR - TL) wx``, ``bottom = BL + (BR - BL) wx``, ``out = top + (bottom - top) wy``,
every step a separately rounded float32 operation (each torch op here is one rounding, so the
results equal the authors' TF outputs bit for bit on their golden arrays,
``tests/test_authors_golden.py``). Differentiable in the image (the sampling positions are
constants), so EOT and BPDA attacks see the authors' geometry.
"""

from __future__ import annotations

from typing import Tuple

import torch

from obfgrad._checks import check_images, check_int

__all__ = ["crop_and_resize", "resize_bilinear_tf1"]


def _check_float32_images(x: torch.Tensor) -> None:
    check_images(x.detach() if isinstance(x, torch.Tensor) else x, "x", in_unit_range=False)
    if x.dtype != torch.float32:
        raise TypeError(f"x: expected float32 images, got {x.dtype}")


def _checked_size(size) -> Tuple[int, int]:
    if not isinstance(size, (tuple, list)) or len(size) != 2:
        raise ValueError(f"size: expected (height, width), got {size!r}")
    return check_int(size[0], "size", low=1), check_int(size[1], "size", low=1)


def _f32(value: float, device: torch.device) -> torch.Tensor:
    return torch.tensor(value, dtype=torch.float32, device=device)


def _interpolate(x: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, crop: bool) -> torch.Tensor:
    """Bilinear samples of ``x`` (N, C, H, W) at source rows ``rows`` (N, h) and columns ``cols``
    (N, w), float32 coordinates; TF's formula and rounding. ``crop`` (crop_and_resize): samples
    outside the image are 0; otherwise (resize) the upper neighbour is clamped to the image."""
    n, c, height, width = x.shape
    top_rows, left_cols = torch.floor(rows), torch.floor(cols)
    bottom_rows, right_cols = torch.ceil(rows), torch.ceil(cols)
    if not crop:
        bottom_rows, right_cols = bottom_rows.clamp(max=height - 1), right_cols.clamp(max=width - 1)
    wy = (rows - top_rows)[:, None, :, None]
    wx = (cols - left_cols)[:, None, None, :]

    def gather_rows(index: torch.Tensor) -> torch.Tensor:
        index = index.long().clamp(0, height - 1)
        return torch.gather(x, 2, index[:, None, :, None].expand(n, c, index.shape[1], width))

    def gather_cols(plane: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        index = index.long().clamp(0, width - 1)
        return torch.gather(plane, 3, index[:, None, None, :].expand(n, c, plane.shape[2], index.shape[1]))

    upper, lower = gather_rows(top_rows), gather_rows(bottom_rows)
    top_left, top_right = gather_cols(upper, left_cols), gather_cols(upper, right_cols)
    bottom_left, bottom_right = gather_cols(lower, left_cols), gather_cols(lower, right_cols)
    top = top_left + (top_right - top_left) * wx
    bottom = bottom_left + (bottom_right - bottom_left) * wx
    out = top + (bottom - top) * wy
    if not crop:
        return out
    rows_inside = ((rows >= 0) & (rows <= height - 1))[:, None, :, None]
    inside = rows_inside & ((cols >= 0) & (cols <= width - 1))[:, None, None, :]
    return torch.where(inside, out, torch.zeros((), dtype=out.dtype, device=out.device))


def _box_coordinates(start: torch.Tensor, end: torch.Tensor, extent: int, samples: int) -> torch.Tensor:
    """(N, samples) source coordinates of crop_and_resize along one axis, in TF's float32 order."""
    last = _f32(extent - 1, start.device)
    index = torch.arange(samples, dtype=torch.float32, device=start.device)
    if samples == 1:  # TF samples the box centre
        return ((start + end) * 0.5 * last)[:, None]
    step = ((end - start) * last) / _f32(samples - 1, start.device)
    return (start * last)[:, None] + index[None, :] * step[:, None]


def crop_and_resize(x: torch.Tensor, boxes: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """``tf.image.crop_and_resize(x, boxes, range(N), size)`` (bilinear, extrapolation 0): box
    ``n`` of image ``n`` resampled to ``size``.

    Args:
        x: images (N, C, H, W), float32.
        boxes: (N, 4) normalised ``[y1, x1, y2, x2]`` (0 and 1 are the first and last pixel
            centres), float32 (other dtypes are rounded to float32 first, as TF does).
        size: output ``(height, width)``.

    Shape:
        ``(N, C, H, W) -> (N, C, height, width)``.

    Example:
        >>> import torch
        >>> x = torch.arange(16.0).view(1, 1, 4, 4)
        >>> crop_and_resize(x, torch.tensor([[0.0, 0.0, 1.0, 1.0]]), (2, 2))  # the four corners
        tensor([[[[ 0.,  3.],
                  [12., 15.]]]])
    """
    _check_float32_images(x)
    size = _checked_size(size)
    if not isinstance(boxes, torch.Tensor) or tuple(boxes.shape) != (x.shape[0], 4):
        raise ValueError(f"boxes: expected a ({x.shape[0]}, 4) tensor, got {getattr(boxes, 'shape', boxes)}")
    boxes = boxes.to(device=x.device, dtype=torch.float32)
    if not bool(torch.isfinite(boxes).all()):
        raise ValueError("boxes: contains NaN or Inf")
    return _crop_and_resize(x, boxes, size)


def _crop_and_resize(x: torch.Tensor, boxes: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """:func:`crop_and_resize` on validated input (float32 boxes on x's device)."""
    rows = _box_coordinates(boxes[:, 0], boxes[:, 2], x.shape[2], size[0])
    cols = _box_coordinates(boxes[:, 1], boxes[:, 3], x.shape[3], size[1])
    return _interpolate(x, rows, cols, crop=True)


def resize_bilinear_tf1(x: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """TF1's ``tf.image.resize_bilinear(x, size, align_corners=False)`` (no half-pixel centres):
    output row ``i`` samples source row ``i * float32(H_in / H_out)``.

    Shape:
        ``(N, C, H_in, W_in) -> (N, C, height, width)``.

    Example:
        >>> import torch
        >>> x = torch.arange(4.0).view(1, 1, 1, 4)
        >>> resize_bilinear_tf1(x, (1, 8))  # samples 0, 0.5, ..., 3.5 (clamped to the last pixel)
        tensor([[[[0.0000, 0.5000, 1.0000, 1.5000, 2.0000, 2.5000, 3.0000, 3.0000]]]])
    """
    _check_float32_images(x)
    return _resize_bilinear_tf1(x, _checked_size(size))


def _resize_bilinear_tf1(x: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """:func:`resize_bilinear_tf1` on validated input."""
    n, _, in_height, in_width = x.shape
    height, width = size

    def coordinates(extent_in: int, extent_out: int) -> torch.Tensor:
        scale = _f32(extent_in, x.device) / _f32(extent_out, x.device)
        return (torch.arange(extent_out, dtype=torch.float32, device=x.device) * scale).expand(n, extent_out)

    return _interpolate(x, coordinates(in_height, height), coordinates(in_width, width), crop=False)
