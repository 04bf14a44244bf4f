"""Guo et al. (ICLR 2018), "Countering Adversarial Images using Input Transformations": the five
input transformations of Table 1's row 3, each an ``nn.Module`` ``x -> x'`` on [0, 1] images with
the paper's hyperparameters as defaults, and :class:`TransformedClassifier`, the defended model
``classifier(transform(x))`` (optionally an ensemble over random draws, as crop-rescale is).

Randomness. Each transformation says whether it is random (``random``). A random one draws a
fresh seed from its ``generator`` (torch's default generator when None) on every call, unless a
seed is given: ``transform(x, seed=s)`` for one call or ``seed=s`` at construction for every call
(so an attack can replay the defense's randomness where the threat model allows it). The seed
keys the native kernels' counter-based RNG (TV mask, quilting's pick) or a ``torch.Generator``
(crop offsets), so the same seed gives the same output.

Gradients. Bit-depth reduction, JPEG, TV minimisation and quilting are non-differentiable; with
``bpda=True`` (the default) their backward is the identity (BPDA, Athalye et al. 2018 Sec. 4.1;
the ops in :mod:`obfgrad.ops` already have it). ``bpda=False`` gives the true gradient, which is
zero almost everywhere for bit-depth and undefined for the others (they then return a tensor
cut from the graph), the "shattered gradient" the paper describes. Crop-rescale is differentiable.

Backends. ``backend="native"`` runs :mod:`obfgrad.ops` (compiled kernels; the pure-torch
reference when no native code loads); ``backend="reference"`` forces the pure-torch/numpy
reference ops (for measuring what the kernels buy a whole attack).
"""

from __future__ import annotations

import importlib
import math
from typing import Callable, Optional, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from obfgrad._checks import check_choice, check_float, check_generator, check_images, check_int
from obfgrad.attacks.bpda import BPDA
from obfgrad.ops.quilt_db import PatchDatabase

# The op modules (obfgrad.ops re-exports functions of the same names, so import the modules).
jpeg_op = importlib.import_module("obfgrad.ops.jpeg")
quilt_op = importlib.import_module("obfgrad.ops.quilt")
tv_op = importlib.import_module("obfgrad.ops.tv")

__all__ = ["InputTransform", "BitDepthReduction", "JPEGCompression", "CropRescale", "TVMinimization",
           "ImageQuilting", "TransformedClassifier", "BACKENDS", "GUO_TRANSFORMS"]

BACKENDS = ("native", "reference")
GUO_TRANSFORMS = ("bit_depth", "jpeg", "crop_rescale", "tv", "quilting")
_SEED_BOUND = 2**62


def _straight_through(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, bpda: bool) -> torch.Tensor:
    """``fn(x)`` with the identity as its gradient (bpda) or cut from the graph."""
    if bpda and x.requires_grad:
        return BPDA(fn)(x)
    with torch.no_grad():
        return fn(x.detach())


class InputTransform(nn.Module):
    """Base of the transformations: seed handling and input checks.

    Args:
        seed: fixed seed for every call (replays the randomness); None draws a fresh one.
        generator: where fresh seeds come from (torch's default generator when None).
    """

    random: bool = False

    def __init__(self, seed: Optional[int] = None, generator: Optional[torch.Generator] = None):
        super().__init__()
        self.seed = None if seed is None else check_int(seed, "seed", low=0, high=_SEED_BOUND - 1)
        self.generator = check_generator(generator)

    def draw_seed(self, seed: Optional[int] = None) -> int:
        """The seed of one call: ``seed``, else the fixed seed, else a fresh draw."""
        if seed is not None:
            return check_int(seed, "seed", low=0, high=_SEED_BOUND - 1)
        if self.seed is not None:
            return self.seed
        return int(torch.randint(0, _SEED_BOUND, (), generator=self.generator))

    def forward(self, x: torch.Tensor, seed: Optional[int] = None) -> torch.Tensor:
        check_images(x, "x", in_unit_range=True)
        return self.transform(x, self.draw_seed(seed) if self.random else 0)

    def transform(self, x: torch.Tensor, seed: int) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


