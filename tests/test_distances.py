"""Distances: values of the paper's normalisations, projections into ball and box, random
starts, and robustml's threat-model check."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from obfgrad.distances import L2, Distance, LInf, get_distance

ALL_DISTANCES = [LInf(), L2("none"), L2("rms_pixels"), L2("per_value")]


def test_get_distance_by_name_and_object():
    assert isinstance(get_distance("linf"), LInf)
    assert get_distance("l2") == L2("none")
    assert get_distance("l2_rms_pixels") == L2("rms_pixels")
    assert get_distance("l2_per_value") == L2("per_value")
    d = L2("rms_pixels")
    assert get_distance(d) is d
    assert [d.name for d in ALL_DISTANCES] == ["linf", "l2", "l2_rms_pixels", "l2_per_value"]


def test_linf_is_max_abs_difference_per_example():
    x = torch.zeros(2, 3, 4, 4)
    x_adv = x.clone()
    x_adv[0, 1, 2, 3] = 0.25
    x_adv[1, 0, 0, 0] = 0.5
    x_adv[1, 2, 1, 1] = 0.125
    assert torch.equal(LInf()(x, x_adv), torch.tensor([0.25, 0.5]))


def test_plain_l2_is_euclidean_norm():
    x = torch.zeros(1, 1, 2, 2)
    x_adv = torch.tensor([[[[0.3, 0.4], [0.0, 0.0]]]])
    assert L2()(x, x_adv).item() == pytest.approx(0.5, abs=1e-7)


def test_rms_pixels_matches_guo_bound_at_299():
    # protocol.md row 3: robustml bound ||delta||_2 <= 0.05 * 299 on 3x299x299 <=> rms_pixels <= 0.05
    x = torch.zeros(1, 3, 299, 299)
    x_adv = x.clone()
    x_adv.view(-1)[:4] = 0.05 * 299 / 2  # ||delta||_2 = 0.05 * 299
    assert L2("rms_pixels")(x, x_adv).item() == pytest.approx(0.05, rel=1e-6)
    assert L2("rms_pixels").scale(x.shape) == pytest.approx(1 / 299)


def test_per_value_matches_defense_gan_bound_on_mnist():
    # protocol.md row 7: 0.005 per-value l2 on 1x28x28 is ||delta||_2 <= 0.005 * 784 = 3.92
    x = torch.zeros(1, 1, 28, 28)
    x_adv = x.clone()
    x_adv.view(-1)[:16] = 3.92 / 4  # ||delta||_2 = sqrt(16) * 0.98 = 3.92
    assert L2("per_value")(x, x_adv).item() == pytest.approx(0.005, rel=1e-6)


@pytest.mark.parametrize("distance", ALL_DISTANCES, ids=lambda d: d.name)
def test_unit_direction_has_distance_one(distance: Distance):
    g = torch.randn(4, 3, 5, 5)
    direction = distance.unit_direction(g)
    expected = torch.ones(4)
    if isinstance(distance, LInf):
        assert torch.equal(direction, g.sign())
    assert torch.allclose(distance.norm(direction), expected, atol=1e-5)


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    distance_index=st.integers(0, len(ALL_DISTANCES) - 1),
    eps=st.floats(1e-3, 2.0),
    spread=st.floats(0.0, 5.0),
)
def test_project_lands_in_ball_and_box(seed, distance_index, eps, spread):
    distance = ALL_DISTANCES[distance_index]
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(3, 2, 4, 4, generator=g)
    x_far = x + spread * torch.randn(x.shape, generator=g)
    x_proj = distance.project(x, x_far, eps)
    assert x_proj.min() >= 0.0 and x_proj.max() <= 1.0
    assert bool((distance.norm(x_proj - x) <= eps * (1 + 1e-5) + 1e-6).all())
    assert bool(distance.within(x, x_proj, eps).all())


@pytest.mark.parametrize("distance", ALL_DISTANCES, ids=lambda d: d.name)
def test_project_keeps_points_already_inside(distance: Distance):
    x = torch.full((2, 1, 6, 6), 0.5)
    inside = distance.random_point(x, 0.01, torch.Generator().manual_seed(3))
    assert torch.allclose(distance.project(x, inside, 0.01), inside, atol=1e-7)


def test_project_accepts_per_example_eps():
    x = torch.full((2, 1, 2, 2), 0.5)
    x_far = torch.ones(2, 1, 2, 2)
    out = LInf().project(x, x_far, torch.tensor([0.1, 0.2]))
    assert torch.allclose(LInf()(x, out), torch.tensor([0.1, 0.2]))


@pytest.mark.parametrize("distance", ALL_DISTANCES, ids=lambda d: d.name)
def test_random_point_is_in_ball_box_and_seeded(distance: Distance):
    x = torch.rand(64, 1, 5, 5, generator=torch.Generator().manual_seed(0))
    eps = 0.05 if isinstance(distance, (LInf,)) or distance.normalization != "per_value" else 0.005
    a = distance.random_point(x, eps, torch.Generator().manual_seed(7))
    b = distance.random_point(x, eps, torch.Generator().manual_seed(7))
    assert torch.equal(a, b)
    assert a.min() >= 0 and a.max() <= 1
    d = distance.norm(a - x)
    assert bool((d <= eps * (1 + 1e-5)).all())
    assert float(d.max()) > 0.5 * eps  # not collapsed on x


def test_l2_random_point_is_uniform_in_the_ball_radius_law():
    # For the uniform law in a d-ball, P(r <= t * eps) = t^d; with d = 4, median radius 0.5^(1/4).
    x = torch.full((4000, 1, 2, 2), 0.5)
    r = L2().norm(L2().random_point(x, 0.1, torch.Generator().manual_seed(1)) - x) / 0.1
    assert float(r.median()) == pytest.approx(0.5 ** 0.25, abs=0.02)


def test_within_follows_robustml_tolerances():
    linf = LInf()
    x = torch.full((1, 1, 2, 2), 0.5)
    ok = x.clone()
    ok[0, 0, 0, 0] = 0.5 + 0.1 + 5e-5          # eps + 0.5e-4: inside the tolerance
    too_far = x.clone()
    too_far[0, 0, 0, 0] = 0.5 + 0.1 + 2e-4     # eps + 2e-4: outside
    assert linf.within(x, ok, 0.1).tolist() == [True]
    assert linf.within(x, too_far, 0.1).tolist() == [False]

    top = torch.ones(1, 1, 2, 2)
    above_box = top.clone()
    above_box[0, 0, 1, 1] = 1 + 2e-4           # pixel above 1 + 1e-4: outside even inside the ball
    slightly_above = top.clone()
    slightly_above[0, 0, 1, 1] = 1 + 5e-5
    assert linf.within(top, above_box, 0.1).tolist() == [False]
    assert linf.within(top, slightly_above, 0.1).tolist() == [True]
    below = torch.zeros(1, 1, 2, 2)
    below_box = below.clone()
    below_box[0, 0, 0, 1] = -2e-4
    assert linf.within(below, below_box, 0.1).tolist() == [False]


def test_within_applies_robustml_tolerance_to_the_raw_norm():
    # Guo's robustml bound: ||delta||_2 <= 0.05 * 299 + 1e-4, on 3x299x299 images.
    x = torch.full((2, 3, 299, 299), 0.5)
    x_adv = x.clone()
    x_adv[0].view(-1)[:1600] += (0.05 * 299 + 5e-5) / 40  # raw norm bound + 0.5e-4: inside
    x_adv[1].view(-1)[:1600] += (0.05 * 299 + 3e-4) / 40  # raw norm bound + 3e-4: outside
    assert L2("rms_pixels").within(x, x_adv, 0.05).tolist() == [True, False]


def test_within_uses_the_normalised_distance():
    x = torch.zeros(2, 1, 28, 28)
    x_adv = x.clone()
    x_adv[0].view(-1)[:16] = 3.9 / 4    # ||d|| = 3.90 -> 0.004974 <= 0.005
    x_adv[1].view(-1)[:16] = 4.2 / 4    # ||d|| = 4.20 -> 0.005357 >  0.005 + 1e-4
    assert L2("per_value").within(x, x_adv.clamp(0, 1), 0.005).tolist() == [True, False]


def test_distance_is_float_and_per_example():
    x = torch.rand(5, 3, 4, 4, dtype=torch.float64)
    out = L2()(x, x.flip(0))
    assert out.shape == (5,) and out.dtype == torch.float64
    assert LInf()(x.float(), x.float()).dtype == torch.float32


@pytest.mark.parametrize("call, argument", [
    (lambda: get_distance("l3"), "distance"),
    (lambda: get_distance(2), "distance"),
    (lambda: L2("rms"), "normalization"),
    (lambda: LInf()(torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 3)), "x_adv"),
    (lambda: LInf()(torch.zeros(1, 2, 2), torch.zeros(1, 2, 2)), "x"),
    (lambda: LInf().project(torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2), -0.1), "eps"),
    (lambda: LInf().project(torch.zeros(2, 1, 2, 2), torch.zeros(2, 1, 2, 2), torch.ones(3)), "eps"),
    (lambda: LInf().within(torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2), 0.1, tol=-1.0), "tol"),
])
def test_bad_input_names_the_argument(call, argument):
    with pytest.raises((TypeError, ValueError), match=argument):
        call()


def test_rms_scale_formula():
    assert L2("rms_pixels").scale((1, 3, 32, 32)) == pytest.approx(1 / math.sqrt(1024))
    assert L2("per_value").scale((1, 3, 32, 32)) == pytest.approx(1 / 3072)
    assert L2().scale((1, 3, 32, 32)) == 1.0
