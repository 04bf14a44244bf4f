"""A PixelCNN++-style autoregressive image model (Salimans, Karpathy, Chen & Kingma, ICLR 2017),
the density model of PixelDefend (Song et al., ICLR 2018; Table 1 row 6).

What carries over from PixelCNN++:

* two causal streams: ``u`` sees the rows strictly above a pixel (down-shifted 2×3 convolutions),
  ``ul`` sees the rows above plus the pixels to the left on the current row (down-right-shifted
  2×2 convolutions); the input gets a constant ones channel so the nets can tell padding from
  black pixels;
* gated residual blocks with concatenated ELUs, an "up" pass and a "down" pass with skip
  connections between them;
* the discretized logistic mixture likelihood over 256 intensities per sub-pixel, with
  channel-conditional means (the mean of channel c moves linearly with the values of the
  channels before it at the same pixel, coefficients through tanh).

Simplifications (recorded in the rows' choices): all stages run at full resolution (PixelCNN++
halves the resolution twice) and there is no weight normalisation. Causality is what PixelDefend
needs and is tested: the distribution predicted at pixel i never depends on pixels at or after i.

Training (:func:`train_pixelcnn`, :func:`pixelcnn_train_or_load`): Adam on the negative
log-likelihood, checkpoints cached under the recipe's key (``obfgrad.cache``).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Dict, Mapping, Optional

import torch
import torch.nn.functional as F
from torch import nn

from obfgrad._checks import finite_loss
from obfgrad.cache import load_or_train, normalize_recipe
from obfgrad.models.loop import batches_per_epoch, descend, epoch_batches, seeded_training

__all__ = ["PixelCNN", "discretized_mix_log_prob", "bin_log_probs", "bits_per_dim", "train_pixelcnn",
           "pixelcnn_recipe", "pixelcnn_train_or_load", "num_mixture_params"]

LEVELS = 256  # 8-bit intensities
_HALF_BIN = 1.0 / (LEVELS - 1)  # half the width of one bin on the [-1, 1] scale
_TINY_DELTA = 1e-5  # below this, PixelCNN++ switches to the density at the bin centre


# -- causal convolutions --------------------------------------------------------------------------
class DownShiftedConv2d(nn.Module):
    """Conv whose output at row i sees rows i-kh+1..i, columns centred on j (no row below i)."""

    def __init__(self, in_channels: int, out_channels: int, kernel=(2, 3)):
        super().__init__()
        kh, kw = kernel
        self.pad = nn.ZeroPad2d(((kw - 1) // 2, (kw - 1) // 2, kh - 1, 0))
        self.conv = nn.Conv2d(in_channels, out_channels, kernel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.pad(x))


class DownRightShiftedConv2d(nn.Module):
    """Conv whose output at (i, j) sees rows i-kh+1..i and columns j-kw+1..j (nothing right of j)."""

    def __init__(self, in_channels: int, out_channels: int, kernel=(2, 2)):
        super().__init__()
        kh, kw = kernel
        self.pad = nn.ZeroPad2d((kw - 1, 0, kh - 1, 0))
        self.conv = nn.Conv2d(in_channels, out_channels, kernel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.pad(x))


def down_shift(x: torch.Tensor) -> torch.Tensor:
    """Move every row one down (row 0 becomes zeros): row i then only holds rows < i."""
    return F.pad(x, (0, 0, 1, 0))[:, :, :-1, :]


def right_shift(x: torch.Tensor) -> torch.Tensor:
    """Move every column one right (column 0 becomes zeros)."""
    return F.pad(x, (1, 0, 0, 0))[:, :, :, :-1]


def concat_elu(x: torch.Tensor) -> torch.Tensor:
    return F.elu(torch.cat([x, -x], dim=1))


class GatedResnet(nn.Module):
    """x + a * sigmoid(b), [a, b] = conv(concat_elu(conv(concat_elu(x)) + nin(concat_elu(skip))))."""

    def __init__(self, filters: int, conv: Callable[[int, int], nn.Module], skip_channels: int = 0,
                 dropout: float = 0.0):
        super().__init__()
        self.conv_in = conv(2 * filters, filters)
        self.nin_skip = nn.Conv2d(2 * skip_channels, filters, 1) if skip_channels else None
        self.dropout = nn.Dropout(dropout)
        self.conv_out = conv(2 * filters, 2 * filters)

    def forward(self, x: torch.Tensor, skip: Optional[torch.Tensor] = None) -> torch.Tensor:
        h = self.conv_in(concat_elu(x))
        if skip is not None:
            h = h + self.nin_skip(concat_elu(skip))
        h = self.conv_out(self.dropout(concat_elu(h)))
        a, b = h.chunk(2, dim=1)
        return x + a * torch.sigmoid(b)


def num_mixture_params(channels: int, mixtures: int) -> int:
    """Output channels: mixture logits, then per channel means and log-scales, then the
    channel-coupling coefficients (c(c-1)/2 per mixture): 10·M for RGB, as PixelCNN++."""
    return mixtures * (1 + 2 * channels + channels * (channels - 1) // 2)


class PixelCNN(nn.Module):
    """PixelCNN++-style model: ``forward(x)`` gives the mixture parameters at every pixel.

    Args:
        in_channels: image channels C (3 for CIFAR-10, 1 for (Fashion-)MNIST).
        nr_filters: width of both streams (PixelCNN++ CIFAR: 160).
        nr_resnet: gated residual blocks per stage and pass (PixelCNN++: 5).
        nr_stages: stages of the up and the down pass (PixelCNN++: 3).
        nr_logistic_mix: logistic mixture components M (PixelCNN++: 10).
        dropout: dropout inside the residual blocks during training (PixelCNN++: 0.5).

    Shape:
        x: ``(N, C, H, W)`` in [0, 1], 8-bit values (k/255); output ``(N, num_mixture_params, H, W)``.

    Example:
        >>> model = PixelCNN(in_channels=1, nr_filters=8, nr_resnet=1, nr_stages=1, nr_logistic_mix=2)
        >>> model(torch.rand(2, 1, 6, 6)).shape
        torch.Size([2, 6, 6, 6])
    """

    def __init__(self, in_channels: int = 3, nr_filters: int = 160, nr_resnet: int = 5, nr_stages: int = 3,
                 nr_logistic_mix: int = 10, dropout: float = 0.5):
        super().__init__()
        self.in_channels, self.nr_logistic_mix = in_channels, nr_logistic_mix
        f = nr_filters
        down = lambda cin, cout: DownShiftedConv2d(cin, cout, (2, 3))  # noqa: E731
        down_right = lambda cin, cout: DownRightShiftedConv2d(cin, cout, (2, 2))  # noqa: E731
        self.init_u = DownShiftedConv2d(in_channels + 1, f, (2, 3))
        self.init_ul_above = DownShiftedConv2d(in_channels + 1, f, (1, 3))
        self.init_ul_left = DownRightShiftedConv2d(in_channels + 1, f, (2, 1))
        blocks = nr_stages * nr_resnet
        self.up_u = nn.ModuleList(GatedResnet(f, down, 0, dropout) for _ in range(blocks))
        self.up_ul = nn.ModuleList(GatedResnet(f, down_right, f, dropout) for _ in range(blocks))
        self.down_u = nn.ModuleList(GatedResnet(f, down, f, dropout) for _ in range(blocks))
        self.down_ul = nn.ModuleList(GatedResnet(f, down_right, 2 * f, dropout) for _ in range(blocks))
        self.out = nn.Conv2d(f, num_mixture_params(in_channels, nr_logistic_mix), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = 2 * x - 1  # PixelCNN++ works on [-1, 1]
        x = torch.cat([x, torch.ones_like(x[:, :1])], dim=1)  # tells padding from black
        u = down_shift(self.init_u(x))
        ul = down_shift(self.init_ul_above(x)) + right_shift(self.init_ul_left(x))
        u_skips, ul_skips = [], []
        for block_u, block_ul in zip(self.up_u, self.up_ul):
            u = block_u(u)
            ul = block_ul(ul, u)
            u_skips.append(u)
            ul_skips.append(ul)
        for block_u, block_ul in zip(self.down_u, self.down_ul):
            u = block_u(u, u_skips.pop())
            ul = block_ul(ul, torch.cat([u, ul_skips.pop()], dim=1))
        return self.out(F.elu(ul))

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Per-image log-likelihood in nats of the 8-bit image ``x`` (values k/255)."""
        return discretized_mix_log_prob(self(x), x, self.nr_logistic_mix).flatten(1).sum(dim=1)


