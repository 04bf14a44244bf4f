"""PixelDefend purification: stays within eps_defend, picks the most likely value, and the three
evaluation schemes (incremental, crop, full) give identical images, equal to the naive loop, for
any batch."""

import pytest
import torch

from obfgrad.defenses.pixeldefend import METHODS, TIE_NATS, PixelDefend, purify
from obfgrad.models.pixelcnn import PixelCNN, bin_log_probs, pixelcnn_recipe, train_pixelcnn
from obfgrad.models.pixelcnn_incremental import IncrementalPixelCNN


def _model(channels, seed=0, filters=8, resnet=1, stages=1, mixtures=3):
    torch.manual_seed(seed)
    return PixelCNN(in_channels=channels, nr_filters=filters, nr_resnet=resnet, nr_stages=stages,
                    nr_logistic_mix=mixtures).eval()


def _trained_ish(channels, seed=0):
    """A PixelCNN fitted for a few epochs to smooth images: sharp, image-dependent mixtures."""
    generator = torch.Generator().manual_seed(seed)
    ramps = torch.linspace(0, 1, 6).view(1, 1, 1, 6) * torch.rand((48, channels, 6, 1), generator=generator)
    images = ((ramps + 0.05 * torch.randn(ramps.shape, generator=generator)).clamp(0, 1) * 255).round() / 255
    recipe = pixelcnn_recipe(arch_kwargs={"in_channels": channels, "nr_filters": 8, "nr_resnet": 1, "nr_stages": 2,
                                          "nr_logistic_mix": 3, "dropout": 0.0},
                             train_limit=None, epochs=6, batch_size=16, lr=1e-2, seed=seed)
    torch.manual_seed(seed)
    return train_pixelcnn(PixelCNN(**recipe["arch_kwargs"]), images, recipe, progress=False), images


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


@pytest.mark.parametrize("channels", [1, 3])
def test_every_method_equals_the_naive_loop_in_float64(channels):
    model = _model(channels, seed=2)
    x = torch.randint(0, 256, (2, channels, 4, 5)).float() / 255
    with torch.no_grad():
        expected = _naive_purify(model.double(), x.double(), 16 / 255).float()
    model.float()
    for method in METHODS:
        stats = {}
        assert torch.equal(purify(model, x, 16 / 255, stats=stats, method=method), expected), method
        assert stats["evaluations"] <= 20  # at most one per pixel, never one per sub-pixel


def test_choices_over_the_window_equal_choices_over_all_256_bins_at_the_edges():
    """The chooser evaluates only the bins of each value's window (clamped at 0 and 255); the
    definition masks all 256. Values near 0 and 255 make the windows clamp on both sides; the
    model's sharp mixtures centred at levels 70 and 185 favour bins just outside the windows."""
    model = _model(3, seed=6, mixtures=4).double()
    with torch.no_grad():  # parameters: 4 logits, 3x4 means, 3x4 log-scales, 3x4 coefficients
        model.out.weight.mul_(0.05)
        model.out.bias.zero_()
        model.out.bias[4:16] = torch.tensor([70.0, 185.0]).repeat(6) * 2 / 255 - 1
        model.out.bias[16:28] = -4.0  # scale 0.018: about 2.3 bins
    generator = torch.Generator().manual_seed(6)
    near_edges = torch.cat([torch.arange(0, 12), torch.arange(244, 256)])
    levels = near_edges[torch.randint(0, near_edges.numel(), (2, 3, 3, 4), generator=generator)].double()
    radius = 40
    out = levels.clone()
    with torch.no_grad():
        for i in range(3):
            for j in range(4):
                for c in range(3):
                    log_probs = bin_log_probs(model(out / 255)[:, :, i, j], out[:, :, i, j] / 255, c, 4)
                    bins = torch.arange(256, dtype=torch.float64)
                    low, high = (levels[:, c, i, j, None] - radius).clamp_min(0), levels[:, c, i, j, None] + radius
                    log_probs = log_probs.masked_fill((bins < low) | (bins > high), float("-inf"))
                    near = log_probs >= log_probs.max(dim=1, keepdim=True).values - TIE_NATS
                    out[:, c, i, j] = near.double().argmax(dim=1).double()  # the lowest near bin
    assert float((out - levels).abs().max()) > 0  # it moved values
    for method in METHODS:
        assert torch.equal(purify(model, levels / 255, radius / 255, method=method).double(), out / 255), method


CASES = [  # (name, channels, model kwargs, height, width, batch, eps_defend)
    ("smoke-size", 1, {"filters": 12, "resnet": 1, "stages": 2, "mixtures": 5}, 7, 6, 3, 0.2),
    ("rgb", 3, {"filters": 8, "resnet": 2, "stages": 2, "mixtures": 4}, 5, 5, 2, 16 / 255),
    ("deep", 3, {"filters": 6, "resnet": 1, "stages": 3, "mixtures": 10}, 4, 6, 3, 8 / 255),
    ("one image", 1, {"filters": 8, "resnet": 2, "stages": 1, "mixtures": 2}, 6, 4, 1, 32 / 255),
    ("eps 0", 3, {"filters": 4, "resnet": 1, "stages": 1, "mixtures": 3}, 3, 4, 2, 0.0),
    ("eps 1", 1, {"filters": 4, "resnet": 1, "stages": 2, "mixtures": 3}, 4, 4, 2, 1.0),
]