class BitDepthReduction(InputTransform):
    """Quantise each value to ``bits`` bits, as Athalye et al.'s ``defend_reduce``: the 8-bit value
    ``floor(255 x)`` keeps its top ``bits`` bits, ``v = (u >> (8 - bits)) << (8 - bits)``, and
    ``x' = v / 255``. Deterministic. Guo et al.: 3 bits.

    Example:
        >>> import torch
        >>> [round(v * 255) for v in BitDepthReduction(3)(torch.tensor([[[[0.0, 0.5, 1.0]]]])).flatten().tolist()]
        [0, 96, 224]
    """

    def __init__(self, bits: int = 3, bpda: bool = True):
        super().__init__()
        self.bits = check_int(bits, "bits", low=1, high=8)
        self.bpda = bool(bpda)

    def _reduce(self, x: torch.Tensor) -> torch.Tensor:
        shift = 8 - self.bits
        levels = torch.floor(x * 255.0).clamp(0, 255)
        return torch.floor(levels / 2**shift) * 2**shift / 255.0

    def transform(self, x: torch.Tensor, seed: int) -> torch.Tensor:
        return _straight_through(self._reduce, x, self.bpda)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, bpda={self.bpda}"


class JPEGCompression(InputTransform):
    """JPEG round trip at ``quality`` (Guo et al.: 75), bit-exact with Pillow; deterministic.
    See :func:`obfgrad.ops.jpeg.jpeg`."""

    def __init__(self, quality: int = 75, bpda: bool = True, backend: str = "native"):
        super().__init__()
        self.quality = check_int(quality, "quality", low=1, high=100)
        self.bpda = bool(bpda)
        self.backend = check_choice(backend, "backend", BACKENDS)

    def transform(self, x: torch.Tensor, seed: int) -> torch.Tensor:
        if self.backend == "native" and self.bpda:
            return jpeg_op.jpeg(x, self.quality)  # its registered backward is the identity
        return _straight_through(lambda v: self._forward(v), x, self.bpda)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.backend == "reference":
            return jpeg_op.reference(x, self.quality)
        return jpeg_op.jpeg(x, self.quality)

    def extra_repr(self) -> str:
        return f"quality={self.quality}, bpda={self.bpda}, backend={self.backend!r}"


class CropRescale(InputTransform):
    """One random square crop of ``crop_fraction`` of the side, bilinearly resized back to the
    input size (Guo et al.; Athalye et al.'s ``defend_crop``: 90x90 crops of 299x299 images, the
    crop's start uniform over the valid offsets, continuous, ``crop_and_resize``-style bilinear
    sampling). Each example of the batch gets its own offset. Random; differentiable.

    The defense classifies with the mean softmax over 30 such crops:
    ``TransformedClassifier(CropRescale(), net, ensemble=30)``.

    Example:
        >>> import torch
        >>> crop = CropRescale(crop_fraction=0.5)
        >>> x = torch.rand(2, 3, 16, 16)
        >>> crop(x, seed=1).shape, torch.equal(crop(x, seed=1), crop(x, seed=1))
        (torch.Size([2, 3, 16, 16]), True)
    """

    random = True

    def __init__(self, crop_fraction: float = 90 / 299, seed: Optional[int] = None,
                 generator: Optional[torch.Generator] = None):
        super().__init__(seed, generator)
        self.crop_fraction = check_float(crop_fraction, "crop_fraction", low=0.0, high=1.0, low_inclusive=False)

    def transform(self, x: torch.Tensor, seed: int) -> torch.Tensor:
        n, _, height, width = x.shape
        offsets = torch.rand((n, 2), generator=torch.Generator().manual_seed(seed)).to(x.device, x.dtype)
        # Normalised coordinates in [-1, 1] (align_corners=True: -1 and 1 are the corner pixels'
        # centres, as crop_and_resize's box corners). The crop spans ``f`` of the side.
        scale = self.crop_fraction
        centre = (offsets * (1.0 - scale)) * 2.0 - (1.0 - scale)  # crop centre, uniform start offset
        theta = torch.zeros((n, 2, 3), dtype=x.dtype, device=x.device)
        theta[:, 0, 0] = scale
        theta[:, 1, 1] = scale
        theta[:, 0, 2] = centre[:, 1]
        theta[:, 1, 2] = centre[:, 0]
        grid = F.affine_grid(theta, [n, x.shape[1], height, width], align_corners=True)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=True)

    def extra_repr(self) -> str:
        return f"crop_fraction={self.crop_fraction:.4f}"


