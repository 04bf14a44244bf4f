"""Guo et al.'s five input transformations and Xie et al.'s randomization: shapes and ranges,
randomness that resamples per call and replays with a seed, and BPDA/EOT gradients that reach
the input through every defense."""

import pytest
import torch

from obfgrad.attacks import EOT, PenalizedGradientDescent, TransferAttack
from obfgrad.defenses import (
    BitDepthReduction,
    CropRescale,
    ImageQuilting,
    JPEGCompression,
    RandomResizePad,
    TransformedClassifier,
    TVMinimization,
)
from obfgrad.models import InceptionV3, build_model


def _database(channels=1):
    return torch.rand(400, channels, 5, 5, generator=torch.Generator().manual_seed(0))


def _images(n=3, channels=1, side=28, seed=1):
    return torch.rand(n, channels, side, side, generator=torch.Generator().manual_seed(seed))


TRANSFORMS = {
    "bit_depth": lambda: BitDepthReduction(3),
    "jpeg": lambda: JPEGCompression(75),
    "crop_rescale": lambda: CropRescale(),
    "tv": lambda: TVMinimization(),
    "quilting": lambda: ImageQuilting(_database()),
    "randomization": lambda: RandomResizePad(),
}
RANDOM = ("crop_rescale", "tv", "quilting", "randomization")


@pytest.mark.parametrize("name", sorted(TRANSFORMS))
def test_transform_keeps_shape_and_unit_range(name):
    x = _images()
    out = TRANSFORMS[name]()(x)
    assert out.shape == x.shape and out.dtype == torch.float32
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    assert not torch.equal(out, x)  # every transformation changes a random image


def test_bit_depth_keeps_the_top_three_bits_of_the_8bit_value():
    x = torch.tensor([0.0, 31 / 255, 32 / 255, 0.5, 1.0]).view(1, 1, 1, 5)
    expected = torch.tensor([0, 0, 32, 96, 224]).float().view(1, 1, 1, 5) / 255
    assert torch.allclose(BitDepthReduction(3)(x), expected)


def test_crop_rescale_of_the_full_side_is_the_identity():
    x = _images()
    assert torch.allclose(CropRescale(crop_fraction=1.0)(x), x, atol=1e-5)


def test_crop_rescale_at_fixed_offset_samples_the_crop_bilinearly():
    # A horizontal ramp: a crop of half the side is a ramp over half the range, wherever it starts.
    ramp = torch.linspace(0, 1, 21).view(1, 1, 1, 21).expand(1, 1, 21, 21).contiguous()
    out = CropRescale(crop_fraction=0.5)(ramp, seed=0)
    row = out[0, 0, 10]
    assert torch.allclose(row[1:] - row[:-1], torch.full((20,), 0.5 / 20), atol=1e-5)


def test_randomization_pads_with_half_grey_inside_the_scaled_sizes():
    x = torch.zeros(8, 1, 28, 28)
    out = RandomResizePad(resize_back=False)(x, seed=5)
    assert out.shape == (8, 1, 31, 31)
    blank = (out == 0).flatten(1).sum(1)  # the resized image keeps its zeros; the rest is 0.5
    assert set(blank.tolist()) <= {28 * 28, 29 * 29, 30 * 30}
    assert bool(((out == 0) | (out == 0.5)).all())


def test_randomization_scales_the_paper_sizes():
    assert RandomResizePad().sizes(299) == (299, 331, 331)
    assert RandomResizePad().sizes(28) == (28, 31, 31)


@pytest.mark.parametrize("name", RANDOM)
def test_randomness_resamples_per_call_and_replays_with_a_seed(name):
    transform = TRANSFORMS[name]()
    x = _images(seed=2)
    assert transform.random
    assert not torch.equal(transform(x), transform(x))
    assert torch.equal(transform(x, seed=11), transform(x, seed=11))
    fixed = type(transform)(**({"database": transform.database} if name == "quilting" else {}), seed=11)
    assert torch.equal(fixed(x), fixed(x)) and torch.equal(fixed(x), transform(x, seed=11))


@pytest.mark.parametrize("name", ("bit_depth", "jpeg"))
def test_deterministic_transforms_say_so(name):
    transform = TRANSFORMS[name]()
    x = _images()
    assert not transform.random and torch.equal(transform(x), transform(x))


def _net(channels=1):
    torch.manual_seed(0)
    return build_model("small_cnn", in_channels=channels, width=4, image_size=28).eval()


@pytest.mark.parametrize("name", sorted(TRANSFORMS))
def test_bpda_eot_gradient_reaches_the_input(name):
    model = EOT(TransformedClassifier(TRANSFORMS[name](), _net()), samples=3)
    x = _images(n=2).requires_grad_(True)
    loss = torch.nn.functional.cross_entropy(model(x), torch.tensor([1, 2]))
    (grad,) = torch.autograd.grad(loss, x)
    assert grad is not None and bool(torch.isfinite(grad).all()) and float(grad.abs().sum()) > 0


def test_without_bpda_bit_depth_has_no_gradient():
    x = _images(n=2).requires_grad_(True)
    out = BitDepthReduction(3, bpda=False)(x)
    assert not out.requires_grad  # shattered: the true gradient is zero almost everywhere


def test_reference_backend_matches_native():
    x = _images(n=2)
    assert torch.equal(JPEGCompression(backend="reference")(x), JPEGCompression()(x))
    assert torch.allclose(TVMinimization(backend="reference")(x, seed=3), TVMinimization()(x, seed=3), atol=1e-4)
    db = _database()
    assert torch.equal(ImageQuilting(db, backend="reference")(x, seed=3), ImageQuilting(db)(x, seed=3))


def test_crop_ensemble_is_the_log_mean_softmax_of_its_draws():
    net, x = _net(), _images(n=2)
    model = TransformedClassifier(CropRescale(seed=4), net, ensemble=5)
    stacked = x.repeat(5, 1, 1, 1)
    probs = torch.softmax(net(CropRescale()(stacked, seed=4)), 1).view(5, 2, -1).mean(0)
    assert torch.allclose(model(x).exp(), probs, atol=1e-6)


def test_penalized_descent_stays_in_budget_and_beats_an_undefended_linear_model():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 2))
    x = torch.rand(6, 1, 4, 4)
    y = net(x).argmax(1)
    attack = PenalizedGradientDescent("l2", eps=3.0, steps=50, lr=0.2, penalty=0.0, normalize=True)
    result = attack(net, x, y)
    assert bool((result.distance <= 3.0 + 1e-5).all()) and bool(result.success.all())
    assert bool((net(result.x_adv).argmax(1) != y).all())


def test_transfer_attack_crafts_on_the_surrogate_only():
    surrogate = _net()
    calls = []
    target_model = lambda v: (calls.append(v.requires_grad), surrogate(v))[1]  # noqa: E731
    from obfgrad.attacks import PGD
    result = TransferAttack(PGD(eps=0.1, steps=2, step_size=0.05), surrogate)(target_model, _images(n=2),
                                                                                 torch.tensor([0, 1]))
    assert calls == [False]  # the target judged once, never differentiated
    assert result.x_adv.shape == (2, 1, 28, 28)


def test_inception_v3_has_the_paper_size_and_resizes_its_input():
    model = InceptionV3().eval()
    assert 23_800_000 < sum(p.numel() for p in model.parameters()) < 23_900_000  # 23.8M without the aux head
    with torch.no_grad():
        assert model(torch.rand(1, 3, 80, 80)).shape == (1, 1000)
    assert InceptionV3(num_classes=1001, drop_background=True).eval()(torch.rand(1, 3, 75, 75)).shape == (1, 1000)