# -- the discretized logistic mixture ---------------------------------------------------------------
def _split_params(params: torch.Tensor, channels: int, mixtures: int):
    """(N, P, ...) -> logits (N, M, ...), means and log-scales (N, C, M, ...), coeffs (N, C(C-1)/2, M, ...)."""
    m, c = mixtures, channels
    rest = params.shape[2:]
    logits = params[:, :m]
    means = params[:, m:m + c * m].reshape(params.shape[0], c, m, *rest)
    log_scales = params[:, m + c * m:m + 2 * c * m].reshape(params.shape[0], c, m, *rest).clamp_min(-7.0)
    coeffs = torch.tanh(params[:, m + 2 * c * m:].reshape(params.shape[0], c * (c - 1) // 2, m, *rest))
    return logits, means, log_scales, coeffs


def _coupled_mean(means, coeffs, values, channel: int):
    """Mean of ``channel`` given the values (on [-1, 1]) of the channels before it:
    mu_c + sum_{c' < c} coeff_{c,c'} * x_{c'} (PixelCNN++'s linear autoregression over channels)."""
    mean = means[:, channel]
    first = channel * (channel - 1) // 2  # coefficients of channel c start after those of 0..c-1
    for previous in range(channel):
        mean = mean + coeffs[:, first + previous] * values[:, previous].unsqueeze(1)
    return mean


def _logistic_bin_log_prob(value: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """log P(bin of ``value``) under one logistic (value on [-1, 1], the 256 bins of width 2/255;
    the end bins take the tails). Stable in log space as in PixelCNN++."""
    centred = value - mean
    inv_scale = torch.exp(-log_scale)
    plus = inv_scale * (centred + _HALF_BIN)
    minus = inv_scale * (centred - _HALF_BIN)
    log_cdf_plus = plus - F.softplus(plus)  # log sigmoid(plus): the left end bin
    log_one_minus_cdf_minus = -F.softplus(minus)  # log (1 - sigmoid(minus)): the right end bin
    cdf_delta = torch.sigmoid(plus) - torch.sigmoid(minus)
    mid = inv_scale * centred
    log_pdf_mid = mid - log_scale - 2 * F.softplus(mid)  # density at the bin centre (tiny bins)
    inner = torch.where(cdf_delta > _TINY_DELTA, torch.log(cdf_delta.clamp_min(1e-12)),
                        log_pdf_mid - math.log((LEVELS - 1) / 2))
    return torch.where(value < -0.999, log_cdf_plus, torch.where(value > 0.999, log_one_minus_cdf_minus, inner))


def discretized_mix_log_prob(params: torch.Tensor, x: torch.Tensor, mixtures: int) -> torch.Tensor:
    """Per-pixel log-likelihood (nats, summed over channels) of the 8-bit image ``x`` in [0, 1]
    under the mixture ``params`` (N, P, H, W); shape (N, H, W)."""
    channels = x.shape[1]
    values = 2 * x - 1
    logits, means, log_scales, coeffs = _split_params(params, channels, mixtures)
    log_mix = torch.log_softmax(logits, dim=1)  # (N, M, H, W)
    total = log_mix
    for c in range(channels):
        mean = _coupled_mean(means, coeffs, values, c)
        total = total + _logistic_bin_log_prob(values[:, c].unsqueeze(1), mean, log_scales[:, c])
    return torch.logsumexp(total, dim=1)


def bin_log_probs(params_at: torch.Tensor, previous: torch.Tensor, channel: int, mixtures: int,
                  bins: Optional[torch.Tensor] = None) -> torch.Tensor:
    """log P(channel = k/255 | the channels before it) for all k, at one pixel.

    The mixture components are shared by a pixel's channels, so the exact conditional weighs each
    component by its posterior given the earlier channels' values (pi_m · p_m(x_<c)), not by pi_m.
    Summing these conditionals over the channels gives :func:`discretized_mix_log_prob`.

    Args:
        params_at: mixture parameters at one pixel, (N, P).
        previous: the pixel's values in [0, 1], (N, C); only channels < ``channel`` are read.
        channel: which sub-pixel.
        bins: if given, ``(N, K)`` intensities (integers 0..255) to evaluate, per image, instead
            of all 256 (PixelDefend only needs the bins within its window).

    Returns:
        (N, 256) log-probabilities (``exp`` sums to 1 over the 256 intensities), or (N, K) for ``bins``.
    """
    channels = previous.shape[1]
    logits, means, log_scales, coeffs = _split_params(params_at, channels, mixtures)  # (N, M), (N, C, M)
    values = 2 * previous - 1
    weights = torch.log_softmax(logits, dim=1)
    for earlier in range(channel):  # posterior over components given the channels already fixed
        mean = _coupled_mean(means, coeffs, values, earlier)
        weights = weights + _logistic_bin_log_prob(values[:, earlier].unsqueeze(1), mean, log_scales[:, earlier])
    weights = torch.log_softmax(weights, dim=1)
    mean = _coupled_mean(means, coeffs, values, channel)  # (N, M)
    levels = torch.linspace(-1.0, 1.0, LEVELS, device=params_at.device, dtype=params_at.dtype)
    levels = levels.view(1, 1, -1) if bins is None else levels[bins].unsqueeze(1)  # (1 or N, 1, 256 or K)
    per_mixture = _logistic_bin_log_prob(levels, mean.unsqueeze(2), log_scales[:, channel].unsqueeze(2))
    return torch.logsumexp(weights.unsqueeze(2) + per_mixture, dim=1)


@torch.no_grad()
def bits_per_dim(model: PixelCNN, images: torch.Tensor, batch_size: int = 256) -> float:
    """Mean negative log2-likelihood per sub-pixel of 8-bit ``images`` (the PixelCNN++ metric)."""
    was_training = model.training
    model.eval()
    try:
        nats = 0.0
        for start in range(0, images.shape[0], batch_size):
            nats += float(-model.log_prob(images[start:start + batch_size]).sum())
    finally:
        model.train(was_training)
    return nats / (images[0].numel() * images.shape[0] * math.log(2))


# -- training ---------------------------------------------------------------------------------------
PIXELCNN_RECIPE_VERSION = 1


def pixelcnn_recipe(**fields: Any) -> Dict[str, Any]:
    """A PixelCNN training recipe (plain JSON); defaults are a small Fashion-MNIST model."""
    recipe = {"kind": "pixelcnn", "arch_kwargs": {"in_channels": 1, "nr_filters": 16, "nr_resnet": 1,
                                                  "nr_stages": 2, "nr_logistic_mix": 5, "dropout": 0.0},
              "dataset": "fashion-mnist", "train_limit": 20000, "epochs": 1, "batch_size": 64, "lr": 2e-3,
              "lr_decay": 0.999, "seed": 0, "version": PIXELCNN_RECIPE_VERSION}
    unknown = set(fields) - set(recipe)
    if unknown:
        raise ValueError(f"pixelcnn_recipe: unknown fields {sorted(unknown)}")
    recipe.update(fields)
    return normalize_recipe(recipe)


def build_pixelcnn(recipe: Mapping[str, Any]) -> PixelCNN:
    """The recipe's model, initialised from its seed."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe["seed"])
        return PixelCNN(**recipe["arch_kwargs"])


def train_pixelcnn(model: PixelCNN, images: torch.Tensor, recipe: Mapping[str, Any], *,
                   progress: bool = True) -> PixelCNN:
    """Adam on the mean negative log-likelihood (bits/dim), learning rate times ``lr_decay`` per
    step (PixelCNN++ used 0.999995 over far more steps); returns the model in eval mode."""
    if recipe["train_limit"] is not None:
        images = images[:recipe["train_limit"]]
    images = (images * 255).round() / 255  # the likelihood is over 8-bit values
    optimizer = torch.optim.Adam(model.parameters(), lr=recipe["lr"])
    schedule = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=recipe["lr_decay"])
    batch, count = recipe["batch_size"], images.shape[0]
    dims = images[0].numel() * math.log(2)
    total = recipe["epochs"] * batches_per_epoch(count, batch)
    with seeded_training(recipe["seed"], total, "train pixelcnn", progress) as (shuffle, bar):  # seed + 1: dropout
        model.train()
        for _, _, index in epoch_batches(count, batch, recipe["epochs"], shuffle):
            loss = -model.log_prob(images[index]).mean() / dims
            descend(optimizer, loss)
            schedule.step()
            bar.update(1)
            bar.set_postfix(bpd=f"{finite_loss(loss, 'train pixelcnn'):.3f}", refresh=False)
    return model.eval()


def pixelcnn_train_or_load(recipe: Mapping[str, Any], data_fn: Callable[[Mapping[str, Any]], torch.Tensor], *,
                           progress: bool = True) -> PixelCNN:
    """The recipe's trained model: from ``cache_dir()/models/<key>.pt``, else trained and cached.
    ``data_fn(recipe)`` returns the training images (only called on a cache miss)."""
    def fit(model: PixelCNN) -> Dict[str, Any]:
        train_pixelcnn(model, data_fn(recipe), recipe, progress=progress)
        return {"torch": torch.__version__}

    return load_or_train(recipe, lambda: build_pixelcnn(recipe), fit)
