"""WGAN-GP generator and critic (Gulrajani et al., NeurIPS 2017), the generative model of
Defense-GAN (Samangouei, Kabkab & Chellappa, ICLR 2018; Table 1 row 7).

Two architectures, both with a 128-dimensional latent and a sigmoid output in [0, 1]:

* ``"dcgan"`` (the paper's; protocol.md row 7, ``defensegan/defense.py:Generator``, DIM = 64):
  Linear 128 -> 4·4·4·DIM, ReLU; deconv 5×5 to 2·DIM, ReLU, crop to 7×7; deconv to DIM, ReLU;
  deconv to 1, sigmoid. Critic: conv 5×5 stride 2 DIM, 2·DIM, 4·DIM with leaky ReLU, linear to 1.
* ``"mlp"`` (the smoke profile's): fully connected 128 -> hidden -> 2·hidden -> 784. On CPU the
  transposed convolutions cost ~1 ms per latent per step, and Defense-GAN's projection runs
  L·R = 2000 of them per image; the MLP is several times cheaper.

Training (:func:`train_wgan_gp`): Adam (lr 1e-4, betas 0.5/0.9), 5 critic steps per generator
step, gradient penalty weight 10: Gulrajani et al.'s MNIST settings.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Mapping, Tuple

import torch
from torch import nn

from obfgrad._checks import finite_loss
from obfgrad.cache import load_or_train, normalize_recipe
from obfgrad.models.loop import descend, seeded_training

__all__ = ["Generator", "Critic", "LATENT_DIM", "wgan_recipe", "build_wgan", "train_wgan_gp",
           "wgan_train_or_load"]

LATENT_DIM = 128


class _Crop7(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :, :7, :7]


class Generator(nn.Module):
    """``z (N, 128) -> image (N, 1, 28, 28)`` in [0, 1].

    Example:
        >>> Generator("mlp", dim=16)(torch.randn(3, 128)).shape
        torch.Size([3, 1, 28, 28])
    """

    def __init__(self, arch: str = "dcgan", dim: int = 64, latent_dim: int = LATENT_DIM):
        super().__init__()
        self.latent_dim = latent_dim
        if arch == "dcgan":
            self.net = nn.Sequential(
                nn.Linear(latent_dim, 4 * 4 * 4 * dim), nn.ReLU(), nn.Unflatten(1, (4 * dim, 4, 4)),
                nn.ConvTranspose2d(4 * dim, 2 * dim, 5, stride=2, padding=2, output_padding=1), nn.ReLU(),
                _Crop7(),  # 8×8 -> 7×7, so two more doublings give 28×28
                nn.ConvTranspose2d(2 * dim, dim, 5, stride=2, padding=2, output_padding=1), nn.ReLU(),
                nn.ConvTranspose2d(dim, 1, 5, stride=2, padding=2, output_padding=1), nn.Sigmoid())
        elif arch == "mlp":
            self.net = nn.Sequential(
                nn.Linear(latent_dim, dim), nn.ReLU(), nn.Linear(dim, 2 * dim), nn.ReLU(),
                nn.Linear(2 * dim, 28 * 28), nn.Sigmoid(), nn.Unflatten(1, (1, 28, 28)))
        else:
            raise ValueError(f"arch: expected 'dcgan' or 'mlp', got {arch!r}")

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


class Critic(nn.Module):
    """``image (N, 1, 28, 28) -> score (N,)`` (no sigmoid, no batch norm: WGAN-GP)."""

    def __init__(self, arch: str = "dcgan", dim: int = 64):
        super().__init__()
        if arch == "dcgan":
            self.net = nn.Sequential(
                nn.Conv2d(1, dim, 5, stride=2, padding=2), nn.LeakyReLU(0.2),
                nn.Conv2d(dim, 2 * dim, 5, stride=2, padding=2), nn.LeakyReLU(0.2),
                nn.Conv2d(2 * dim, 4 * dim, 5, stride=2, padding=2), nn.LeakyReLU(0.2),
                nn.Flatten(), nn.Linear(4 * 4 * 4 * dim, 1))
        elif arch == "mlp":
            self.net = nn.Sequential(
                nn.Flatten(), nn.Linear(28 * 28, 2 * dim), nn.LeakyReLU(0.2), nn.Linear(2 * dim, dim),
                nn.LeakyReLU(0.2), nn.Linear(dim, 1))
        else:
            raise ValueError(f"arch: expected 'dcgan' or 'mlp', got {arch!r}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(1)


# -- training ---------------------------------------------------------------------------------------
WGAN_RECIPE_VERSION = 1


def wgan_recipe(**fields: Any) -> Dict[str, Any]:
    """A WGAN-GP recipe (plain JSON); defaults are Gulrajani et al.'s MNIST settings at DIM 64."""
    recipe = {"kind": "wgan_gp", "arch": "dcgan", "dim": 64, "dataset": "mnist", "train_limit": None,
              "generator_steps": 200000 // 5, "critic_steps": 5, "batch_size": 50, "lr": 1e-4,
              "betas": [0.5, 0.9], "gp_weight": 10.0, "seed": 0, "version": WGAN_RECIPE_VERSION}
    unknown = set(fields) - set(recipe)
    if unknown:
        raise ValueError(f"wgan_recipe: unknown fields {sorted(unknown)}")
    recipe.update(fields)
    return normalize_recipe(recipe)


