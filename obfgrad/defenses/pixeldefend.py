"""PixelDefend (Song, Kim, Nowozin, Ermon & Kushman, ICLR 2018; Table 1 row 6).

Purification: visit the sub-pixels in raster order (row, column, then channel) and set each to
the intensity the PixelCNN finds most likely within ``[v - eps_defend, v + eps_defend] ∩ [0, 255]``
of its current 8-bit value ``v``, conditioning on the sub-pixels already purified (protocol.md
row 6: ``pixeldefend/defense.py:make_pixeldefend``, eps_defend = 16/255).

Done naively that is one network evaluation per sub-pixel (3072 for a CIFAR image), each over the
whole image. Three schemes (``method``) give the same output (tested against each other and the
naive loop):

* ``"incremental"`` (default): each activation of the network is computed once per image
  (:class:`~obfgrad.models.pixelcnn_incremental.IncrementalPixelCNN`, after Ramachandran et al.,
  "Fast Generation for Convolutional Autoregressive Models", 2017): the causal ``u`` stream one
  row at a time, the ``ul`` stream one position at a time from cached rows. Work per image: about
  one network evaluation in all instead of one per pixel (measured: ``benchmarks/bench_pixeldefend.py``);
* ``"crop"``: one full network evaluation per pixel, cropped to the rows above (causal convolutions:
  the output at row i only sees rows 0..i), skipped for images unchanged since their last evaluation;
* ``"full"``: one evaluation of the whole image per pixel, the reference loop.

All three evaluate the network once per pixel, not per sub-pixel: the channels of a pixel
condition each other through the mixture's linear coefficients, applied without the network.

Exactness. The schemes group the network's sums differently, so in float32 their log-probabilities
differ by rounding (measured: up to 6e-5 nats on random models, 5e-3 in low-probability bins of
the smoke row's trained model), and so
do two runs of one scheme on different batches (convolution kernels are chosen by shape). Some
choices are closer than that: on an untrained model, whose mixtures are flat, a few percent of
them. In float32 the previous purifier therefore gave an image a different purification in a
batch than alone (measured: 10 of 864 values on a random 12-filter model, 39 of 15,680 on the
smoke row's trained one). Purification therefore runs in float64 (``dtype``; the network is
copied to it), where the schemes' log-probabilities differ by at most ~1e-11 nats (measured:
8e-14 on a random model, 7.5e-12 on the trained smoke model), and a choice is the lowest
intensity whose log-probability is within ``TIE_NATS`` (1e-9) of the best. Guarantee: the
purified image is a function of the image alone, the same for every method and batch, unless a
log-probability lands within that rounding of the edge of the 1e-9 band. Tested: the
three methods, image-by-image and batched, forward and reversed batches, and the naive loop give
identical images on random and trained models (``tests/test_pixeldefend.py``); in float32 the
same tests fail. ``dtype=torch.float32`` is faster, with ties decided by rounding.

``stats`` counts the work so the saving can be measured.
"""

from __future__ import annotations

import copy
from typing import Dict, Optional, Tuple

import torch
from torch import nn

from obfgrad._checks import check_choice, check_float, check_images, check_int
from obfgrad.models.pixelcnn import LEVELS, PixelCNN, bin_log_probs
from obfgrad.models.pixelcnn_incremental import IncrementalPixelCNN

__all__ = ["purify", "purification_reach", "PixelDefend", "EPS_DEFEND", "METHODS", "TIE_NATS"]

EPS_DEFEND = 16 / 255  # Song et al.'s eps_defend for the 8/255 attack (protocol.md row 6)
METHODS = ("incremental", "crop", "full")
TIE_NATS = 1e-9  # float64: choices closer than this are ties (rounding moves them by ~1e-12)


