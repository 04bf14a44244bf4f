"""Defense-GAN (Samangouei, Kabkab & Chellappa, ICLR 2018; Table 1 row 7).

Classify ``f(G(z*))`` with ``z* = argmin_z ||G(z) - x||^2``, found by gradient descent: ``L``
steps from each of ``R`` random starts, keeping the start that ends closest to ``x``. As in the
authors' ``models/gan.py`` (kabkabm/defensegan, ``GAN.reconstruct``): the starts are drawn afresh
on every call from ``N(0, 1/latent_dim)`` (``random_normal_initializer(stddev=sqrt(1/latent_dim))``,
re-initialised per batch by ``local_variables_initializer`` in ``utils/gan_defense.py``); the
descent is ``MomentumOptimizer(momentum=0.7)`` on the sum over the batch of each image's mean
squared error, with the learning rate multiplied by 0.1 from step ``ceil(0.8 L)`` on
(``get_learning_rate(decay_mult=0.1, decay_iter=ceil(rec_iters * 0.8))``, staircase); MNIST
config ``experiments/cfgs/gans/mnist.yml``: L = 200, R = 10, lr 10.0. (Reading the TF1 code, the
step counter handed to that decay, ``rec_iter_const``, is the while-loop's initial value and is
never assigned, so as written the decay may never take effect; ``lr_decay=1.0`` turns it off.)

The projection is the iterated computation that gives Defense-GAN its "vanishing/exploding"
gradients: differentiating through 200 unrolled steps is what the paper avoids with BPDA
(``G(z*(x)) ~ x``: the identity) and with the latent-space reparameterisation
(:class:`obfgrad.attacks.LatentAttack`).

The loss of the descent is the per-example *mean* squared error over pixels (the authors'
``tf.reduce_mean``), with momentum SGD (momentum 0.7) at lr 10: with a mean, lr 10 is a
moderate step. The random starts come from torch's global generator (fresh draws on every call:
the defense is randomized, and an attacker never knows the starts its judge will use); a fixed
``seed`` replays the same starts on every call (tests, or a threat model that grants the
attacker the defense's randomness).
"""

from __future__ import annotations

import contextlib
import math
from typing import Iterator, Optional, Tuple

import torch
from torch import nn

from obfgrad._checks import check_float, check_images, check_int

__all__ = ["project", "DefenseGAN", "DEFENSEGAN_DEFAULTS", "start_std", "step_learning_rate"]

DEFENSEGAN_DEFAULTS = {"steps": 200, "restarts": 10, "lr": 10.0, "momentum": 0.7, "lr_decay": 0.1,
                       "lr_decay_at": 0.8}


def start_std(latent_dim: int) -> float:
    """The standard deviation of the random starts: sqrt(1 / latent_dim) (the authors' initializer)."""
    return math.sqrt(1.0 / latent_dim)


def step_learning_rate(lr: float, step: int, steps: int, decay: float = 0.1, decay_at: float = 0.8) -> float:
    """The learning rate of step ``step`` (0-based) of ``steps``: ``lr``, times ``decay`` from step
    ``ceil(decay_at * steps)`` on (TF's staircase ``exponential_decay`` with that decay step).

    Example:
        >>> [step_learning_rate(10.0, t, 10) for t in (0, 7, 8, 9)]
        [10.0, 10.0, 1.0, 1.0]
    """
    return lr * (decay if step >= math.ceil(decay_at * steps) else 1.0)


def _starts(x: torch.Tensor, restarts: int, latent: int, seed: Optional[int],
            z_init: Optional[torch.Tensor]) -> torch.Tensor:
    """The (N * R, latent) starts on x's device and dtype: ``z_init``, or drawn N(0, 1/latent)
    from ``seed`` (torch's global generator when None)."""
    n = x.shape[0]
    if z_init is None:
        rng = torch.Generator().manual_seed(seed) if seed is not None else None
        z_init = start_std(latent) * torch.randn((n, restarts, latent), generator=rng)
    if z_init.shape != (n, restarts, latent):
        raise ValueError(f"z_init: expected shape ({n}, {restarts}, {latent}), got {tuple(z_init.shape)}")
    return z_init.to(x.device, x.dtype).reshape(n * restarts, latent).clone()


@contextlib.contextmanager
def _weights_frozen(generator: nn.Module) -> Iterator[None]:
    """Only z is optimised: no gradients into the weights inside the block (flags restored after)."""
    requires = [p.requires_grad for p in generator.parameters()]
    for p in generator.parameters():
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(generator.parameters(), requires):
            p.requires_grad_(flag)