def build_wgan(recipe: Mapping[str, Any]) -> Tuple[Generator, Critic]:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe["seed"])
        return Generator(recipe["arch"], recipe["dim"]), Critic(recipe["arch"], recipe["dim"])


def _gradient_penalty(critic: Critic, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """E[(||grad critic(x_hat)||_2 - 1)^2] on random interpolates x_hat (Gulrajani et al., Alg. 1)."""
    mix = torch.rand(real.shape[0], 1, 1, 1, device=real.device)
    x_hat = (mix * real + (1 - mix) * fake).requires_grad_(True)
    (grad,) = torch.autograd.grad(critic(x_hat).sum(), x_hat, create_graph=True)
    return (grad.flatten(1).norm(dim=1) - 1).pow(2).mean()


def train_wgan_gp(generator: Generator, critic: Critic, images: torch.Tensor, recipe: Mapping[str, Any], *,
                  progress: bool = True) -> Generator:
    """WGAN-GP training as in Gulrajani et al.'s Algorithm 1; returns the generator in eval mode."""
    if recipe["train_limit"] is not None:
        images = images[:recipe["train_limit"]]
    betas = tuple(recipe["betas"])
    opt_g = torch.optim.Adam(generator.parameters(), lr=recipe["lr"], betas=betas)
    opt_c = torch.optim.Adam(critic.parameters(), lr=recipe["lr"], betas=betas)
    batch = recipe["batch_size"]
    with seeded_training(recipe["seed"], recipe["generator_steps"], "train wgan-gp", progress) as (sampler, bar):
        for _ in range(recipe["generator_steps"]):
            for _ in range(recipe["critic_steps"]):
                real = images[torch.randint(0, images.shape[0], (batch,), generator=sampler)]
                with torch.no_grad():
                    fake = generator(torch.randn(batch, generator.latent_dim))
                loss_c = (critic(fake).mean() - critic(real).mean()
                          + recipe["gp_weight"] * _gradient_penalty(critic, real, fake))
                descend(opt_c, loss_c)
            loss_g = -critic(generator(torch.randn(batch, generator.latent_dim))).mean()
            descend(opt_g, loss_g)
            bar.update(1)
            bar.set_postfix(critic=f"{finite_loss(loss_c, 'train wgan-gp (critic)'):.3f}", refresh=False)
    return generator.eval()


def wgan_train_or_load(recipe: Mapping[str, Any], data_fn: Callable[[Mapping[str, Any]], torch.Tensor], *,
                       progress: bool = True) -> Generator:
    """The recipe's trained generator, from the cache or trained and cached (generator and critic)."""
    def build() -> nn.ModuleDict:  # checkpoint keys "generator.*" and "critic.*"
        generator, critic = build_wgan(recipe)
        return nn.ModuleDict({"generator": generator, "critic": critic})

    def fit(pair: nn.ModuleDict) -> None:
        train_wgan_gp(pair["generator"], pair["critic"], data_fn(recipe), recipe, progress=progress)

    return load_or_train(recipe, build, fit)["generator"]
