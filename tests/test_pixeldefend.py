"""PixelDefend purification: stays within eps_defend, picks the most likely value, and the fast
path (one evaluation per pixel, crop, reuse) equals the naive loop."""

import torch

from obfgrad.defenses.pixeldefend import PixelDefend, purify
from obfgrad.models.pixelcnn import PixelCNN, bin_log_probs


def _model(channels, seed=0):
    torch.manual_seed(seed)
    return PixelCNN(in_channels=channels, nr_filters=8, nr_resnet=1, nr_stages=1, nr_logistic_mix=3).eval()


def test_purification_never_moves_a_value_more_than_eps_defend():
    model = _model(3)
    x = torch.randint(0, 256, (3, 3, 5, 5)).float() / 255
    eps = 16 / 255
    out = purify(model, x, eps)
    assert float((out - x).abs().max()) <= eps + 1e-6
    assert float((out - x).abs().max()) > 0  # it did something
    x_float = torch.rand(3, 3, 5, 5)  # non-8-bit input: rounded first, then within eps
    assert float((purify(model, x_float, eps) - x_float).abs().max()) <= eps + 0.5 / 255 + 1e-6


def _naive_purify(model, x, eps):
    """One full-image network evaluation per sub-pixel, straight from the definition."""
    radius = round(eps * 255)
    v = (x * 255).round()
    out = v.clone()
    n, channels, height, width = x.shape
    for i in range(height):
        for j in range(width):
            for c in range(channels):
                params = model(out / 255)[:, :, i, j]
                log_probs = bin_log_probs(params, out[:, :, i, j] / 255, c, model.nr_logistic_mix)
                for k in range(n):
                    lo, hi = int(max(v[k, c, i, j] - radius, 0)), int(min(v[k, c, i, j] + radius, 255))
                    out[k, c, i, j] = lo + int(log_probs[k, lo:hi + 1].argmax())
    return out / 255


def test_fast_purification_equals_the_naive_loop():
    model = _model(3, seed=2)
    x = torch.randint(0, 256, (2, 3, 4, 4)).float() / 255
    with torch.no_grad():
        expected = _naive_purify(model, x, 16 / 255)
    stats = {}
    assert torch.equal(purify(model, x, 16 / 255, stats=stats), expected)
    assert torch.equal(purify(model, x, 16 / 255, reuse=False), expected)
    assert stats["evaluations"] <= 16  # at most one per pixel, never one per sub-pixel


def test_unchanged_images_are_not_re_evaluated():
    model = _model(1)
    x = torch.randint(0, 256, (2, 1, 4, 4)).float() / 255
    fixed_point = purify(model, purify(model, x, 0.0), 0.0)  # eps 0: nothing can change
    stats = {}
    assert torch.equal(purify(model, fixed_point, 0.0, stats=stats), fixed_point)
    assert stats["evaluations"] == 4  # once per row, not once per pixel


def test_max_positions_purifies_only_the_first_pixels_in_raster_order():
    model = _model(1)
    x = torch.randint(0, 256, (4, 1, 5, 5)).float() / 255
    full = purify(model, x, 32 / 255)
    partial = PixelDefend(model, 32 / 255, max_positions=7)(x)
    assert torch.equal(partial.flatten(1)[:, :7], full.flatten(1)[:, :7])
    assert torch.equal(partial.flatten(1)[:, 7:], x.flatten(1)[:, 7:])


def test_memoised_purification_equals_a_fresh_one_and_skips_repeats():
    model = _model(1, seed=3)
    x = torch.rand(3, 1, 4, 4)
    defense = PixelDefend(model, 16 / 255)
    first = defense(x)
    assert torch.equal(first, purify(model, x, 16 / 255))
    again = defense(torch.cat([x[1:], torch.rand(1, 1, 4, 4)]))
    assert defense.last_stats["memo_hits"] == 2 and defense.last_stats["images"] == 1
    assert torch.equal(again[:2], first[1:])
