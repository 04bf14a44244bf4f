"""Incremental PixelCNN evaluation: at every position, in raster order, the same mixture
parameters as the forward pass, for every configuration the class supports, without reading
the pixels that are not yet final."""

import pytest
import torch

from obfgrad.models.pixelcnn import PixelCNN
from obfgrad.models.pixelcnn_incremental import IncrementalPixelCNN

CONFIGS = [  # (channels, nr_filters, nr_resnet, nr_stages, nr_logistic_mix, height, width, batch)
    (1, 4, 1, 1, 1, 5, 6, 2),
    (1, 12, 1, 2, 5, 7, 7, 3),  # the smoke row's PixelCNN
    (3, 8, 2, 3, 3, 4, 5, 2),
    (3, 6, 1, 2, 10, 1, 4, 1),  # a single row
    (1, 6, 2, 1, 2, 4, 1, 2),  # a single column
    (2, 5, 3, 2, 4, 3, 3, 4),  # two channels: the channel-coupling coefficients of a non-RGB image
]


def _model(channels, filters, resnet, stages, mixtures, seed=0, scale=1.0, dtype=torch.float64):
    torch.manual_seed(seed)
    model = PixelCNN(in_channels=channels, nr_filters=filters, nr_resnet=resnet, nr_stages=stages,
                     nr_logistic_mix=mixtures, dropout=0.5).eval().to(dtype)
    with torch.no_grad():
        for parameter in model.parameters():  # scale > 1: larger activations, sharper mixtures
            parameter.mul_(scale)
    return model


def _all_positions(model, levels):
    """Incremental parameters at every position, ``(N, P, H, W)``."""
    n, _, height, width = levels.shape
    steps = IncrementalPixelCNN(model, n, height, width, levels)
    out = levels.new_zeros((n, model.out.out_channels, height, width))
    for i in range(height):
        steps.start_row(levels, i)
        for j in range(width):
            out[:, :, i, j] = steps.params_at(levels, i, j)
    return out


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: "x".join(map(str, c)))
@pytest.mark.parametrize("scale", [1.0, 3.0])
@torch.no_grad()
def test_incremental_parameters_equal_the_forward_pass_at_every_position(config, scale):
    channels, filters, resnet, stages, mixtures, height, width, batch = config
    model = _model(channels, filters, resnet, stages, mixtures, scale=scale)
    levels = torch.randint(0, 256, (batch, channels, height, width)).double()
    expected = model(levels / 255)
    got = _all_positions(model, levels)
    assert torch.allclose(got, expected, rtol=1e-12, atol=1e-12 * float(expected.abs().max()))


@torch.no_grad()
def test_float32_incremental_parameters_agree_with_the_forward_pass_up_to_rounding():
    model = _model(3, 8, 2, 2, 4, dtype=torch.float32)
    levels = torch.randint(0, 256, (2, 3, 5, 6)).float()
    assert torch.allclose(_all_positions(model, levels), model(levels / 255), atol=1e-5)


@torch.no_grad()
def test_pixels_that_are_not_final_yet_are_never_read():
    """At (i, j), the pixels at and after (i, j) may still change: fill them with NaN."""
    model = _model(3, 6, 1, 2, 3)
    levels = torch.randint(0, 256, (2, 3, 4, 5)).double()
    expected = model(levels / 255)
    steps = IncrementalPixelCNN(model, 2, 4, 5, levels)
    for i in range(4):
        for j in range(5):
            partial = levels.clone().flatten(2)
            partial[:, :, i * 5 + j:] = float("nan")
            partial = partial.view_as(levels)
            if j == 0:
                steps.start_row(partial, i)
            assert torch.allclose(steps.params_at(partial, i, j), expected[:, :, i, j], atol=1e-12)


def test_rows_are_visited_in_order_and_the_model_is_checked():
    model = _model(1, 4, 1, 1, 2)
    levels = torch.zeros(1, 1, 3, 3, dtype=torch.float64)
    steps = IncrementalPixelCNN(model, 1, 3, 3, levels)
    with pytest.raises(ValueError, match="row"):
        steps.start_row(levels, 1)
    steps.start_row(levels, 0)
    with pytest.raises(ValueError, match="row"):
        steps.params_at(levels, 1, 0)
    with pytest.raises(ValueError, match="eval mode"):
        IncrementalPixelCNN(_model(1, 4, 1, 1, 2).train(), 1, 3, 3, levels)
    with pytest.raises(ValueError, match="dtype"):
        IncrementalPixelCNN(model, 1, 3, 3, levels.float())
    with pytest.raises(TypeError, match="PixelCNN"):
        IncrementalPixelCNN(torch.nn.Linear(2, 2), 1, 3, 3, levels)


@pytest.mark.gpu
@torch.no_grad()
def test_incremental_parameters_on_cuda_equal_the_forward_pass():
    model = _model(3, 8, 2, 2, 4).cuda()
    levels = torch.randint(0, 256, (2, 3, 5, 6), device="cuda").double()
    assert torch.allclose(_all_positions(model, levels), model(levels / 255), atol=1e-10)
