"""Incremental evaluation of a :class:`~obfgrad.models.pixelcnn.PixelCNN` in raster order, the idea
of Ramachandran et al., "Fast Generation for Convolutional Autoregressive Models" (ICLR 2017
workshop): keep each causal convolution's recent inputs and compute a layer's output only where
the next position needs it, instead of re-running the whole network for every pixel.

Why it gives the network's output: the network is causal. The ``u`` stream at row i depends only
on the rows above i, so once row i-1 is final, row i of every ``u`` layer is final: it is computed
once per row (:meth:`IncrementalPixelCNN.start_row`: one row convolution per layer, batched over
the row's columns). The ``ul`` stream at (i, j) depends on the rows above and on row i left of j;
once those pixels are final, its value at (i, j) is final: it is computed once, at (i, j)
(:meth:`IncrementalPixelCNN.params_at`). Each ``ul`` convolution is split by kernel row: the taps
on the rows above are applied to the whole row at once in ``start_row``, so that per position only
the taps on the current row remain (a matrix-vector product per layer).

Every activation is thus computed once per image, instead of once per image and later position.
The sums are grouped differently from :meth:`PixelCNN.forward` (row taps first, a matrix product
instead of the convolution kernel), so the output agrees with it up to rounding: ~1e-7 relative in
float32, ~1e-15 in float64 (PixelDefend's ``purify`` works in float64 for that reason).
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from obfgrad.models.pixelcnn import LEVELS, GatedResnet, PixelCNN, concat_elu

__all__ = ["IncrementalPixelCNN"]


class _CausalRows:
    """One causal convolution's input on its latest ``kh`` rows (the newest is the current row),
    zero-padded as the convolution pads it, stored ``(N, kh, padded W, cin)`` so that the patch
    at a column is one contiguous block per image. Down-shifted convolutions (``u`` stream) are
    applied to whole rows; down-right-shifted ones (``ul`` stream) are split into the taps on the
    rows above (applied to the whole row once the rows above are final) and the taps on the
    current row (per position: one matrix product)."""

    def __init__(self, conv: nn.Conv2d, pad_left: int, pad_right: int, batch: int, width: int,
                 like: torch.Tensor):
        kernel_height, self.kernel_width = conv.kernel_size
        self.conv, self.pad_left, self.width = conv, pad_left, width
        # (cin·kw, cout) in the patch's (column, channel) order
        self.current_taps = conv.weight[:, :, -1].permute(0, 2, 1).reshape(conv.out_channels, -1).t()
        self.above_taps = conv.weight[:, :, :-1].contiguous()
        self.rows = like.new_zeros((batch, kernel_height, pad_left + width + pad_right, conv.in_channels))
        self.above: Optional[torch.Tensor] = None  # (W, N, cout): bias + taps on the rows above

    def next_row(self) -> None:
        """The current row becomes the previous one."""
        self.rows[:, :-1] = self.rows[:, 1:].clone()

    def put_row(self, values: torch.Tensor, age: int = 0) -> None:
        """Store a whole row ``(N, cin, W)``: the current one (age 0) or the one before it (age 1)."""
        self.rows[:, -1 - age, self.pad_left:self.pad_left + self.width] = values.transpose(1, 2)

    def put(self, column: int, values: torch.Tensor) -> None:
        """Store the current row's input at ``column``, ``(N, cin)``."""
        self.rows[:, -1, self.pad_left + column] = values

    def row_output(self) -> torch.Tensor:
        """The convolution's output on the current row, ``(N, cout, W)``."""
        return F.conv2d(self.rows.permute(0, 3, 1, 2), self.conv.weight, self.conv.bias)[:, :, 0]

    def prepare_row(self, extra: Optional[torch.Tensor] = None) -> None:
        """Apply the bias and the taps on the rows above to the whole current row (those rows must
        be final), plus ``extra`` ``(N, cout, W)`` if given (a skip term known for the whole row)."""
        above = F.conv2d(self.rows[:, :-1].permute(0, 3, 1, 2), self.above_taps, self.conv.bias)[:, :, 0]
        if extra is not None:
            above = above + extra
        self.above = above.permute(2, 0, 1).contiguous()

    def output_at(self, column: int) -> torch.Tensor:
        """The convolution's output (plus ``extra``) at ``column`` of the current row, ``(N, cout)``;
        needs :meth:`prepare_row` and the current row's inputs up to ``column``."""
        patch = self.rows[:, -1, column:column + self.kernel_width]
        return torch.addmm(self.above[column], patch.reshape(patch.shape[0], -1), self.current_taps)


