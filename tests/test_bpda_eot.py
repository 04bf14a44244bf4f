"""BPDA: forward is the true transform, gradient is the approximation's vjp. EOT: the attack
gradient is the mean of per-draw gradients (computed here by hand, draw by draw), prediction is
the mean of logits or the log of the mean softmax; the wrappers compose."""

import pytest
import torch
from attack_models import small_cnn
from torch import nn

from obfgrad.attacks import BPDA, EOT, PGD, CarliniWagnerL2, PenalizedGradientDescent
from obfgrad.attacks.losses import cross_entropy, loss_and_grad, make_objective


def quantize(x: torch.Tensor) -> torch.Tensor:
    """Bit-depth reduction to 8 levels: piecewise constant, zero gradient almost everywhere."""
    return torch.round(x * 7) / 7


def soft_quantize(x: torch.Tensor) -> torch.Tensor:
    """A smooth stand-in for ``quantize`` (any differentiable function of the same shape)."""
    return x + torch.sin(2 * torch.pi * 7 * x) / (2 * torch.pi * 7)


def _classifier():
    return small_cnn(num_classes=10, seed=0).double()


def _batch(n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 28, 28, generator=g, dtype=torch.float64), torch.randint(0, 10, (n,), generator=g)


def _grad_of_ce(fn, z, y):
    z = z.detach().clone().requires_grad_(True)
    cross_entropy(fn(z), y).sum().backward()
    return z.grad


def test_bpda_forward_is_the_true_transform():
    x, _ = _batch()
    assert torch.equal(BPDA(quantize)(x), quantize(x))


def test_bpda_identity_gradient_is_downstream_gradient_at_the_transformed_input():
    clf = _classifier()
    x, y = _batch()
    model = nn.Sequential(BPDA(quantize), clf)
    _, grad, _ = loss_and_grad(model, x, make_objective("ce", y))
    expected = _grad_of_ce(clf, quantize(x), y)  # grad of L at g(x), applied to x
    assert torch.allclose(grad, expected, atol=1e-12)
    assert grad.abs().sum() > 0  # whereas the true transform's gradient is zero


def test_bpda_custom_approximation_gradient_is_its_vjp():
    clf = _classifier()
    x, y = _batch()
    model = nn.Sequential(BPDA(quantize, soft_quantize), clf)
    _, grad, _ = loss_and_grad(model, x, make_objective("ce", y))
    upstream = _grad_of_ce(clf, quantize(x), y)  # dL/dg at the true forward output
    _, vjp = torch.autograd.functional.vjp(soft_quantize, x, upstream)
    assert torch.allclose(grad, vjp, atol=1e-12)
    assert not torch.allclose(grad, upstream)  # the approximation's Jacobian is not the identity


def test_bpda_with_non_differentiable_forward_and_shape_change():
    # forward returns a different shape (an encoding); the approximation must match it
    encode = lambda x: (x.repeat(1, 3, 1, 1) > 0.5).double()  # noqa: E731
    relax = lambda x: torch.sigmoid(10 * (x.repeat(1, 3, 1, 1) - 0.5))  # noqa: E731
    x, _ = _batch(2)
    x = x.requires_grad_(True)
    out = BPDA(encode, relax)(x)
    assert out.shape == (2, 3, 28, 28)
    out.sum().backward()
    x2 = x.detach().requires_grad_(True)
    relax(x2).sum().backward()
    assert torch.allclose(x.grad, x2.grad)


def test_bpda_bad_arguments_are_named():
    x, _ = _batch(1)
    with pytest.raises(ValueError, match="forward_fn"):
        BPDA(lambda v: v.repeat(1, 3, 1, 1))(x)
    with pytest.raises(TypeError, match="forward_fn"):
        BPDA(3)
    with pytest.raises(TypeError, match="approx_fn"):
        BPDA(quantize, approx_fn="identity")


class RandomScale(nn.Module):
    """A toy randomized defense: each example is scaled by r ~ U(0.5, 1.5) before the classifier."""

    def __init__(self, clf):
        super().__init__()
        self.clf = clf

    def forward(self, x):
        r = 0.5 + torch.rand(x.shape[0], 1, 1, 1, dtype=x.dtype)
        return self.clf(x * r)


