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
    crop_rescale,
    resize_and_pad,
)
from obfgrad.defenses.randomization import GEOMETRIES
from obfgrad.defenses.tf_resize import crop_and_resize, resize_bilinear_tf1
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
    attack = PenalizedGradientDescent("l2", 3.0, steps=50, step_size=0.2, penalty=0.0, update="normalized")
    result = attack(net, x, y)
    assert bool((result.distance <= 3.0 + 1e-5).all()) and bool(result.success.all())
    assert bool((net(result.x_adv).argmax(1) != y).all())


def test_transfer_attack_crafts_on_the_surrogate_only():
    surrogate = _net()
    calls = []
    target_model = lambda v: (calls.append(v.requires_grad), surrogate(v))[1]  # noqa: E731
    from obfgrad.attacks import PGD
    result = TransferAttack(PGD("linf", 0.1, steps=2, step_size=0.05), surrogate)(target_model, _images(n=2),
                                                                                 torch.tensor([0, 1]))
    assert calls == [False]  # the target judged once, never differentiated
    assert result.x_adv.shape == (2, 1, 28, 28)


def test_inception_v3_has_the_paper_size_and_resizes_its_input():
    model = InceptionV3().eval()
    assert 23_800_000 < sum(p.numel() for p in model.parameters()) < 23_900_000  # 23.8M without the aux head
    with torch.no_grad():
        assert model(torch.rand(1, 3, 80, 80)).shape == (1, 1000)
    assert InceptionV3(num_classes=1001, drop_background=True).eval()(torch.rand(1, 3, 75, 75)).shape == (1, 1000)


# ------------------------------------------------------------ the authors' geometries (paper profile)
# Their exact outputs are checked against golden arrays in tests/test_authors_golden.py; these
# tests state the geometry's properties and tie the transforms to their functional forms.


def _bilinear_float64(x, rows, cols):
    """Plain float64 bilinear sampling of (H, W) ``x`` at source rows/cols (upper index clamped)."""
    x = x.double()
    r0, c0 = rows.floor().long(), cols.floor().long()
    r1, c1 = (r0 + 1).clamp(max=x.shape[0] - 1), (c0 + 1).clamp(max=x.shape[1] - 1)
    wr, wc = (rows - r0)[:, None], (cols - c0)[None, :]
    top = x[r0][:, c0] * (1 - wc) + x[r0][:, c1] * wc
    bottom = x[r1][:, c0] * (1 - wc) + x[r1][:, c1] * wc
    return top * (1 - wr) + bottom * wr


def test_tf1_resize_samples_at_i_times_in_over_out():
    x = _images(n=1, side=17, seed=3)
    out = resize_bilinear_tf1(x, (40, 23))
    rows = torch.arange(40, dtype=torch.float64) * 17 / 40
    cols = torch.arange(23, dtype=torch.float64) * 17 / 23
    assert torch.allclose(out[0, 0].double(), _bilinear_float64(x[0, 0], rows, cols), atol=1e-6)
    # Unlike half-pixel-centred resizing, the first output pixel is the first input pixel.
    assert out[0, 0, 0, 0] == x[0, 0, 0, 0]
    assert not torch.allclose(out, torch.nn.functional.interpolate(x, (40, 23), mode="bilinear"), atol=1e-3)


def test_crop_and_resize_of_the_whole_box_aligns_corners():
    x = _images(n=2, side=19, seed=4)
    whole = torch.tensor([[0.0, 0.0, 1.0, 1.0]] * 2)
    assert torch.equal(crop_and_resize(x, whole, (19, 19)), x)  # sample i at source i exactly
    corners = torch.nn.functional.interpolate(x, (31, 26), mode="bilinear", align_corners=True)
    assert torch.allclose(crop_and_resize(x, whole, (31, 26)), corners, atol=1e-6)


