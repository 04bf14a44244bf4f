"""Defense-GAN: the projection recovers points on the generator's range; the latent attack's
output lies on the range; WGAN-GP training runs."""

import pytest
import torch

from obfgrad.attacks import LatentAttack
from obfgrad.defenses.defensegan import DefenseGAN, project, start_std, step_learning_rate
from obfgrad.models.wgan import Critic, Generator, train_wgan_gp, wgan_recipe


def _generator(seed=0):
    torch.manual_seed(seed)
    return Generator("mlp", dim=16).eval()


def test_projection_finds_z_for_an_image_on_the_generators_range():
    g = _generator()
    z0 = torch.randn(4, 128, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        x = g(z0)
    z_star, x_rec = project(g, x, steps=200, restarts=10, lr=10.0)
    per_value_rmse = (x_rec - x).flatten(1).pow(2).mean(dim=1).sqrt()
    assert float(per_value_rmse.max()) < 0.02  # pixels within 2% on average
    with torch.no_grad():
        assert torch.allclose(g(z_star), x_rec)
    far = (torch.rand_like(x) - x).flatten(1).pow(2).mean(dim=1).sqrt()
    assert float(far.min()) > 0.1  # the tolerance above is meaningful


def test_more_restarts_never_project_worse():
    g = _generator(1)
    x = torch.rand(3, 1, 28, 28)
    starts = torch.randn(3, 4, 128, generator=torch.Generator().manual_seed(0))
    one = project(g, x, steps=20, restarts=1, z_init=starts[:, :1])[1]
    four = project(g, x, steps=20, restarts=4, z_init=starts)[1]
    error = lambda r: (r - x).flatten(1).pow(2).sum(dim=1)  # noqa: E731
    assert bool((error(four) <= error(one) + 1e-6).all())


def test_defense_gan_draws_fresh_starts_on_every_call_and_replays_a_given_seed():
    g = _generator()
    x = torch.rand(2, 1, 28, 28)
    fresh = DefenseGAN(g, steps=5, restarts=2)
    assert fresh.seed is None
    assert not torch.equal(fresh(x), fresh(x))  # the authors re-initialise z for every batch
    torch.manual_seed(3)
    first = fresh(x)
    torch.manual_seed(3)
    assert torch.equal(fresh(x), first)  # the starts come from torch's global generator
    replay = DefenseGAN(g, steps=5, restarts=2, seed=7)
    assert torch.equal(replay(x), replay(x))


def test_random_starts_are_normal_with_variance_one_over_the_latent_dimension():
    g = _generator()
    x = torch.rand(64, 1, 28, 28)
    z_start, _ = project(g, x, steps=0, restarts=8, seed=0)  # 0 steps: the best of the starts
    assert start_std(128) == pytest.approx(128 ** -0.5)
    starts = start_std(128) * torch.randn(64, 8, 128, generator=torch.Generator().manual_seed(0))
    assert torch.equal(z_start, starts[torch.arange(64), _best_start(g, x, starts)])
    assert float(starts.std()) == pytest.approx(128 ** -0.5, rel=0.02)


def _best_start(g, x, starts):
    with torch.no_grad():
        error = (g(starts.reshape(-1, 128)).view(64, 8, -1) - x.flatten(1)[:, None]).pow(2).mean(dim=2)
    return error.argmin(dim=1)


def test_learning_rate_drops_tenfold_at_eighty_percent_of_the_steps():
    # models/gan.py: exponential_decay(rec_lr, step, ceil(0.8 * rec_iters), 0.1, staircase=True)
    rates = [step_learning_rate(10.0, t, 200) for t in range(200)]
    assert rates[:160] == [10.0] * 160 and rates[160:] == [pytest.approx(1.0)] * 40
    assert [step_learning_rate(10.0, t, 7) for t in range(7)] == [10.0] * 6 + [pytest.approx(1.0)]  # ceil(5.6)
    # and project() uses it: with momentum 0 one step of lr 10 vs lr 1 after the decay
    g = _generator()
    x = torch.rand(1, 1, 28, 28)
    start = torch.zeros(1, 1, 128)
    decayed = project(g, x, steps=1, restarts=1, momentum=0.0, z_init=start, lr_decay_at=0.0)[0]
    plain = project(g, x, steps=1, restarts=1, momentum=0.0, z_init=start, lr_decay=1.0)[0]
    assert torch.allclose(decayed * 10, plain, atol=1e-6) and plain.abs().sum() > 0


def test_latent_attack_output_lies_on_the_generators_range():
    g = _generator(2)
    torch.manual_seed(0)
    classifier = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10)).eval()
    with torch.no_grad():
        x = g(torch.randn(6, 128))
        y = classifier(x).argmax(1)
    attack = LatentAttack(g, inversion_steps=50, inversion_restarts=3, steps=60, lr=0.05, binary_search_steps=3)
    result = attack(classifier, x, y)
    assert bool(result.success.any())
    with torch.no_grad():  # x_adv is exactly G(z) for the latent the attack found
        assert torch.allclose(g(attack.last_latents), result.x_adv, atol=1e-6)
        adv_pred = classifier(result.x_adv).argmax(1)
    # and a perfect projection maps it to itself: projecting from that latent stays put
    _, reprojected = project(g, result.x_adv, steps=20, restarts=1, z_init=attack.last_latents[:, None])
    assert float((reprojected - result.x_adv).abs().max()) < 1e-3
    assert torch.equal(adv_pred != y, result.success)


def test_wgan_gp_training_moves_samples_towards_the_data():
    images = torch.zeros(64, 1, 28, 28)
    images[:, :, 8:20, 8:20] = 1.0  # one bright square
    recipe = wgan_recipe(arch="mlp", dim=16, generator_steps=60, critic_steps=2, batch_size=16, lr=1e-3)
    torch.manual_seed(0)
    g, c = Generator("mlp", 16), Critic("mlp", 16)
    z = torch.randn(32, 128)
    with torch.no_grad():
        before = (g(z) - images[:32]).abs().mean()
    train_wgan_gp(g, c, images, recipe, progress=False)
    with torch.no_grad():
        after = (g(z) - images[:32]).abs().mean()
    assert after < before * 0.7


def test_unrolled_projection_is_differentiable_and_equals_the_detached_one():
    from obfgrad.defenses.defensegan import project
    from obfgrad.models.wgan import Generator

    generator = Generator("mlp", dim=8).eval()
    x = torch.rand(2, 1, 28, 28, requires_grad=True)
    _, unrolled = project(generator, x, steps=4, restarts=2, unrolled=True, seed=0)
    _, detached = project(generator, x, steps=4, restarts=2, seed=0)
    assert torch.allclose(unrolled.detach(), detached, atol=1e-6) and not detached.requires_grad
    (grad,) = torch.autograd.grad(unrolled.sum(), x)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0  # the gradient flows through the L steps
