"""Stochastic activation pruning: keep probabilities, unbiased rescaling, layer placement."""

import math

import torch
from torch import nn

from obfgrad.defenses.sap import SAP, keep_probability, sap_prune
from obfgrad.models import SmallCNN, WideResNet


def test_keep_probability_is_one_minus_exp_of_minus_twice_n_times_p():
    h = torch.tensor([[[[1.0, -2.0], [0.0, 5.0]]]])
    p = h.abs().flatten() / 8.0
    expected = 1 - torch.exp(-2 * 4 * p)
    assert torch.allclose(keep_probability(h).flatten(), expected, atol=1e-7)


def test_statistics_are_per_example():
    h = torch.tensor([[1.0, 1.0], [100.0, 100.0]])
    q = keep_probability(h)
    assert torch.allclose(q[0], q[1])  # scaling one example changes nothing
    assert torch.allclose(q[0], torch.full((2,), 1 - math.exp(-2.0)))


def test_mean_of_many_draws_is_the_input_activation():
    generator = torch.Generator().manual_seed(0)
    h = torch.randn(1, 3, 4, 4, generator=generator)
    h[0, 0, 0, 0] = 0.0
    draws = torch.stack([sap_prune(h, generator=generator) for _ in range(20000)])
    q = keep_probability(h)
    # Standard error of the mean per entry: |h| sqrt((1 - q) / q) / sqrt(draws).
    tolerance = 5 * h.abs() * torch.sqrt((1 - q) / q.clamp_min(1e-6)) / math.sqrt(draws.shape[0]) + 1e-6
    assert bool(((draws.mean(0) - h).abs() <= tolerance).all())
    assert bool((draws[:, 0, 0, 0, 0] == 0).all())


def test_survivors_are_rescaled_by_one_over_q_and_the_rest_are_zero():
    generator = torch.Generator().manual_seed(1)
    h = torch.randn(2, 50, generator=generator)
    out = sap_prune(h, generator=generator)
    q = keep_probability(h)
    kept = out != 0
    assert torch.allclose(out[kept], (h / (q + 1e-8))[kept])
    assert 0 < int(kept.sum()) < h.numel()


def test_gradient_is_finite_for_tiny_activations():
    h = torch.tensor([[1e-30, 1.0, 2.0, 3.0]], requires_grad=True)
    for seed in range(20):
        out = sap_prune(h, generator=torch.Generator().manual_seed(seed))
        (grad,) = torch.autograd.grad(out.sum(), h)
        assert torch.isfinite(grad).all()


def test_sap_prunes_every_conv_of_the_wide_resnet_and_leaves_the_original_alone():
    net = WideResNet(widths=(8, 16, 32), units_per_stage=5)
    sap = SAP(net)
    assert sap.num_pruned_layers == 31  # stem + 2 per unit x 15 (protocol.md row 4)
    assert not any(type(m).__name__ == "_Pruned" for m in net.modules())
    assert all(a is b for a, b in zip(sap.parameters(), net.parameters()))


def test_sap_is_random_in_eval_mode_and_identity_when_disabled():
    torch.manual_seed(0)
    net = SmallCNN(width=4).eval()
    sap = SAP(net).eval()
    x = torch.rand(3, 1, 28, 28)
    assert not torch.equal(sap(x), sap(x))
    sap.enabled = False
    assert torch.equal(sap(x), net(x))


def test_sap_generator_makes_draws_reproducible():
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(2 * 9, 3))
    sap = SAP(net)
    x = torch.rand(2, 1, 5, 5)
    sap.generator = torch.Generator().manual_seed(3)
    first = sap(x)
    sap.generator = torch.Generator().manual_seed(3)
    assert torch.equal(first, sap(x))