def test_crop_and_resize_takes_each_images_own_box_and_zeroes_outside():
    x = _images(n=2, side=11, seed=5)
    boxes = torch.tensor([[0.0, 0.5, 0.5, 1.0], [0.2, 0.1, 0.7, 0.6]])
    out = crop_and_resize(x, boxes, (6, 6))
    for n in range(2):
        y1, x1, y2, x2 = boxes[n].double().tolist()
        rows = y1 * 10 + torch.arange(6, dtype=torch.float64) * (y2 - y1) * 10 / 5
        cols = x1 * 10 + torch.arange(6, dtype=torch.float64) * (x2 - x1) * 10 / 5
        assert torch.allclose(out[n, 0].double(), _bilinear_float64(x[n, 0], rows, cols), atol=1e-6)
    beyond = crop_and_resize(x, torch.tensor([[0.0, 0.0, 2.0, 1.0]] * 2), (5, 5))
    assert bool((beyond[:, :, 3:] == 0).all()) and bool((beyond[:, :, :3] != 0).any())


def test_tf_resamplers_pass_gradients_to_the_pixels_they_read():
    x = _images(n=1, side=12, seed=6).requires_grad_(True)
    resize_bilinear_tf1(crop_and_resize(x, torch.tensor([[0.0, 0.0, 1.0, 1.0]]), (7, 7)), (12, 12)).sum().backward()
    assert x.grad is not None and abs(float(x.grad.sum()) - 144.0) < 1e-3  # weights of each output sum to 1


def test_authors_crop_is_a_90_pixel_crop_resized_to_the_side():
    # A horizontal ramp (pixel j = j / 298): the crop spans 90/299 of it in 90 samples, which
    # TF1's resize stretches by 299/90, the first output pixel on the first crop pixel.
    ramp = torch.linspace(0, 1, 299).view(1, 1, 1, 299).expand(2, 1, 299, 299).contiguous()
    row = CropRescale(geometry="authors")(ramp, seed=2)[0, 0, 150].double()
    steps = row[1:] - row[:-1]
    assert abs(float(row[-1] - row[0]) - 90 / 299) < 1e-5
    assert torch.allclose(steps[:-3], torch.full_like(steps[:-3], (90 / 299) / 89 * (90 / 299)), atol=1e-5)
    assert bool((steps[-2:] == 0).all())  # output columns 296..298 sample past crop pixel 89: clamped
    direct = CropRescale()(ramp, seed=2)[0, 0, 150].double()
    assert torch.allclose(direct[1:] - direct[:-1], torch.full_like(steps, (90 / 299) / 298), atol=1e-5)


def test_crop_rescale_functional_form_is_the_module_with_its_draws():
    x = _images(n=3, side=299, channels=3, seed=7)
    for geometry in ("direct", "authors"):
        module = CropRescale(geometry=geometry)
        draws = torch.rand((3, 2), generator=torch.Generator().manual_seed(9))
        scale = (1.0 - 90 / 299) if geometry == "direct" else torch.tensor([209.0, 209.0]) / 299.0
        assert torch.equal(module(x, seed=9), crop_rescale(x, draws * scale, geometry=geometry))
    assert not torch.equal(CropRescale(geometry="authors")(x, seed=9), CropRescale()(x, seed=9))


def _placements(transform, draws, side=28):
    """(top, bottom, left, right) padding of each draw, read off a black image on grey."""
    found = []
    for seed in range(draws):
        out = transform(torch.zeros(4, 1, side, side), seed=seed)[:, 0]
        for image in out:
            rows = (image == 0).any(1).nonzero().flatten()
            cols = (image == 0).any(0).nonzero().flatten()
            found.append((int(rows[0]), image.shape[0] - 1 - int(rows[-1]), int(cols[0]),
                          image.shape[1] - 1 - int(cols[-1])))
    return torch.tensor(found)


