"""purification_reach: the purified values one pixel's attack can reach, checked against brute
force (purify the image with that pixel set to every attacked value), and its argument checks."""

import pytest
import torch

from obfgrad.defenses.pixeldefend import purification_reach, purify
from obfgrad.models.pixelcnn import PixelCNN


def _model(seed: int) -> PixelCNN:
    torch.manual_seed(seed)
    return PixelCNN(in_channels=1, nr_filters=6, nr_resnet=1, nr_stages=1, nr_logistic_mix=3).eval()


def _images(seed: int, n: int = 2, side: int = 5) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 1, side, side), generator=generator).float() / 255


@pytest.mark.parametrize("seed", [0, 1])
def test_reach_is_the_range_of_single_pixel_attacks(seed):
    model, x = _model(seed), _images(seed)
    radius_attack, radius_defend = 3, 5
    low, high, purified = purification_reach(model, x, radius_attack / 255, radius_defend / 255)
    assert torch.equal(purified, purify(model, x, radius_defend / 255))
    levels = (x * 255).round()
    for i in range(x.shape[2]):
        for j in range(x.shape[3]):
            seen = []
            for shift in range(-radius_attack, radius_attack + 1):
                attacked = levels.clone()
                attacked[:, 0, i, j] = (attacked[:, 0, i, j] + shift).clamp(0, 255)
                seen.append(purify(model, attacked / 255, radius_defend / 255)[:, 0, i, j])
            seen = torch.stack(seen, dim=1)
            assert torch.equal(low[:, 0, i, j], seen.min(dim=1).values), (i, j)
            assert torch.equal(high[:, 0, i, j], seen.max(dim=1).values), (i, j)


def test_no_attack_reaches_only_the_purified_image():
    model, x = _model(2), _images(2)
    low, high, purified = purification_reach(model, x, 0.0, 8 / 255)
    assert torch.equal(low, purified) and torch.equal(high, purified)


def test_reach_widens_with_the_attack_and_stays_within_both_radii():
    model, x = _model(3), _images(3, n=3, side=6)
    small = purification_reach(model, x, 2 / 255, 6 / 255)
    large = purification_reach(model, x, 6 / 255, 6 / 255)
    assert (large[0] <= small[0]).all() and (large[1] >= small[1]).all()
    assert (large[1] - large[0]).sum() > (small[1] - small[0]).sum()
    levels = (x * 255).round()
    assert ((large[0] * 255).round() >= levels - 12).all() and ((large[1] * 255).round() <= levels + 12).all()


def test_batches_give_the_same_reach():
    model, x = _model(4), _images(4, n=5)
    whole = purification_reach(model, x, 3 / 255, 5 / 255)
    pieces = purification_reach(model, x, 3 / 255, 5 / 255, batch_size=2)
    assert all(torch.equal(a, b) for a, b in zip(whole, pieces))


@pytest.mark.parametrize("kwargs, match", [
    ({"x": torch.rand(1, 3, 4, 4)}, "x: purification_reach needs single-channel"),
    ({"eps_attack": -0.1}, "eps_attack"),
    ({"eps_defend": float("nan")}, "eps_defend"),
    ({"batch_size": 0}, "batch_size"),
])
def test_bad_arguments_are_named(kwargs, match):
    arguments = {"pixelcnn": _model(5), "x": torch.rand(1, 1, 4, 4), "eps_attack": 2 / 255, "eps_defend": 4 / 255}
    arguments.update(kwargs)
    with pytest.raises(ValueError, match=match):
        purification_reach(**arguments)


def test_reach_control_without_an_attack_is_the_purified_accuracy():
    from torch import nn

    from obfgrad.defenses.pixeldefend import PixelDefend
    from obfgrad.zoo.pixeldefend import reach_control

    torch.manual_seed(6)
    classifier = nn.Sequential(nn.Flatten(), nn.Linear(25, 3)).eval()
    purifier = PixelDefend(_model(6), eps_defend=6 / 255)
    x, y = _images(6, n=6), torch.tensor([0, 1, 2, 0, 1, 2])
    still = reach_control(purifier, classifier, x, y, 0.0, steps=5)
    expected = (classifier(purifier(x)).argmax(1) == y).tolist()
    assert still["classifier_within_reach_correct"] == expected
    assert still["movable_fraction_other"] == 0.0
    moved = reach_control(purifier, classifier, x, y, 4 / 255, steps=5)
    assert moved["movable_fraction_other"] > 0
    assert sum(moved["classifier_within_reach_correct"]) <= sum(expected)


def test_reach_control_pairs_its_verdicts_with_bpdas():
    from torch import nn

    from obfgrad.defenses.pixeldefend import PixelDefend
    from obfgrad.zoo.pixeldefend import reach_control

    torch.manual_seed(7)
    classifier = nn.Sequential(nn.Flatten(), nn.Linear(25, 3)).eval()
    purifier = PixelDefend(_model(7), eps_defend=6 / 255)
    x, y = _images(7, n=6), torch.tensor([0, 1, 2, 0, 1, 2])
    bpda = [True, True, True, False, False, False]
    out = reach_control(purifier, classifier, x, y, 4 / 255, steps=5, bpda_correct=bpda)
    control = out["classifier_within_reach_correct"]
    assert out["broken_only_by_control"] == sum(b and not c for b, c in zip(bpda, control))
    assert out["broken_only_by_bpda"] == sum(c and not b for b, c in zip(bpda, control))
    assert out["bpda_accuracy"] == 0.5
    assert out["classifier_within_reach_accuracy"] == sum(control) / 6
    assert 0 < out["paired_sign_test_p"] <= 1