def _pointwise(values: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    """A 1x1 convolution (``weight`` (cout, cin)) applied to a row ``(N, cin, W)``."""
    return F.conv1d(values, weight.unsqueeze(2), bias)


def _down(conv_module: nn.Module, batch: int, width: int, like: torch.Tensor) -> _CausalRows:
    """Rows of a down-shifted convolution (padded (kw-1)/2 on each side)."""
    conv = conv_module.conv
    pad = (conv.kernel_size[1] - 1) // 2
    return _CausalRows(conv, pad, pad, batch, width, like)


def _down_right(conv_module: nn.Module, batch: int, width: int, like: torch.Tensor) -> _CausalRows:
    """Rows of a down-right-shifted convolution (padded kw-1 on the left only)."""
    conv = conv_module.conv
    return _CausalRows(conv, conv.kernel_size[1] - 1, 0, batch, width, like)


def _split_skip(nin: nn.Conv2d) -> Tuple[torch.Tensor, torch.Tensor]:
    """The down pass's ``ul`` skip is nin(concat_elu([u, s])) = nin over [elu(u), elu(s), elu(-u),
    elu(-s)]: the weights of the ``u`` parts (known per row) and of the ``s`` parts (per position)."""
    weight = nin.weight.reshape(nin.out_channels, -1)
    quarter = weight.shape[1] // 4
    u_part = torch.cat([weight[:, :quarter], weight[:, 2 * quarter:3 * quarter]], dim=1)
    s_part = torch.cat([weight[:, quarter:2 * quarter], weight[:, 3 * quarter:]], dim=1)
    return u_part, s_part


class IncrementalPixelCNN:
    """A PixelCNN's output in raster order, each activation computed once.

    Usage: for each row i, call :meth:`start_row` once the rows above i are final, then for each
    column j in order, :meth:`params_at` once row i's pixels left of j are final. ``levels`` is
    the batch's current image in 8-bit levels (0..255), ``(N, C, H, W)``, of the model's dtype;
    its pixels at and after (i, j) are not read, so they may still change.

    Args:
        model: the PixelCNN, in eval mode (dropout would make the output random).
        batch, height, width: the images' size.
        like: a tensor whose dtype (the model's) and device the caches take.

    Example:
        >>> model = PixelCNN(in_channels=1, nr_filters=4, nr_resnet=1, nr_stages=1, nr_logistic_mix=2).eval()
        >>> x = torch.randint(0, 256, (2, 1, 3, 3)).float()
        >>> steps = IncrementalPixelCNN(model, 2, 3, 3, x)
        >>> steps.start_row(x, 0)
        >>> with torch.no_grad():
        ...     torch.allclose(steps.params_at(x, 0, 0), model(x / 255)[:, :, 0, 0], atol=1e-5)
        True
    """

    def __init__(self, model: PixelCNN, batch: int, height: int, width: int, like: torch.Tensor):
        if not isinstance(model, PixelCNN):
            raise TypeError(f"model: expected a PixelCNN, got {type(model).__name__}")
        if model.training:
            raise ValueError("model: expected eval mode (call .eval()): dropout would make the output random")
        if model.out.weight.dtype != like.dtype:
            raise ValueError(f"like: expected the model's dtype {model.out.weight.dtype}, got {like.dtype}")
        self.model, self.height, self.width, self.row = model, height, width, -1
        self.init_u = _down(model.init_u, batch, width, like)
        self.init_ul_above = _down(model.init_ul_above, batch, width, like)
        self.init_ul_left = _down_right(model.init_ul_left, batch, width, like)
        self.u_rows = [(_down(b.conv_in, batch, width, like), _down(b.conv_out, batch, width, like))
                       for b in (*model.up_u, *model.down_u)]
        self.ul_rows = [(_down_right(b.conv_in, batch, width, like), _down_right(b.conv_out, batch, width, like))
                        for b in (*model.up_ul, *model.down_ul)]
        self.down_skip_weights = [_split_skip(block.nin_skip) for block in model.down_ul]
        self.down_skip_taps = [s_part.t() for _, s_part in self.down_skip_weights]  # (2F, F) for addmm
        self.out_weight = model.out.weight.reshape(model.out.out_channels, -1)
        self.ul_above_row: Optional[torch.Tensor] = None  # (W, N, F): the first ``ul`` layer's row part

    @staticmethod
    def _input(levels: torch.Tensor) -> torch.Tensor:
        """The network's input for these levels: [2x - 1, 1] as in :meth:`PixelCNN.forward`."""
        x = 2 * (levels / (LEVELS - 1)) - 1
        return torch.cat([x, torch.ones_like(x[:, :1])], dim=1)

    def _all_rows(self) -> List[_CausalRows]:
        return [self.init_u, self.init_ul_left, *[rows for pair in self.u_rows + self.ul_rows for rows in pair]]

    # -- once per row: the u stream, and the ul stream's taps on the rows above -------------------
    def start_row(self, levels: torch.Tensor, row: int) -> None:
        """Compute row ``row`` of every ``u`` layer and the row parts of the ``ul`` layers (the
        rows above ``row`` must be final)."""
        if row != self.row + 1:
            raise ValueError(f"row: expected {self.row + 1} (rows are visited in order), got {row}")
        self.row = row
        for rows in self._all_rows():
            rows.next_row()
        u = self._first_u_row(levels, row)
        blocks = len(self.model.up_u)
        u_skips = []
        for k, block in enumerate(self.model.up_u):
            u = self._row_block(block, self.u_rows[k], u)
            u_skips.append(u)
            nin = self.model.up_ul[k].nin_skip
            skip = _pointwise(concat_elu(u), nin.weight.reshape(nin.out_channels, -1), nin.bias)
            self._prepare_ul_block(k, skip)
        for k, block in enumerate(self.model.down_u):
            u = self._row_block(block, self.u_rows[blocks + k], u, u_skips.pop())
            nin = self.model.down_ul[k].nin_skip
            self._prepare_ul_block(blocks + k, _pointwise(concat_elu(u), self.down_skip_weights[k][0], nin.bias))

    def _first_u_row(self, levels: torch.Tensor, row: int) -> torch.Tensor:
        """Row ``row`` of the first ``u`` layer; also prepares the first ``ul`` layer's row part."""
        if row == 0:  # down_shift: row 0 of u and of the "above" part of ul are zeros
            u = levels.new_zeros((levels.shape[0], self.model.init_u.conv.out_channels, self.width))
            self.ul_above_row = u.permute(2, 0, 1).contiguous()
        else:
            previous = self._input(levels[:, :, row - 1])
            self.init_u.put_row(previous)
            u = self.init_u.row_output()
            self.init_ul_above.put_row(previous)
            self.ul_above_row = self.init_ul_above.row_output().permute(2, 0, 1).contiguous()
            self.init_ul_left.put_row(previous, age=1)
        self.init_ul_left.prepare_row()
        return u

    def _prepare_ul_block(self, index: int, skip_row: torch.Tensor) -> None:
        conv_in, conv_out = self.ul_rows[index]
        conv_in.prepare_row(skip_row)
        conv_out.prepare_row()

    @staticmethod
    def _row_block(block: GatedResnet, rows: Tuple[_CausalRows, _CausalRows], x: torch.Tensor,
                   skip: Optional[torch.Tensor] = None) -> torch.Tensor:
        """:meth:`GatedResnet.forward` on the current row, ``(N, F, W)``."""
        conv_in, conv_out = rows
        conv_in.put_row(concat_elu(x))
        h = conv_in.row_output()
        if skip is not None:
            nin = block.nin_skip
            h = h + _pointwise(concat_elu(skip), nin.weight.reshape(nin.out_channels, -1), nin.bias)
        conv_out.put_row(concat_elu(h))
        a, b = conv_out.row_output().chunk(2, dim=1)
        return x + a * torch.sigmoid(b)

    # -- once per position: the ul stream's taps on the current row -------------------------------
    def params_at(self, levels: torch.Tensor, row: int, column: int) -> torch.Tensor:
        """The mixture parameters at (row, column), ``(N, P)``: the network's output there (row
        ``row``'s pixels left of ``column`` must be final; columns are visited in order)."""
        if row != self.row:
            raise ValueError(f"row: expected {self.row} (call start_row first), got {row}")
        ul = self.ul_above_row[column]
        if column > 0:  # right_shift: column 0 of the "left" part is zero
            self.init_ul_left.put(column - 1, self._input(levels[:, :, row, column - 1]))
            ul = ul + self.init_ul_left.output_at(column - 1)
        blocks = len(self.model.up_ul)
        ul_skips = []
        for k in range(blocks):
            ul = self._position_block(self.ul_rows[k], ul, column)
            ul_skips.append(ul)
        for k in range(len(self.model.down_ul)):
            ul = self._position_block(self.ul_rows[blocks + k], ul, column, ul_skips.pop(), self.down_skip_taps[k])
        return F.linear(F.elu(ul), self.out_weight, self.model.out.bias)

    @staticmethod
    def _position_block(rows: Tuple[_CausalRows, _CausalRows], x: torch.Tensor, column: int,
                        skip: Optional[torch.Tensor] = None, skip_taps: Optional[torch.Tensor] = None) -> torch.Tensor:
        """:meth:`GatedResnet.forward` at one position, ``(N, F)``; the skip's row part is already in
        ``conv_in``'s prepared row; ``skip`` is its per-position input, ``skip_taps`` its nin weights."""
        conv_in, conv_out = rows
        conv_in.put(column, concat_elu(x))
        h = conv_in.output_at(column)
        if skip is not None:
            h = torch.addmm(h, concat_elu(skip), skip_taps)
        conv_out.put(column, concat_elu(h))
        a, b = conv_out.output_at(column).chunk(2, dim=1)
        return torch.addcmul(x, a, torch.sigmoid(b))