def test_authors_offsets_never_touch_the_bottom_or_right_edge():
    authors = _placements(RandomResizePad(resize_back=False, geometry="authors"), 60)
    centred = _placements(RandomResizePad(resize_back=False), 60)
    assert int(authors[:, [1, 3]].min()) >= 1  # tf.random_uniform's range excludes 331 - r
    assert int(authors[:, [0, 2]].min()) == 0  # the top/left flush placement is drawn
    assert int(centred[:, [1, 3]].min()) == 0  # every placement, flush bottom/right included


def test_resize_and_pad_is_the_module_with_its_draws():
    x = _images(n=4, seed=8)
    for geometry in GEOMETRIES:
        generator = torch.Generator().manual_seed(3)
        sizes = torch.randint(28, 31, (4,), generator=generator)
        placements = 31 - sizes + (0 if geometry == "authors" else 1)
        offsets = (torch.rand((4, 2), generator=generator) * placements[:, None]).long()
        expected = RandomResizePad(geometry=geometry)(x, seed=3)
        assert torch.equal(resize_and_pad(x, sizes, offsets, padded=31, geometry=geometry), expected)


def test_authors_resize_to_r_aligns_corners():
    x = _images(n=1, side=28, seed=9)
    out = resize_and_pad(x, torch.tensor([30]), torch.tensor([[0, 1]]), padded=31, resize_back=False,
                         geometry="authors")
    assert out[0, 0, 0, 1] == x[0, 0, 0, 0] and out[0, 0, 29, 30] == x[0, 0, 27, 27]
    assert bool((out[0, 0, 30] == 0.5).all()) and bool((out[0, 0, :, 0] == 0.5).all())


@pytest.mark.parametrize("call, error, match", [
    (lambda x: resize_and_pad(x, torch.tensor([30, 30]), torch.tensor([[0, 0]] * 2), padded=31), ValueError, "sizes"),
    (lambda x: resize_and_pad(x, torch.tensor([30.0]), torch.tensor([[0, 0]]), padded=31), ValueError, "sizes"),
    (lambda x: resize_and_pad(x, torch.tensor([32]), torch.tensor([[0, 0]]), padded=31), ValueError, "sizes"),
    (lambda x: resize_and_pad(x, torch.tensor([30]), torch.tensor([[0, 2]]), padded=31), ValueError, "offsets"),
    (lambda x: resize_and_pad(x, torch.tensor([30]), torch.tensor([[-1, 0]]), padded=31), ValueError, "offsets"),
    (lambda x: resize_and_pad(x, torch.tensor([30]), torch.tensor([[0, 0]]), padded=31, geometry="tf"), ValueError,
     "geometry"),
    (lambda x: crop_rescale(x, torch.tensor([[0.0, 0.9]]), 0.5), ValueError, "starts"),
    (lambda x: crop_rescale(x, torch.tensor([[0, 0]]), 0.5), ValueError, "starts"),
    (lambda x: crop_rescale(x, torch.tensor([[0.1, 0.1]]), 0.5, geometry="tf"), ValueError, "geometry"),
    (lambda x: CropRescale(geometry="tf"), ValueError, "geometry"),
    (lambda x: RandomResizePad(geometry="tf"), ValueError, "geometry"),
    (lambda x: crop_and_resize(x, torch.tensor([[0.0, 0.0, 1.0]]), (4, 4)), ValueError, "boxes"),
    (lambda x: crop_and_resize(x, torch.tensor([[0.0, 0.0, 1.0, float("nan")]]), (4, 4)), ValueError, "boxes"),
    (lambda x: crop_and_resize(x.double(), torch.tensor([[0.0, 0.0, 1.0, 1.0]]), (4, 4)), TypeError, "x"),
    (lambda x: resize_bilinear_tf1(x, (0, 4)), ValueError, "size"),
    (lambda x: resize_bilinear_tf1(x, 4), ValueError, "size"),
])
def test_authors_geometry_rejects_bad_input(call, error, match):
    with pytest.raises(error, match=match):
        call(_images(n=1))