def _descend(generator: nn.Module, z: torch.Tensor, target: torch.Tensor, steps: int, lr: float, momentum: float,
             lr_decay: float, lr_decay_at: float, unrolled: bool) -> torch.Tensor:
    """``steps`` momentum steps on each start's mean squared error to its target; returns z
    (still attached to the graph through every step when ``unrolled``)."""
    velocity = torch.zeros_like(z)
    for step in range(steps):
        with torch.enable_grad():
            z_var = z if unrolled else z.requires_grad_(True)
            if unrolled and not z_var.requires_grad:
                z_var = z_var.requires_grad_(True)
            error = (generator(z_var) - target).flatten(1).pow(2).mean(dim=1)
            (grad,) = torch.autograd.grad(error.sum(), z_var, create_graph=unrolled)
        velocity = momentum * velocity + grad
        rate = step_learning_rate(lr, step, steps, lr_decay, lr_decay_at)
        z = z - rate * velocity if unrolled else (z - rate * velocity).detach()
    return z


def project(generator: nn.Module, x: torch.Tensor, steps: int = 200, restarts: int = 10, lr: float = 10.0,
            momentum: float = 0.7, seed: Optional[int] = None, z_init: Optional[torch.Tensor] = None,
            unrolled: bool = False, lr_decay: float = 0.1,
            lr_decay_at: float = 0.8) -> Tuple[torch.Tensor, torch.Tensor]:
    """Defense-GAN's projection of ``x`` onto the generator's range.

    Args:
        generator: ``z (M, latent) -> images (M, C, H, W)``.
        x: images ``(N, C, H, W)`` in [0, 1].
        steps: gradient steps L per start.
        restarts: random starts R per image.
        lr, momentum: SGD with momentum on the per-image mean squared error.
        seed: seed of the random starts, replayed on every call; None (default) draws fresh
            starts from torch's global generator, ``N(0, 1/latent_dim)`` as the authors do.
        z_init: optional starts ``(N, R, latent)`` instead of random ones.
        unrolled: keep the autograd graph through all L steps, so ``G(z*(x))`` is differentiable
            in ``x`` (the exact gradient Athalye et al. call vanishing/exploding: L steps of
            gradient descent, differentiated; memory grows with L). Default: detached outputs.
        lr_decay, lr_decay_at: the learning rate is multiplied by ``lr_decay`` from step
            ``ceil(lr_decay_at * steps)`` on (:func:`step_learning_rate`; 1.0 keeps it constant).

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
    check_float(lr_decay, "lr_decay", low=0.0, high=1.0)
    check_float(lr_decay_at, "lr_decay_at", low=0.0, high=1.0)
    n, latent = x.shape[0], generator.latent_dim
    z = _starts(x, restarts, latent, seed, z_init)
    unrolled = bool(unrolled) and torch.is_grad_enabled()
    target = (x if unrolled else x.detach()).repeat_interleave(restarts, dim=0)
    with _weights_frozen(generator):
        z = _descend(generator, z, target, steps, lr, momentum, lr_decay, lr_decay_at, unrolled)
        with torch.set_grad_enabled(unrolled):
            images = generator(z)
            error = (images - target).flatten(1).pow(2).mean(dim=1).view(n, restarts)
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
        steps, restarts, lr, momentum, lr_decay, lr_decay_at: see :func:`project` (defaults
            L = 200, R = 10, lr 10, momentum 0.7, ×0.1 from 80% of the steps).
        seed: None (default): fresh random starts on every call (the authors' defense); an int
            replays the same starts on every call.
        batch_size: images projected at once (memory: batch_size · restarts latents).
        unrolled: differentiate through the L projection steps (see :func:`project`); the
            defense as a differentiable program, for gradient diagnostics.
    """

    def __init__(self, generator: nn.Module, steps: int = 200, restarts: int = 10, lr: float = 10.0,
                 momentum: float = 0.7, seed: Optional[int] = None, batch_size: int = 128, unrolled: bool = False,
                 lr_decay: float = 0.1, lr_decay_at: float = 0.8):
        super().__init__()
        self.generator = generator.eval()
        self.steps, self.restarts = check_int(steps, "steps", low=0), check_int(restarts, "restarts", low=1)
        self.lr, self.momentum = check_float(lr, "lr", low=0.0), check_float(momentum, "momentum", low=0.0)
        self.seed, self.batch_size, self.unrolled = seed, batch_size, bool(unrolled)
        self.lr_decay = check_float(lr_decay, "lr_decay", low=0.0, high=1.0)
        self.lr_decay_at = check_float(lr_decay_at, "lr_decay_at", low=0.0, high=1.0)

    def extra_repr(self) -> str:
        return (f"steps={self.steps}, restarts={self.restarts}, lr={self.lr}, momentum={self.momentum}, "
                f"lr_decay={self.lr_decay} at {self.lr_decay_at:g}, seed={self.seed}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = [project(self.generator, x[s:s + self.batch_size], self.steps, self.restarts, self.lr,
                         self.momentum, self.seed, unrolled=self.unrolled, lr_decay=self.lr_decay,
                         lr_decay_at=self.lr_decay_at)[1]
                 for s in range(0, x.shape[0], self.batch_size)]
        return torch.cat(parts) if parts else x.clone()
