"""LS-PGA (Buckman et al. 2018) and the thermometer defense it attacks."""

import torch
from torch import nn

from obfgrad.attacks import LSPGA, PGD
from obfgrad.attacks.lspga import levels_to_image, reachable_levels, soft_code
from obfgrad.defenses import ThermometerDefense
from obfgrad.ops.thermometer_op import thermometer_reference

LEVELS = 16


class _BitCounter(nn.Module):
    """Logits (0, sum of the code's bits): class 1 grows with every pixel's level."""

    def forward(self, code):
        return torch.stack([torch.zeros(code.shape[0]), code.flatten(1).sum(1)], dim=1)


def _bucket(x):
    return torch.floor(x * (torch.tensor(0.99999) * LEVELS)).long()


def test_reachable_levels_span_the_buckets_of_x_minus_and_plus_eps():
    x = torch.tensor([[[[0.0, 0.5, 0.97]]]])
    mask = reachable_levels(x, 0.1, LEVELS)[0, 0, 0]
    for i, value in enumerate((0.0, 0.5, 0.97)):
        low, high = _bucket(torch.tensor(max(value - 0.1, 0.0))), _bucket(torch.tensor(min(value + 0.1, 1.0)))
        expected = torch.zeros(LEVELS)
        expected[int(low):int(high) + 1] = 1
        assert torch.equal(mask[i], expected)


def test_soft_code_is_the_thermometer_code_of_a_one_hot_choice_at_low_temperature():
    x = torch.rand(2, 1, 3, 3)
    mask = torch.ones(2, 1, 3, 3, LEVELS)
    logits = torch.nn.functional.one_hot(_bucket(x), LEVELS).float()
    assert torch.allclose(soft_code(logits, mask, inv_temp=1e4), thermometer_reference(x, LEVELS), atol=1e-6)


def test_one_step_moves_each_reachable_logit_by_the_sign_of_its_level_and_leaves_the_rest():
    x = torch.full((1, 1, 1, 1), 0.5)
    y = torch.tensor([0])
    attack = LSPGA(eps=0.1, steps=1, step_size=0.25, random_start=False)
    u, mask = attack.ascend(_BitCounter(), x, y, LEVELS)
    reachable = mask[0, 0, 0, 0].bool()
    levels = torch.arange(LEVELS, dtype=torch.float32)
    # d CE / d u_j = z_j (j - E_z[j]) * (d CE / d logit_1 > 0): above-average levels go up.
    centre = levels[reachable].mean()
    expected = torch.where(reachable, 0.25 * torch.sign(levels - centre), torch.zeros(LEVELS))
    assert torch.equal(u[0, 0, 0, 0], expected)


def test_lspga_picks_the_highest_reachable_level_and_stays_in_the_ball():
    torch.manual_seed(0)
    x = torch.rand(4, 1, 3, 3)
    eps = 0.1
    model = ThermometerDefense(_BitCounter(), LEVELS)
    attack = LSPGA(eps, steps=8, step_size=2.0, random_start=True, seed=0)
    result = attack(model, x, torch.zeros(4, dtype=torch.long))
    assert bool((result.x_adv - x).abs().max() <= eps + 1e-6)
    assert torch.equal(_bucket(result.x_adv), _bucket((x + eps).clamp(max=1.0)))
    assert bool(result.success.all())


def test_levels_to_image_lands_in_every_reachable_bucket_within_eps():
    torch.manual_seed(1)
    x = torch.rand(1, 2, 8, 8)
    eps = 0.07
    mask = reachable_levels(x, eps, LEVELS)
    for level in range(LEVELS):
        chosen = torch.full(x.shape, level)
        ok = mask[..., level].bool()
        image = levels_to_image(x, chosen, eps, LEVELS)
        assert torch.equal(_bucket(image)[ok], chosen[ok])
        assert bool(((image - x).abs()[ok] <= eps + 1e-6).all())


def test_true_gradient_of_the_defense_is_zero_and_bpda_gradient_is_not():
    torch.manual_seed(2)
    classifier = nn.Sequential(nn.Flatten(), nn.Linear(LEVELS * 16, 3))
    x = torch.rand(2, 1, 4, 4, requires_grad=True)
    for gradient, nonzero in (("true", False), ("bpda", True)):
        defense = ThermometerDefense(classifier, LEVELS, gradient=gradient)
        (grad,) = torch.autograd.grad(defense(x).sum(), x)
        assert bool((grad != 0).any()) is nonzero
    assert torch.equal(ThermometerDefense(classifier, gradient="true")(x), ThermometerDefense(classifier)(x))


def test_plain_gradient_attack_cannot_move_through_the_true_encoding():
    torch.manual_seed(3)
    classifier = nn.Sequential(nn.Flatten(), nn.Linear(LEVELS * 16, 3))
    x = torch.rand(3, 1, 4, 4)
    defense = ThermometerDefense(classifier, gradient="true")
    result = PGD("linf", 0.1, steps=3, step_size=0.05, early_stop=False)(defense, x, torch.tensor([0, 1, 2]))
    assert torch.equal(result.x_adv, x)