@torch.no_grad()
def purify(pixelcnn: PixelCNN, x: torch.Tensor, eps_defend: float = EPS_DEFEND,
           max_positions: Optional[int] = None, stats: Optional[Dict[str, int]] = None, *,
           method: str = "incremental", dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """PixelDefend's greedy purification of ``x``.

    Args:
        pixelcnn: the density model (a :class:`PixelCNN`, in eval mode).
        x: images ``(N, C, H, W)`` in [0, 1]; rounded to 8-bit values first (PixelDefend works on
            integer intensities).
        eps_defend: the purification radius on the [0, 1] scale (rounded to whole 8-bit levels).
        max_positions: purify only the first this many pixels in raster order (the rest are only
            rounded); None = all.
        stats: if given, receives ``evaluations`` (batched network calls: full or cropped images,
            or single positions for ``"incremental"``), ``image_positions`` (image positions at
            which the whole network was evaluated, summed over images) and, for ``"incremental"``,
            ``row_steps`` (rows of the ``u`` stream computed).
        method: ``"incremental"``, ``"crop"`` or ``"full"`` (module docstring); same output.
        dtype: precision of the network and of the choices: float64 (exact, module docstring) or
            float32 (faster; choices within float32 rounding of a tie then depend on the method
            and the batch).

    Returns:
        The purified images, 8-bit values k/255; every value within ``eps_defend`` of ``round(255·x)/255``.

    Example:
        >>> model = PixelCNN(in_channels=1, nr_filters=4, nr_resnet=1, nr_stages=1, nr_logistic_mix=2).eval()
        >>> x = torch.rand(2, 1, 5, 5)
        >>> out = purify(model, x, eps_defend=16 / 255)
        >>> out.shape, bool((out * 255 - (out * 255).round()).abs().max() < 1e-4)
        (torch.Size([2, 1, 5, 5]), True)
        >>> torch.equal(out, purify(model, x, eps_defend=16 / 255, method="full"))
        True
    """
    check_images(x, "x")
    radius = int(round(check_float(eps_defend, "eps_defend", low=0.0) * (LEVELS - 1)))
    check_choice(method, "method", METHODS)
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype: expected torch.float32 or torch.float64, got {dtype}")
    if not isinstance(pixelcnn, PixelCNN):
        raise TypeError(f"pixelcnn: expected a PixelCNN, got {type(pixelcnn).__name__}")
    if pixelcnn.training:
        raise ValueError("pixelcnn: expected eval mode (call .eval()): dropout would make purification random")
    n, channels, height, width = x.shape
    if channels != pixelcnn.in_channels:
        raise ValueError(f"x: expected {pixelcnn.in_channels} channels for this PixelCNN, got {channels}")
    positions = height * width if max_positions is None else min(check_int(max_positions, "max_positions", low=0),
                                                                   height * width)
    levels = (x.detach() * (LEVELS - 1)).round()
    low, high = (levels - radius).clamp_min(0).to(dtype), (levels + radius).clamp_max(LEVELS - 1).to(dtype)
    current = levels.to(dtype)
    density = pixelcnn if pixelcnn.out.weight.dtype == dtype else copy.deepcopy(pixelcnn).to(dtype)
    counts = {"evaluations": 0, "image_positions": 0}
    choose = _Chooser(current, low, high, radius, pixelcnn.nr_logistic_mix, TIE_NATS if dtype == torch.float64 else 0.0)
    {"incremental": _incremental, "crop": _crop, "full": _full}[method](density, choose, positions, counts)
    if stats is not None:
        stats.update(counts)
    return current.to(x.dtype) / (LEVELS - 1)


class _Chooser:
    """The per-pixel choice, shared by the three methods: updates ``current`` (8-bit levels) at one
    pixel from the mixture parameters there, channel by channel. Only the bins of each value's
    window are evaluated (at most 2·radius + 1 of the 256)."""

    def __init__(self, current: torch.Tensor, low: torch.Tensor, high: torch.Tensor, radius: int,
                 mixtures: int, tie: float):
        self.current, self.low, self.high, self.mixtures, self.tie = current, low, high, mixtures, tie
        self.offsets = torch.arange(min(2 * radius + 1, LEVELS), device=current.device)

    def __call__(self, params_at: torch.Tensor, i: int, j: int) -> torch.Tensor:
        """Purify pixel (i, j) of every image given its mixture parameters ``(N, P)``; returns
        which images changed."""
        current = self.current
        changed = torch.zeros(current.shape[0], dtype=torch.bool, device=current.device)
        for c in range(current.shape[1]):
            low = self.low[:, c, i, j].long()
            bins = (low.unsqueeze(1) + self.offsets).clamp_max(LEVELS - 1)  # the window, ascending
            log_probs = bin_log_probs(params_at, current[:, :, i, j] / (LEVELS - 1), c, self.mixtures, bins)
            outside = bins > self.high[:, c, i, j, None]  # clamped repeats of 255 and beyond the window
            best = (low + self._pick(log_probs.masked_fill(outside, float("-inf")))).to(current.dtype)
            changed |= best != current[:, c, i, j]
            current[:, c, i, j] = best
        return changed

    def _pick(self, log_probs: torch.Tensor) -> torch.Tensor:
        return _most_likely(log_probs, self.tie)


def _most_likely(log_probs: torch.Tensor, tie: float) -> torch.Tensor:
    """Position of the most likely bin along the last dimension; with ``tie`` > 0, the lowest within
    ``tie`` of the most likely."""
    if tie == 0:
        return log_probs.argmax(dim=-1)
    near = log_probs >= log_probs.max(dim=-1, keepdim=True).values - tie
    return (near.cumsum(dim=-1) == 0).sum(dim=-1)  # the first near bin: how many come before it


def _incremental(density: PixelCNN, choose: _Chooser, positions: int, counts: Dict[str, int]) -> None:
    """Every activation computed once: the u stream per row, the ul stream per position."""
    current = choose.current
    n, _, height, width = current.shape
    steps = IncrementalPixelCNN(density, n, height, width, current)
    counts["row_steps"] = 0
    for position in range(positions):
        i, j = divmod(position, width)
        if j == 0:
            steps.start_row(current, i)
            counts["row_steps"] += 1
        choose(steps.params_at(current, i, j), i, j)
        counts["evaluations"] += 1
        counts["image_positions"] += n


def _crop(density: PixelCNN, choose: _Chooser, positions: int, counts: Dict[str, int]) -> None:
    """One evaluation per pixel, of the rows above only, of the images changed since their last one."""
    current = choose.current
    n, _, height, width = current.shape
    params = None
    rows_valid = torch.zeros(n, dtype=torch.long, device=current.device)  # rows of `params` that are up to date
    dirty = torch.ones(n, dtype=torch.bool, device=current.device)  # changed since its last evaluation
    for position in range(positions):
        i, j = divmod(position, width)
        index = (dirty | (rows_valid <= i)).nonzero().squeeze(1)
        if index.numel():
            fresh = density(current[index, :, :i + 1] / (LEVELS - 1))
            if params is None:
                params = fresh.new_zeros((n, fresh.shape[1], height, width))
            params[index, :, :i + 1] = fresh
            rows_valid[index], dirty[index] = i + 1, False
            counts["evaluations"] += 1
            counts["image_positions"] += int(index.numel()) * (i + 1) * width
        dirty |= choose(params[:, :, i, j], i, j)


def _full(density: PixelCNN, choose: _Chooser, positions: int, counts: Dict[str, int]) -> None:
    """The reference loop: one evaluation of the whole image per pixel."""
    current = choose.current
    n, _, height, width = current.shape
    for position in range(positions):
        i, j = divmod(position, width)
        params = density(current / (LEVELS - 1))
        counts["evaluations"] += 1
        counts["image_positions"] += n * height * width
        choose(params[:, :, i, j], i, j)


@torch.no_grad()
def purification_reach(pixelcnn: PixelCNN, x: torch.Tensor, eps_attack: float, eps_defend: float = EPS_DEFEND,
                       *, batch_size: int = 64) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The purified values an attacker can give each pixel by changing that pixel alone.

    Purification sets a pixel to the most likely intensity within ``eps_defend`` of its value, given
    the pixels already purified. Changing one pixel leaves every pixel before it, and so its
    context, as it was: the values purification can then give that pixel are exactly the window
    choices for the attacked values within ``eps_attack`` of the pixel's own. This returns their
    range per pixel. Where the conditional's mode lies well inside the window (a pixel the
    PixelCNN predicts well, the black background of Fashion-MNIST above all), no attacked value
    moves the purified one: only ``eps_defend > eps_attack`` is needed for that. An attack that
    changes many pixels also changes later pixels' contexts, which this does not cover.

    Args:
        pixelcnn: the density model (single-channel: within a pixel, later channels' contexts would
            move with the earlier ones).
        x: images ``(N, 1, H, W)`` in [0, 1] (rounded to 8-bit values, as :func:`purify` does).
        eps_attack: the attacker's l-inf radius on the [0, 1] scale (rounded to whole 8-bit levels).
        eps_defend: the purification radius.
        batch_size: images per network evaluation (bounds memory: 256 log-probabilities per pixel).

    Returns:
        ``(low, high, purified)``: the lowest and highest reachable purified value per pixel and
        ``purify(pixelcnn, x, eps_defend)``, all in [0, 1] (8-bit values k/255);
        ``low <= purified <= high``.

    Example:
        >>> model = PixelCNN(in_channels=1, nr_filters=4, nr_resnet=1, nr_stages=1, nr_logistic_mix=2).eval()
        >>> low, high, purified = purification_reach(model, torch.rand(2, 1, 5, 5), 2 / 255, 4 / 255)
        >>> bool((low <= purified).all() and (purified <= high).all())
        True
    """
    check_images(x, "x")
    if x.shape[1] != 1:
        raise ValueError(f"x: purification_reach needs single-channel images (N, 1, H, W), got {tuple(x.shape)}")
    radius_attack = int(round(check_float(eps_attack, "eps_attack", low=0.0) * (LEVELS - 1)))
    batch_size = check_int(batch_size, "batch_size", low=1)
    purified = purify(pixelcnn, x, eps_defend)  # checks pixelcnn and eps_defend
    radius = int(round(eps_defend * (LEVELS - 1)))
    density = copy.deepcopy(pixelcnn).to(torch.float64)
    parts = [_reach(density, x[k:k + batch_size], purified[k:k + batch_size], radius_attack, radius)
             for k in range(0, x.shape[0], batch_size)]
    low, high = (torch.cat([part[i] for part in parts]).to(x.dtype) / (LEVELS - 1) for i in (0, 1))
    return low, high, purified


def _reach(density: PixelCNN, x: torch.Tensor, purified: torch.Tensor, radius_attack: int,
           radius: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Lowest and highest window choice (8-bit levels) per pixel over the attacked values."""
    n, _, height, width = x.shape
    params = density(purified.to(torch.float64))  # at each pixel: the context purification saw
    params = params.permute(0, 2, 3, 1).reshape(n * height * width, -1)
    log_probs = bin_log_probs(params, purified.reshape(-1, 1).to(torch.float64), 0, density.nr_logistic_mix)
    levels = (x.detach() * (LEVELS - 1)).round().reshape(-1).long()
    offsets = torch.arange(2 * radius + 1, device=x.device)
    low = torch.full_like(levels, LEVELS)
    high = torch.full_like(levels, -1)
    for shift in range(-radius_attack, radius_attack + 1):
        attacked = (levels + shift).clamp(0, LEVELS - 1)
        window_low, window_high = (attacked - radius).clamp_min(0), (attacked + radius).clamp_max(LEVELS - 1)
        bins = window_low.unsqueeze(1) + offsets
        window = log_probs.gather(1, bins.clamp_max(LEVELS - 1))
        choice = window_low + _most_likely(window.masked_fill(bins > window_high.unsqueeze(1), float("-inf")),
                                           TIE_NATS)
        low, high = torch.minimum(low, choice), torch.maximum(high, choice)
    return low.view_as(x), high.view_as(x)