class TVMinimization(InputTransform):
    """Random pixel dropout (keep ``keep_prob``) + masked total-variation minimisation with
    ``lambda_tv`` (Guo et al.: 0.5, 0.03). Random (the mask). See :func:`obfgrad.ops.tv.tv_minimize`."""

    random = True

    def __init__(self, keep_prob: float = 0.5, lambda_tv: float = 0.03, *, bpda: bool = True,
                 backend: str = "native", seed: Optional[int] = None, generator: Optional[torch.Generator] = None):
        super().__init__(seed, generator)
        self.keep_prob = check_float(keep_prob, "keep_prob", low=0.0, high=1.0, low_inclusive=False)
        self.lambda_tv = check_float(lambda_tv, "lambda_tv", low=0.0, low_inclusive=False)
        self.bpda = bool(bpda)
        self.backend = check_choice(backend, "backend", BACKENDS)

    def transform(self, x: torch.Tensor, seed: int) -> torch.Tensor:
        if self.backend == "native" and self.bpda:
            return tv_op.tv_minimize(x, self.keep_prob, self.lambda_tv, seed=seed)
        if self.backend == "reference":
            fn = lambda v: tv_op.reference(v, self.keep_prob, self.lambda_tv, seed=seed)  # noqa: E731
        else:
            fn = lambda v: tv_op.tv_minimize(v, self.keep_prob, self.lambda_tv, seed=seed)  # noqa: E731
        return _straight_through(fn, x, self.bpda)

    def extra_repr(self) -> str:
        return f"keep_prob={self.keep_prob}, lambda_tv={self.lambda_tv}, bpda={self.bpda}, backend={self.backend!r}"


class ImageQuilting(InputTransform):
    """Image quilting from ``database`` (Guo et al.: 5x5 patches, overlap 2, K = 10 nearest
    neighbours, one picked at random). Random (the pick). See :func:`obfgrad.ops.quilt.quilt`."""

    random = True

    def __init__(self, database: Union[PatchDatabase, torch.Tensor], k: int = 10, overlap: int = 2, *,
                 bpda: bool = True, backend: str = "native", seed: Optional[int] = None,
                 generator: Optional[torch.Generator] = None):
        super().__init__(seed, generator)
        if isinstance(database, np.ndarray):
            database = torch.from_numpy(database)
        if isinstance(database, PatchDatabase):
            count, size = len(database), database.patch_size
        elif isinstance(database, torch.Tensor) and database.dim() == 4:
            count, size = int(database.shape[0]), int(database.shape[2])
        else:
            raise TypeError(f"database: expected a PatchDatabase or an (N, C, P, P) tensor, got "
                            f"{tuple(database.shape) if isinstance(database, torch.Tensor) else type(database).__name__}")
        self.database = database
        # Checked now, against the database, rather than at the first call.
        self.k = check_int(k, "k", low=1, high=max(count, 1))
        self.overlap = check_int(overlap, "overlap", low=1, high=max(size - 1, 1))
        self.bpda = bool(bpda)
        self.backend = check_choice(backend, "backend", BACKENDS)

    def transform(self, x: torch.Tensor, seed: int) -> torch.Tensor:
        if self.backend == "native" and self.bpda:
            return quilt_op.quilt(x, self.database, k=self.k, overlap=self.overlap, seed=seed)
        if self.backend == "reference":
            fn = lambda v: quilt_op.reference(v, self.database, k=self.k, overlap=self.overlap, seed=seed)  # noqa: E731
        else:
            fn = lambda v: quilt_op.quilt(v, self.database, k=self.k, overlap=self.overlap, seed=seed)  # noqa: E731
        return _straight_through(fn, x, self.bpda)

    def extra_repr(self) -> str:
        return (f"patches={len(self.database)}, k={self.k}, overlap={self.overlap}, bpda={self.bpda}, "
                f"backend={self.backend!r}")


class TransformedClassifier(nn.Module):
    """The defended model ``classifier(transform(x))``.

    Args:
        transform: an input transformation (``x -> x'``, same shape or the classifier's input).
        classifier: ``x' -> logits``.
        ensemble: classify with the mean softmax over this many draws of ``transform`` (Guo et
            al.'s 30 crops); the output is then ``log mean softmax`` (its argmax is the
            ensemble's prediction). 1: one draw, raw logits.

    Example:
        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
        >>> model = TransformedClassifier(CropRescale(0.5), net, ensemble=4)
        >>> model(torch.rand(2, 1, 4, 4)).shape
        torch.Size([2, 3])
    """

    def __init__(self, transform: Callable[[torch.Tensor], torch.Tensor], classifier: nn.Module, ensemble: int = 1):
        super().__init__()
        self.transform = transform
        self.classifier = classifier
        self.ensemble = check_int(ensemble, "ensemble", low=1)

    @property
    def random(self) -> bool:
        return bool(getattr(self.transform, "random", False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.ensemble == 1:
            return self.classifier(self.transform(x))
        stacked = x.repeat((self.ensemble,) + (1,) * (x.dim() - 1))  # one draw per row block
        log_probs = torch.log_softmax(self.classifier(self.transform(stacked)), dim=-1)
        log_probs = log_probs.view(self.ensemble, x.shape[0], -1)
        return torch.logsumexp(log_probs, dim=0) - math.log(self.ensemble)

    def extra_repr(self) -> str:
        return f"ensemble={self.ensemble}"