def test_eot_gradient_is_the_mean_of_per_draw_gradients():
    clf = _classifier()
    x, y = _batch(3)
    samples = 5
    torch.manual_seed(123)
    value, grad, _ = loss_and_grad(EOT(RandomScale(clf), samples=samples), x, make_objective("ce", y))

    # By hand: the same draws (one batched call of S*N rows, draw-major), one draw at a time.
    torch.manual_seed(123)
    scales = (0.5 + torch.rand(samples * 3, 1, 1, 1, dtype=x.dtype)).view(samples, 3, 1, 1, 1)
    per_draw_grads, per_draw_losses = [], []
    for s in range(samples):
        z = x.clone().requires_grad_(True)
        loss = cross_entropy(clf(z * scales[s]), y)
        loss.sum().backward()
        per_draw_grads.append(z.grad)
        per_draw_losses.append(loss.detach())
    assert torch.allclose(grad, torch.stack(per_draw_grads).mean(0), atol=1e-12)
    assert torch.allclose(value, torch.stack(per_draw_losses).mean(0), atol=1e-12)

    # ... which is not the gradient of the loss at the averaged logits.
    z = x.clone().requires_grad_(True)
    mean_logits = torch.stack([clf(z * scales[s]) for s in range(samples)]).mean(0)
    cross_entropy(mean_logits, y).sum().backward()
    assert not torch.allclose(grad, z.grad, atol=1e-6)


def test_eot_with_one_draw_per_pass_calls_the_model_once_per_draw():
    class SharedScale(nn.Module):  # one random r per call, shared by the whole batch
        def __init__(self, clf):
            super().__init__()
            self.clf, self.calls = clf, 0

        def forward(self, x):
            self.calls += 1
            return self.clf(x * (0.5 + torch.rand((), dtype=x.dtype)))

    clf = _classifier()
    x, y = _batch(2)
    defense = SharedScale(clf)
    torch.manual_seed(5)
    _, grad, _ = loss_and_grad(EOT(defense, samples=4, draws_per_pass=1), x, make_objective("ce", y))
    assert defense.calls == 4
    torch.manual_seed(5)
    scales = [0.5 + torch.rand((), dtype=x.dtype) for _ in range(4)]
    expected = torch.stack([_grad_of_ce(lambda v, r=r: clf(v * r), x, y) for r in scales]).mean(0)
    assert torch.allclose(grad, expected, atol=1e-12)


def test_eot_in_passes_of_k_draws_matches_per_draw_gradients():
    clf = _classifier()
    x, y = _batch(3)
    calls = []

    class CountingScale(RandomScale):
        def forward(self, v):
            calls.append(v.shape[0])
            return super().forward(v)

    torch.manual_seed(21)
    value, grad, logits = loss_and_grad(EOT(CountingScale(clf), samples=5, draws_per_pass=2), x,
                                        make_objective("ce", y))
    assert calls == [6, 6, 3]  # passes of 2, 2 and 1 draws over 3 examples
    torch.manual_seed(21)
    scales = torch.cat([0.5 + torch.rand(k * 3, 1, 1, 1, dtype=x.dtype) for k in (2, 2, 1)]).view(5, 3, 1, 1, 1)
    per_draw = [_grad_of_ce(lambda v, s=s: clf(v * scales[s]), x, y) for s in range(5)]
    assert torch.allclose(grad, torch.stack(per_draw).mean(0), atol=1e-12)
    draws = torch.stack([clf(x * scales[s]) for s in range(5)])
    assert torch.allclose(logits, draws.mean(0), atol=1e-12)
    assert torch.allclose(value, torch.stack([cross_entropy(d, y) for d in draws]).mean(0), atol=1e-12)


def test_eot_expected_loss_graph_and_pass_by_pass_gradient_agree():
    clf = _classifier()
    x, y = _batch(2)
    objective = make_objective("margin", y, kappa=None)
    eot = EOT(RandomScale(clf), samples=4, draws_per_pass=3)
    torch.manual_seed(8)
    _, grad, _ = loss_and_grad(eot, x, objective)
    torch.manual_seed(8)
    z = x.clone().requires_grad_(True)
    value, _ = eot.expected_loss(z, objective)
    value.sum().backward()
    assert torch.allclose(grad, z.grad, atol=1e-12)


def test_cw_through_eot_uses_the_eot_gradient():
    from obfgrad.attacks import CarliniWagnerL2

    clf = small_cnn(num_classes=10, seed=2)
    x = torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(4))
    model = EOT(RandomScale(clf), samples=4)
    with torch.no_grad():
        y = EOT(RandomScale(clf), samples=64)(x).argmax(1)
    result = CarliniWagnerL2(steps=30, lr=0.05, binary_search_steps=3, initial_const=1.0)(model, x, y)
    assert bool(result.success.any())
    assert bool((result.distance[result.success] > 0).all())


def test_eot_prediction_reductions():
    clf = _classifier()
    x, _ = _batch(3)
    torch.manual_seed(9)
    mean_logits = EOT(RandomScale(clf), samples=6, reduction="logits")(x)
    torch.manual_seed(9)
    log_mean_probs = EOT(RandomScale(clf), samples=6, reduction="probs")(x)
    torch.manual_seed(9)
    draws = RandomScale(clf)(x.repeat(6, 1, 1, 1)).view(6, 3, 10)
    assert torch.allclose(mean_logits, draws.mean(0), atol=1e-12)
    assert torch.allclose(log_mean_probs, torch.softmax(draws, -1).mean(0).log(), atol=1e-12)