class PixelDefend(nn.Module):
    """``x -> purify(pixelcnn, x)`` as a module (the defense's preprocessing; not differentiable:
    attack it with ``BPDA(PixelDefend(...))``, the identity approximation of the paper).

    Args:
        pixelcnn: the density model.
        eps_defend: purification radius on [0, 1] (16/255 in the paper, for an 8/255 attack).
        max_positions: purify only the first pixels in raster order (None = all; dry runs only).
        batch_size: images purified per call of :func:`purify` (bounds memory).
        memo: remember the purification of every 8-bit image seen (purification is deterministic
            and per image): attacks and the evaluator purify the same image several times (the
            clean batch in each evaluation, an attack's last iterate and the evaluator's check of
            it), and each repeat would cost a whole purification.
    """

    def __init__(self, pixelcnn: PixelCNN, eps_defend: float = EPS_DEFEND, max_positions: Optional[int] = None,
                 batch_size: int = 256, memo: bool = True):
        super().__init__()
        self.pixelcnn = pixelcnn.eval()
        self.eps_defend = eps_defend
        self.max_positions = max_positions
        self.batch_size = batch_size
        self.last_stats: Dict[str, int] = {}
        self.memo: Optional[Dict[bytes, torch.Tensor]] = {} if memo else None

    def train(self, mode: bool = True) -> PixelDefend:
        """The density model stays in eval mode: purification is never trained through this module."""
        super().train(mode)
        self.pixelcnn.eval()
        return self

    def extra_repr(self) -> str:
        return f"eps_defend={self.eps_defend:.4f}, max_positions={self.max_positions}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        keys = None
        if self.memo is not None:
            levels = (x.detach() * (LEVELS - 1)).round().to(torch.uint8).cpu()
            keys = [levels[k].numpy().tobytes() for k in range(x.shape[0])]
            todo = [k for k, key in enumerate(keys) if key not in self.memo]
        else:
            todo = list(range(x.shape[0]))
        totals = {"images": len(todo), "memo_hits": x.shape[0] - len(todo)}
        fresh = x.new_empty((0, *x.shape[1:]))
        if todo:
            index = torch.tensor(todo, device=x.device)
            parts = []
            for start in range(0, len(todo), self.batch_size):
                stats: Dict[str, int] = {}
                parts.append(purify(self.pixelcnn, x[index[start:start + self.batch_size]], self.eps_defend,
                                    self.max_positions, stats=stats))
                for key, value in stats.items():
                    totals[key] = totals.get(key, 0) + value
            fresh = torch.cat(parts)
        self.last_stats = totals
        if keys is None:
            return fresh
        for k, out in zip(todo, fresh):
            self.memo[keys[k]] = out.detach().cpu()
        return torch.stack([self.memo[key] for key in keys]).to(x.device) if keys else x.clone()