@pytest.mark.parametrize("case", CASES, ids=[case[0] for case in CASES])
def test_methods_and_batches_give_identical_purifications_on_random_models(case):
    """Untrained models have flat mixtures: many choices are near-ties, the hard case for exactness."""
    _, channels, kwargs, height, width, batch, eps = case
    model = _model(channels, seed=len(case[0]), **kwargs)
    x = torch.rand((batch, channels, height, width), generator=torch.Generator().manual_seed(batch))
    _assert_identical_everywhere(model, x, eps)


@pytest.mark.parametrize("channels", [1, 3])
def test_methods_and_batches_give_identical_purifications_on_trained_models(channels):
    model, images = _trained_ish(channels)
    noisy = (images[:4] + 0.1 * torch.randn(images[:4].shape, generator=torch.Generator().manual_seed(5))).clamp(0, 1)
    for eps in (8 / 255, 32 / 255):
        _assert_identical_everywhere(model, noisy, eps)


def _assert_identical_everywhere(model, x, eps):
    expected = purify(model, x, eps, method="full")
    assert float((expected - (x * 255).round() / 255).abs().max()) > 0 or eps == 0  # it did something
    for method in ("incremental", "crop"):
        assert torch.equal(purify(model, x, eps, method=method), expected), method
    one_by_one = torch.cat([purify(model, x[k:k + 1], eps) for k in range(x.shape[0])])
    assert torch.equal(one_by_one, expected)
    assert torch.equal(purify(model, x.flip(0), eps).flip(0), expected)  # the batch's order does not matter


@pytest.mark.parametrize("trained", [False, True])
def test_float64_rounding_stays_far_below_the_tie_band(trained):
    """The premise of exactness: at every position, incremental and full-image log-probabilities
    of all 256 bins differ by far less than TIE_NATS."""
    model = (_trained_ish(3)[0] if trained else _model(3, filters=16, resnet=2, stages=2, mixtures=10)).double()
    with torch.no_grad():
        _assert_rounding_below_the_tie_band(model)


def _assert_rounding_below_the_tie_band(model):
    mixtures = model.nr_logistic_mix
    levels = torch.randint(0, 256, (3, 3, 6, 6), generator=torch.Generator().manual_seed(0)).double()
    expected = model(levels / 255)
    steps = IncrementalPixelCNN(model, 3, 6, 6, levels)
    worst = 0.0
    for i in range(6):
        steps.start_row(levels, i)
        for j in range(6):
            got = steps.params_at(levels, i, j)
            for c in range(3):
                previous = levels[:, :, i, j] / 255
                difference = bin_log_probs(got, previous, c, mixtures) - bin_log_probs(
                    expected[:, :, i, j], previous, c, mixtures)
                worst = max(worst, float(difference.abs().max()))
    assert worst < TIE_NATS / 100


def test_ties_go_to_the_lowest_intensity():
    """A model whose every mixture is centred at 127.5/255 rates 127 and 128 exactly alike; float
    rounding must not decide: every method picks 127."""
    model = _model(1)
    with torch.no_grad():
        model.out.weight.zero_()
        model.out.bias.zero_()  # logits 0, means 0 (level 127.5), log-scales 0
    x = torch.full((2, 1, 3, 3), 128 / 255)
    for method in METHODS:
        out = purify(model, x, 2 / 255, method=method)
        assert torch.equal(out, torch.full_like(x, 127 / 255)), method


def test_incremental_purification_counts_each_position_once():
    model = _model(1)
    stats = {}
    purify(model, torch.rand(3, 1, 4, 5), 16 / 255, max_positions=13, stats=stats)
    assert stats == {"evaluations": 13, "image_positions": 3 * 13, "row_steps": 3}
    full_stats = {}
    purify(model, torch.rand(3, 1, 4, 5), 16 / 255, max_positions=13, stats=full_stats, method="full")
    assert full_stats == {"evaluations": 13, "image_positions": 13 * 3 * 4 * 5}


def test_bad_arguments_are_refused():
    model = _model(1)
    x = torch.rand(1, 1, 3, 3)
    with pytest.raises(ValueError, match="method"):
        purify(model, x, method="fast")
    with pytest.raises(ValueError, match="dtype"):
        purify(model, x, dtype=torch.float16)
    with pytest.raises(ValueError, match="eval mode"):
        purify(_model(1).train(), x)
    with pytest.raises(TypeError, match="PixelCNN"):
        purify(torch.nn.Identity(), x)
    with pytest.raises(ValueError, match="channels"):
        purify(model, torch.rand(1, 3, 3, 3))


def test_the_defense_keeps_its_density_model_in_eval_mode():
    defense = PixelDefend(_model(1), 16 / 255)
    torch.nn.Sequential(defense, torch.nn.Flatten()).train()
    assert defense.training and not defense.pixelcnn.training


def test_the_crop_method_does_not_re_evaluate_unchanged_images():
    model = _model(1)
    x = torch.randint(0, 256, (2, 1, 4, 4)).float() / 255
    fixed_point = purify(model, purify(model, x, 0.0), 0.0)  # eps 0: nothing can change
    stats = {}
    assert torch.equal(purify(model, fixed_point, 0.0, stats=stats, method="crop"), fixed_point)
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


@pytest.mark.gpu
def test_purification_on_cuda_equals_the_cpu_one():
    model = _model(3, seed=4, filters=8, resnet=1, stages=2, mixtures=4)
    x = torch.rand((3, 3, 5, 5), generator=torch.Generator().manual_seed(0))
    expected = purify(model, x, 16 / 255)
    for method in METHODS:
        assert torch.equal(purify(model.cuda(), x.cuda(), 16 / 255, method=method).cpu(), expected), method
        model.cpu()