def test_eot_around_bpda_pipeline_averages_identity_gradients():
    clf = _classifier()
    x, y = _batch(2)

    def noisy_quantize(v):  # random dithering before quantization: non-differentiable and random
        return quantize((v + 0.05 * torch.randn(v.shape, dtype=v.dtype)).clamp(0, 1))

    torch.manual_seed(77)
    _, grad, _ = loss_and_grad(EOT(nn.Sequential(BPDA(noisy_quantize), clf), samples=3), x,
                               make_objective("ce", y))
    torch.manual_seed(77)
    transformed = noisy_quantize(x.repeat(3, 1, 1, 1)).view(3, 2, 1, 28, 28)
    expected = torch.stack([_grad_of_ce(clf, transformed[s], y) for s in range(3)]).mean(0)
    assert torch.allclose(grad, expected, atol=1e-12)


def test_nested_eot_equals_flat_eot_with_all_draws():
    clf = _classifier()
    x, y = _batch(2)
    objective = make_objective("margin", y, kappa=None)
    torch.manual_seed(3)
    nested = loss_and_grad(EOT(EOT(RandomScale(clf), samples=2), samples=3), x, objective)
    torch.manual_seed(3)
    flat = loss_and_grad(EOT(RandomScale(clf), samples=6), x, objective)
    for a, b in zip(nested, flat):
        assert torch.allclose(a, b, atol=1e-12)


def test_pgd_through_eot_breaks_a_randomized_model():
    torch.manual_seed(0)
    clf = small_cnn(num_classes=10, seed=1)
    x = torch.rand(16, 1, 28, 28)
    model = RandomScale(clf)
    with torch.no_grad():
        y = EOT(model, samples=32)(x).argmax(1)
    x0 = x.clone()
    result = PGD("linf", 0.1, steps=10, step_size=0.02)(EOT(model, samples=8), x, y)
    assert torch.equal(x, x0)
    with torch.no_grad():
        adv_pred = EOT(model, samples=32)(result.x_adv).argmax(1)
    assert float((adv_pred != y).float().mean()) >= 0.75


class _Shift(nn.Module):
    def forward(self, x):
        return x - 0.5


def _nested_eot_models(clf):
    """Pipelines where EOT is a layer, not the outermost model: attacks would differentiate
    averaged logits."""
    inner = EOT(RandomScale(clf), samples=2)
    return [nn.Sequential(_Shift(), inner), EOT(nn.Sequential(_Shift(), inner), samples=2)]


@pytest.mark.parametrize("attack", [
    PGD("linf", 0.1, steps=1, step_size=0.02),
    PenalizedGradientDescent("l2", 0.5, steps=1, step_size=0.1),
    CarliniWagnerL2(steps=1, binary_search_steps=1),
], ids=["pgd", "penalized", "cw"])
def test_attacks_reject_an_eot_nested_inside_another_module(attack):
    clf = _classifier()
    x, y = _batch(2)
    for model in _nested_eot_models(clf):
        with pytest.raises(ValueError, match=r"model: EOT is nested inside Sequential .*EOT\(nn.Sequential"):
            attack(model, x, y)


def test_eot_outermost_and_chains_of_eot_are_accepted():
    clf = _classifier()
    x, y = _batch(2)
    attack = PGD("linf", 0.1, steps=1, step_size=0.02)
    for model in (EOT(nn.Sequential(_Shift(), RandomScale(clf)), samples=2),
                  EOT(EOT(RandomScale(clf), samples=2), samples=2)):
        assert attack(model, x, y).x_adv.shape == x.shape


def test_eot_bad_arguments_are_named():
    with pytest.raises(ValueError, match="samples"):
        EOT(nn.Identity(), samples=0)
    with pytest.raises(ValueError, match="draws_per_pass"):
        EOT(nn.Identity(), draws_per_pass=0)
    with pytest.raises(ValueError, match="reduction"):
        EOT(nn.Identity(), reduction="mean")
    with pytest.raises(TypeError, match="model"):
        EOT(42)
    with pytest.raises(ValueError, match="model"):
        EOT(lambda v: v.flatten(1)[:1], samples=2)(torch.zeros(3, 1, 2, 2))


def test_bpda_eot_pipeline_runs_on_the_device_of_x(device):
    clf = _classifier().to(device)
    x, y = _batch(2)
    x, y = x.to(device), y.to(device)
    model = EOT(nn.Sequential(BPDA(quantize), clf), samples=3)
    _, grad, logits = loss_and_grad(model, x, make_objective("ce", y))
    assert grad.device == x.device and logits.shape == (2, 10)
