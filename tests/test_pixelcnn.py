"""PixelCNN++-style model: causal masks, a normalised likelihood, training lowers bits/dim."""

import math

import torch

from obfgrad.models.pixelcnn import (
    PixelCNN,
    bin_log_probs,
    bits_per_dim,
    discretized_mix_log_prob,
    num_mixture_params,
    pixelcnn_recipe,
    train_pixelcnn,
)


def _model(channels=3, seed=0, stages=2):
    torch.manual_seed(seed)
    return PixelCNN(in_channels=channels, nr_filters=8, nr_resnet=1, nr_stages=stages, nr_logistic_mix=3).eval()


def test_changing_a_pixel_never_changes_the_distribution_of_earlier_pixels():
    model = _model(channels=3)
    height = width = 6
    x = torch.rand(1, 3, height, width)
    with torch.no_grad():
        base = model(x)
    for position in (0, 7, 14, 20, 35):
        i, j = divmod(position, width)
        changed = x.clone()
        changed[0, :, i, j] = 1 - changed[0, :, i, j]
        with torch.no_grad():
            diff = (model(changed) - base).abs().amax(dim=1)[0].flatten()  # per pixel, raster order
        assert float(diff[: position + 1].max()) == 0.0, position  # itself and every earlier pixel
        if position + 1 < height * width:
            assert float(diff[position + 1:].max()) > 0.0  # later pixels do see it


def test_gradient_of_a_pixel_distribution_reaches_only_earlier_pixels():
    model = _model(channels=1, stages=1)
    x = torch.rand(1, 1, 5, 5, requires_grad=True)
    model(x)[0, :, 2, 3].sum().backward()
    grad = x.grad[0, 0].abs().flatten()
    position = 2 * 5 + 3
    assert float(grad[position:].max()) == 0.0
    assert float(grad[:position].sum()) > 0.0


def test_mixture_probabilities_sum_to_one_over_the_256_intensities():
    torch.manual_seed(1)
    for channels in (1, 3):
        params = torch.randn(64, num_mixture_params(channels, 4)) * 3
        previous = torch.rand(64, channels)
        for c in range(channels):
            total = bin_log_probs(params, previous, c, 4).exp().sum(dim=1)
            assert torch.allclose(total, torch.ones_like(total), atol=1e-4)


def test_bin_log_probs_of_chosen_bins_are_those_of_all_256():
    torch.manual_seed(2)
    params = torch.randn(5, num_mixture_params(3, 4), dtype=torch.float64) * 2
    previous = torch.rand(5, 3, dtype=torch.float64)
    bins = torch.randint(0, 256, (5, 7))
    for c in range(3):
        full = bin_log_probs(params, previous, c, 4)
        assert torch.allclose(bin_log_probs(params, previous, c, 4, bins), full.gather(1, bins), rtol=0, atol=1e-12)


def test_bin_log_probs_agree_with_the_per_image_likelihood():
    model = _model(channels=3)
    x = torch.randint(0, 256, (2, 3, 4, 4)).float() / 255
    params = model(x)
    per_pixel = discretized_mix_log_prob(params, x, 3)
    i, j = 2, 1
    expected = sum(bin_log_probs(params[:, :, i, j], x[:, :, i, j], c, 3)
                   .gather(1, (x[:, c, i, j] * 255).round().long()[:, None]).squeeze(1) for c in range(3))
    assert torch.allclose(per_pixel[:, i, j], expected, atol=1e-4)


def test_training_lowers_bits_per_dim_below_uniform():
    torch.manual_seed(0)
    images = (torch.rand(32, 1, 6, 6) < 0.3).float()  # two-level images: easy to model
    recipe = pixelcnn_recipe(arch_kwargs={"in_channels": 1, "nr_filters": 8, "nr_resnet": 1, "nr_stages": 1,
                                          "nr_logistic_mix": 2, "dropout": 0.0},
                             train_limit=None, epochs=12, batch_size=16, lr=1e-2)
    model = PixelCNN(**recipe["arch_kwargs"])
    before = bits_per_dim(model, images)
    train_pixelcnn(model, images, recipe, progress=False)
    after = bits_per_dim(model, images)
    assert after < before and after < math.log2(256) / 4
