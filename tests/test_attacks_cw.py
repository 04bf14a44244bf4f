"""Carlini-Wagner l2: near-minimal distortion against a linear model (analytic |margin| / ||w||_2),
targeted success, kappa, failures returned as the original image, bad input named."""

import pytest
import torch
from attack_models import (
    LinearClassifier,
    away_from_walls,
    margin_of,
    trained_digits_mlp,
    two_class_linear,
)

from obfgrad.attacks import PGD, CarliniWagnerL2
from obfgrad.attacks.losses import margin
from obfgrad.distances import L2

SHAPE = (1, 4, 4)


def _linear_problem(n=8):
    model = two_class_linear(SHAPE, seed=0)
    x = away_from_walls(n, SHAPE, seed=2)
    y = model(x).argmax(1)
    w = (model.weight[0] - model.weight[1]).double()
    signed_margin = margin_of(model, x, y).double()
    minimal = signed_margin.abs() / w.norm()  # distance to the decision plane
    # The closest point of the plane, for checking that the box does not bind.
    margin_gradient = torch.where(y == 0, 1.0, -1.0).double()[:, None] * w  # d margin_y / dx
    closest = x.double().flatten(1) - (signed_margin / w.norm() ** 2)[:, None] * margin_gradient
    return model, x, y, minimal, closest


def test_cw_reaches_the_analytic_minimal_distance_on_a_linear_model():
    model, x, y, minimal, closest = _linear_problem()
    assert float(closest.min()) > 0.01 and float(closest.max()) < 0.99  # the box does not bind
    assert torch.allclose(margin_of(model, closest.float().view_as(x), y).double(), torch.zeros(8, dtype=torch.float64),
                          atol=1e-4)
    result = CarliniWagnerL2(steps=100, lr=0.05, binary_search_steps=10, initial_const=1.0)(model, x, y)
    assert bool(result.success.all())
    assert torch.equal(model(result.x_adv).argmax(1) != y, torch.ones_like(y, dtype=torch.bool))
    found = result.distance.double()
    assert bool((found >= minimal * (1 - 1e-4)).all())          # cannot beat the plane
    assert torch.allclose(found, minimal, rtol=0.01)           # and gets within 1% of it


def test_cw_finds_smaller_distortion_than_pgd_l2_at_the_same_success():
    model, x, y, _, _ = _linear_problem()
    cw = CarliniWagnerL2(steps=100, lr=0.05, binary_search_steps=6, initial_const=1.0)(model, x, y)
    eps = float(cw.distance.max()) * 1.5
    pgd = PGD("l2", eps=eps, steps=50, step_size=eps / 10, early_stop=False, loss="margin", kappa=None)(model, x, y)
    assert bool(cw.success.all()) and bool(pgd.success.all())
    assert float(cw.distance.mean()) < float(pgd.distance.mean())


def test_cw_beats_pgd_l2_distortion_on_a_trained_model():
    model, x_test, y_test = trained_digits_mlp()
    x, y = x_test[:32], y_test[:32]
    correct = model(x).argmax(1) == y
    x, y = x[correct], y[correct]
    cw = CarliniWagnerL2(steps=100, lr=0.05, binary_search_steps=6, initial_const=1.0)(model, x, y)
    eps = float(cw.distance.max()) * 1.2
    pgd = PGD("l2", eps=eps, steps=50, step_size=eps / 10)(model, x, y)  # early stop at first success
    assert bool(cw.success.all()) and bool(pgd.success.all())  # same success ...
    assert float(cw.distance.mean()) < float(pgd.distance.mean())  # ... with less distortion
    assert float((cw.distance < pgd.distance).float().mean()) >= 0.75
    assert torch.equal(model(cw.x_adv).argmax(1) != y, torch.ones_like(y, dtype=torch.bool))


