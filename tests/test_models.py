"""Architectures: output shapes at paper size, parameter counts against closed-form counts of
the published layer lists, and the building blocks' defining behaviour."""

import pytest
import torch
from torch import nn

from obfgrad.models import MODELS, build_model
from obfgrad.models.lid_cnn import LidCNN
from obfgrad.models.mnist_cnn import MnistCNN
from obfgrad.models.small_cnn import SmallCNN
from obfgrad.models.wide_resnet import ResidualUnit, WideResNet, per_image_standardization


def count(model):
    return sum(p.numel() for p in model.parameters())


def madry_parameter_count(in_channels, widths=(160, 320, 640), units=5, stem=16, classes=10):
    """Closed form for Madry's model.py: conv weights (no bias), BN scale+shift, FC."""
    total = 9 * in_channels * stem
    previous = stem
    for width in widths:
        for _ in range(units):
            total += 2 * previous + 9 * previous * width  # bn1, conv1
            total += 2 * width + 9 * width * width  # bn2, conv2
            previous = width
    return total + 2 * previous + previous * classes + classes


@pytest.mark.parametrize("in_channels", [3, 48])
def test_wide_resnet_at_paper_scale(in_channels):
    torch.manual_seed(0)
    model = build_model("wide_resnet", in_channels=in_channels).eval()
    assert count(model) == madry_parameter_count(in_channels)
    assert 45e6 < count(model) < 47e6  # Madry's w28-10-style CIFAR net has ~46M parameters
    with torch.no_grad():
        logits = model(torch.rand(1, in_channels, 32, 32))
    assert logits.shape == (1, 10) and torch.isfinite(logits).all()


def test_wide_resnet_small_version_counts_and_runs():
    model = WideResNet(widths=(16, 32, 64), units_per_stage=2)  # the authors' "tiny" variant
    assert count(model) == madry_parameter_count(3, (16, 32, 64), 2)
    assert model(torch.rand(3, 3, 32, 32)).shape == (3, 10)


def test_per_image_standardization_matches_tf_formula():
    x = torch.rand(4, 3, 5, 5, dtype=torch.float64)
    x[3] = 0.25  # constant image: std floor 1/sqrt(75) applies
    out = per_image_standardization(x)
    for image, result in zip(x, out):
        n = image.numel()
        adjusted = max(float(image.std(unbiased=False)), 1 / n**0.5)
        torch.testing.assert_close(result, (image - image.mean()) / adjusted)


def test_standardized_model_ignores_pixel_scale():
    # Madry's model saw 0-255 pixels, ours [0, 1]: with standardisation both agree.
    torch.manual_seed(0)
    model = WideResNet(widths=(8, 16, 32), units_per_stage=1).eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(255 * x), rtol=1e-4, atol=1e-4)
    raw = WideResNet(widths=(8, 16, 32), units_per_stage=1, standardize=False).eval()
    with torch.no_grad():
        assert not torch.allclose(raw(x), raw(255 * x))


@pytest.mark.parametrize("stride, activate_first", [(1, True), (2, False)])
def test_residual_shortcut_pools_and_zero_pads_channels(stride, activate_first):
    unit = ResidualUnit(4, 10, stride, activate_first).eval()
    nn.init.zeros_(unit.conv2.weight)  # residual branch contributes nothing
    x = torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        out = unit(x)
        shortcut = torch.nn.functional.leaky_relu(unit.bn1(x), 0.1) if activate_first else x
        if stride > 1:
            shortcut = torch.nn.functional.avg_pool2d(shortcut, stride)
    side = 8 // stride
    assert out.shape == (2, 10, side, side)
    torch.testing.assert_close(out[:, 3:7], shortcut)  # 3 zero channels before, 3 after
    assert out[:, :3].abs().max() == 0 and out[:, 7:].abs().max() == 0


def test_wide_resnet_batch_norm_mirrors_tf_decay():
    bn = WideResNet(widths=(8, 16, 32), units_per_stage=1).final_bn
    assert bn.momentum == pytest.approx(0.1) and bn.eps == pytest.approx(1e-3)


def test_mnist_cnn_follows_keras_layer_list():
    model = MnistCNN()
    kinds = [type(layer).__name__ for layer in model.layers]
    assert kinds == ["Conv2d", "ReLU", "Conv2d", "ReLU", "MaxPool2d", "Conv2d", "ReLU", "Dropout", "Flatten",
                     "Linear", "ReLU", "Dropout", "Linear"]
    # valid convs: 28 -> 26 -> 24 -> pool 12 -> 10; Dense on 128*10*10
    expected = (9 * 1 * 64 + 64) + (9 * 64 * 128 + 128) + (9 * 128 * 128 + 128) + (12800 * 128 + 128) + (128 * 10 + 10)
    assert count(model) == expected
    assert [m.p for m in model.layers if isinstance(m, nn.Dropout)] == [0.25, 0.5]
    assert model.eval()(torch.rand(1, 1, 28, 28)).shape == (1, 10)


def test_lid_cnn_layers_shift_and_l2_penalty():
    torch.manual_seed(0)
    model = LidCNN().eval()
    convs = [m.out_channels for m in model.layers if isinstance(m, nn.Conv2d)]
    assert convs == [32, 32, 64, 64, 128, 128]
    assert [m.out_features for m in model.layers if isinstance(m, nn.Linear)] == [1024, 512, 10]
    x = torch.rand(2, 3, 32, 32)
    outputs = model.layer_outputs(x)
    assert len(outputs) == 26  # input + 25 Keras layers (softmax included)
    torch.testing.assert_close(outputs[0], x - 0.5)
    torch.testing.assert_close(outputs[-2], model(x))
    torch.testing.assert_close(outputs[-1].sum(dim=1), torch.ones(2))
    penalty = 0.01 * sum(float(p.detach().pow(2).sum()) for p in [*model.dense1024.parameters(),
                                                                  *model.dense512.parameters()])
    assert float(model.regularization_loss().detach()) == pytest.approx(penalty, rel=1e-5)


@pytest.mark.parametrize("in_channels, size", [(1, 28), (3, 32), (48, 32)])
def test_small_cnn_shapes(in_channels, size):
    model = SmallCNN(in_channels=in_channels, width=4, image_size=size)
    assert model(torch.rand(2, in_channels, size, size)).shape == (2, 10)
    with pytest.raises(ValueError, match="image_size"):
        SmallCNN(image_size=30)


def test_registry():
    assert {"wide_resnet", "lid_cnn", "mnist_cnn", "small_cnn"} <= set(MODELS)
    assert isinstance(build_model("small_cnn", width=4), SmallCNN)
    with pytest.raises(ValueError, match="arch"):
        build_model("resnet50")
