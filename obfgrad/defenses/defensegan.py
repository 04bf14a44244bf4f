"""Defense-GAN (Samangouei, Kabkab & Chellappa, ICLR 2018; Table 1 row 7).

Classify ``f(G(z*))`` with ``z* = argmin_z ||G(z) - x||^2``, found by gradient descent: ``L``
steps from each of ``R`` random starts ``z ~ N(0, I)``, keeping the start that ends closest to
``x`` (protocol.md row 7: L = 200, R = 10, lr 10.0 from the authors' ``cfgs/gans/mnist.yml``).

The projection is the iterated computation that gives Defense-GAN its "vanishing/exploding"
gradients: differentiating through 200 unrolled steps is what the paper avoids with BPDA
(``G(z*(x)) ~ x``: the identity) and with the latent-space reparameterisation
(:class:`obfgrad.attacks.LatentAttack`).

The loss of the descent is the per-example *mean* squared error over pixels (the authors'
``tf.reduce_mean``), with momentum SGD (momentum 0.7) at lr 10: with a mean, lr 10 is a
moderate step. The random starts come from a generator seeded per call (``seed``), so the
defense is deterministic: the same batch always gets the same reconstruction.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import nn

from obfgrad._checks import check_float, check_images, check_int

__all__ = ["project", "DefenseGAN", "DEFENSEGAN_DEFAULTS"]

DEFENSEGAN_DEFAULTS = {"steps": 200, "restarts": 10, "lr": 10.0, "momentum": 0.7}


def project(generator: nn.Module, x: torch.Tensor, steps: int = 200, restarts: int = 10, lr: float = 10.0,
            momentum: float = 0.7, seed: Optional[int] = 0, z_init: Optional[torch.Tensor] = None,
            unrolled: bool = False) -> Tuple[torch.Tensor, torch.Tensor]:
    """Defense-GAN's projection of ``x`` onto the generator's range.

    Args:
        generator: ``z (M, latent) -> images (M, C, H, W)``.
        x: images ``(N, C, H, W)`` in [0, 1].
        steps: gradient steps L per start.
        restarts: random starts R per image.
        lr, momentum: SGD with momentum on the per-image mean squared error.
        seed: seed of the random starts (None: torch's global generator).
        z_init: optional starts ``(N, R, latent)`` instead of random ones.
        unrolled: keep the autograd graph through all L steps, so ``G(z*(x))`` is differentiable
            in ``x`` (the exact gradient Athalye et al. call vanishing/exploding: L steps of
            gradient descent, differentiated; memory grows with L). Default: detached outputs.

    Returns:
        ``(z_star (N, latent), G(z_star) (N, C, H, W))``, detached unless ``unrolled``.

    Example:
        >>> from obfgrad.models.wgan import Generator
        >>> g = Generator("mlp", dim=8).eval()
        >>> z, x_rec = project(g, torch.rand(2, 1, 28, 28), steps=3, restarts=2)
        >>> z.shape, x_rec.shape
        (torch.Size([2, 128]), torch.Size([2, 1, 28, 28]))
    """
    check_images(x, "x")
    steps = check_int(steps, "steps", low=0)
    restarts = check_int(restarts, "restarts", low=1)
    n, latent = x.shape[0], generator.latent_dim
    if z_init is None:
        rng = torch.Generator().manual_seed(seed) if seed is not None else None
        z_init = torch.randn((n, restarts, latent), generator=rng)
    if z_init.shape != (n, restarts, latent):
        raise ValueError(f"z_init: expected shape ({n}, {restarts}, {latent}), got {tuple(z_init.shape)}")
    z = z_init.to(x.device, x.dtype).reshape(n * restarts, latent).clone()
    unrolled = bool(unrolled) and torch.is_grad_enabled()
    target = (x if unrolled else x.detach()).repeat_interleave(restarts, dim=0)
    velocity = torch.zeros_like(z)
    requires = [p.requires_grad for p in generator.parameters()]
    for p in generator.parameters():  # only z is optimised; no gradients into the weights
        p.requires_grad_(False)
    try:
        for _ in range(steps):
            with torch.enable_grad():
                z_var = z if unrolled else z.requires_grad_(True)
                if unrolled and not z_var.requires_grad:
                    z_var = z_var.requires_grad_(True)
                error = (generator(z_var) - target).flatten(1).pow(2).mean(dim=1)
                (grad,) = torch.autograd.grad(error.sum(), z_var, create_graph=unrolled)
            velocity = momentum * velocity + grad
            z = z - lr * velocity if unrolled else (z - lr * velocity).detach()
        with torch.set_grad_enabled(unrolled):
            images = generator(z)
            error = (images - target).flatten(1).pow(2).mean(dim=1).view(n, restarts)
    finally:
        for p, flag in zip(generator.parameters(), requires):
            p.requires_grad_(flag)
    best = error.detach().argmin(dim=1)
    pick = torch.arange(n, device=x.device) * restarts + best
    if unrolled:
        return z[pick], images[pick]
    return z[pick].detach(), images[pick].detach()


class DefenseGAN(nn.Module):
    """``x -> G(z*(x))``, the reconstruction Defense-GAN classifies (compose with a classifier:
    ``nn.Sequential(DefenseGAN(G), classifier)``; attack with ``BPDA(DefenseGAN(G))``).

    Args:
        generator: the WGAN-GP generator.
        steps, restarts, lr, momentum: see :func:`project` (defaults L = 200, R = 10, lr 10).
        seed: seed of the random starts (per call).
        batch_size: images projected at once (memory: batch_size · restarts latents).
        unrolled: differentiate through the L projection steps (see :func:`project`); the
            defense as a differentiable program, for gradient diagnostics.
    """

    def __init__(self, generator: nn.Module, steps: int = 200, restarts: int = 10, lr: float = 10.0,
                 momentum: float = 0.7, seed: Optional[int] = 0, batch_size: int = 128, unrolled: bool = False):
        super().__init__()
        self.generator = generator.eval()
        self.steps, self.restarts = check_int(steps, "steps", low=0), check_int(restarts, "restarts", low=1)
        self.lr, self.momentum = check_float(lr, "lr", low=0.0), check_float(momentum, "momentum", low=0.0)
        self.seed, self.batch_size, self.unrolled = seed, batch_size, bool(unrolled)

    def extra_repr(self) -> str:
        return f"steps={self.steps}, restarts={self.restarts}, lr={self.lr}, momentum={self.momentum}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = [project(self.generator, x[s:s + self.batch_size], self.steps, self.restarts, self.lr,
                         self.momentum, self.seed, unrolled=self.unrolled)[1]
                 for s in range(0, x.shape[0], self.batch_size)]
        return torch.cat(parts) if parts else x.clone()