def test_cw_targeted_reaches_target_and_kappa_margin():
    torch.manual_seed(0)
    model = LinearClassifier(0.1 * torch.randn(4, 16) + 5 * torch.eye(4, 16), torch.zeros(4))
    x = away_from_walls(6, SHAPE, seed=3)
    y = model(x).argmax(1)
    target = (y + 1) % 4
    kappa = 0.5
    attack = CarliniWagnerL2(steps=200, lr=0.05, binary_search_steps=6, initial_const=1.0, kappa=kappa, targeted=True)
    result = attack(model, x, y, target=target)
    assert bool(result.success.all())
    logits = model(result.x_adv)
    assert torch.equal(logits.argmax(1), target)
    assert bool((margin(logits, target) > kappa).all())


def test_cw_untargeted_kappa_margin():
    model, x, y, _, _ = _linear_problem(n=4)
    result = CarliniWagnerL2(steps=200, lr=0.05, binary_search_steps=6, initial_const=1.0, kappa=1.0)(model, x, y)
    assert bool(result.success.all())
    assert bool((margin(model(result.x_adv), y) < -1.0).all())


def test_cw_failure_returns_the_original_image():
    class Constant(torch.nn.Module):  # always predicts class 0, whatever the input
        def forward(self, x):
            return torch.stack([x.flatten(1).sum(1) * 0 + 1.0, x.flatten(1).sum(1) * 0], dim=1)

    x = away_from_walls(3, SHAPE)
    y = torch.zeros(3, dtype=torch.long)
    result = CarliniWagnerL2(steps=10, binary_search_steps=2)(Constant(), x, y)
    assert result.success.tolist() == [False] * 3
    assert torch.equal(result.x_adv, x)
    assert result.distance.tolist() == [0.0] * 3


def test_cw_reports_the_requested_l2_normalisation():
    model, x, y, _, _ = _linear_problem(n=4)
    result = CarliniWagnerL2(steps=100, lr=0.05, binary_search_steps=4, initial_const=1.0,
                             distance="l2_rms_pixels")(model, x, y)
    assert torch.allclose(result.distance, L2("rms_pixels")(x, result.x_adv))


def test_cw_inputs_untouched_and_outputs_detached():
    model, x, y, _, _ = _linear_problem(n=3)
    x0, y0 = x.clone(), y.clone()
    result = CarliniWagnerL2(steps=5, binary_search_steps=2)(model, x, y)
    assert torch.equal(x, x0) and torch.equal(y, y0)
    assert not result.x_adv.requires_grad and result.x_adv.grad_fn is None
    assert result.x_adv.min() >= 0 and result.x_adv.max() <= 1


@pytest.mark.parametrize("make, argument", [
    (lambda: CarliniWagnerL2(steps=-1), "steps"),
    (lambda: CarliniWagnerL2(lr=0), "lr"),
    (lambda: CarliniWagnerL2(binary_search_steps=0), "binary_search_steps"),
    (lambda: CarliniWagnerL2(initial_const=-1.0), "initial_const"),
    (lambda: CarliniWagnerL2(kappa=-0.1), "kappa"),
    (lambda: CarliniWagnerL2(distance="linf"), "distance"),
])
def test_bad_configuration_names_the_argument(make, argument):
    with pytest.raises((TypeError, ValueError), match=argument):
        make()


def test_bad_call_names_the_argument():
    model, x, y, _, _ = _linear_problem(n=2)
    with pytest.raises(ValueError, match="y"):
        CarliniWagnerL2(steps=1, binary_search_steps=1)(model, x, torch.tensor([0, 5]))
    with pytest.raises(ValueError, match="target"):
        CarliniWagnerL2(steps=1, binary_search_steps=1, targeted=True)(model, x, y)


def test_cw_runs_on_the_device_of_x(device):
    model, x, y, _, _ = _linear_problem(n=3)
    result = CarliniWagnerL2(steps=20, binary_search_steps=2)(model.to(device), x.to(device), y.to(device))
    assert result.x_adv.device.type == device.type and result.success.device.type == device.type
