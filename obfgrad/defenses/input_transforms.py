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

import math
from typing import Callable, Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from obfgrad._checks import SEED_BOUND, check_choice, check_float, check_generator, check_images, check_int
from obfgrad.data.patch_db import PatchDatabase
from obfgrad.defenses.tf_resize import _crop_and_resize, _resize_bilinear_tf1
from obfgrad.ops import jpeg_op, quilt_op, tv_op
from obfgrad.ops.bpda import BPDA

__all__ = ["InputTransform", "BitDepthReduction", "JPEGCompression", "CropRescale", "TVMinimization",
           "ImageQuilting", "TransformedClassifier", "crop_rescale", "BACKENDS", "GUO_TRANSFORMS",
           "CROP_GEOMETRIES"]

BACKENDS = ("native", "reference")
#: Crop-rescale geometries: the box sampled straight at the input size, or Athalye et al.'s
#: crop to 90x90 then TF1 resize to 299 (see crop_rescale).
CROP_GEOMETRIES = ("direct", "authors")
GUO_TRANSFORMS = ("bit_depth", "jpeg", "crop_rescale", "tv", "quilting")


def _straight_through(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, bpda: bool,
                      approx: Optional[Callable[[torch.Tensor], torch.Tensor]] = None) -> torch.Tensor:
    """``fn(x)`` with ``approx``'s gradient (the identity when None) under bpda, else cut from the graph."""
    if bpda and x.requires_grad:
        return BPDA(fn, approx)(x)
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
        self.seed = None if seed is None else check_int(seed, "seed", low=0, high=SEED_BOUND - 1)
        self.generator = check_generator(generator)

    def draw_seed(self, seed: Optional[int] = None) -> int:
        """The seed of one call: ``seed``, else the fixed seed, else a fresh draw."""
        if seed is not None:
            return check_int(seed, "seed", low=0, high=SEED_BOUND - 1)
        if self.seed is not None:
            return self.seed
        return int(torch.randint(0, SEED_BOUND, (), generator=self.generator))

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
    """JPEG round trip at ``quality`` (Guo et al.: 75), bit-exact with Pillow; deterministic; the
    ``nn.Module`` of :func:`obfgrad.ops.jpeg_op.jpeg`.
    ``rounding``: float to 8 bits by ``"nearest"`` (default) or ``"truncate"`` (Athalye et al.'s
    ``defend_jpeg``; the paper profile's). ``subsampling``: ``"4:2:0"`` (default) or ``"4:4:4"``.
    ``backward`` (with ``bpda``): ``"identity"`` (default) or ``"linear"``, the gradient of the
    op's linear surrogate (:func:`obfgrad.ops.jpeg_op.linear_surrogate`)."""

    def __init__(self, quality: int = 75, bpda: bool = True, backend: str = "native", rounding: str = "nearest", *,
                 subsampling: str = "4:2:0", backward: str = "identity"):
        super().__init__()
        self.quality = check_int(quality, "quality", low=1, high=100)
        self.bpda = bool(bpda)
        self.backend = check_choice(backend, "backend", BACKENDS)
        self.rounding = check_choice(rounding, "rounding", jpeg_op.ROUNDINGS)
        self.subsampling = check_choice(subsampling, "subsampling", jpeg_op.SUBSAMPLINGS)
        self.backward_mode = check_choice(backward, "backward", jpeg_op.BACKWARDS)

    def transform(self, x: torch.Tensor, seed: int) -> torch.Tensor:
        if self.backend == "native" and self.bpda:  # the op's registered backward is the chosen one
            return jpeg_op.jpeg(x, self.quality, subsampling=self.subsampling, backward=self.backward_mode,
                                rounding=self.rounding)
        approx = self._surrogate if self.backward_mode == "linear" else None
        return _straight_through(self._forward, x, self.bpda, approx)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.backend == "reference":
            return jpeg_op.reference(x, self.quality, self.subsampling, rounding=self.rounding)
        return jpeg_op.jpeg(x, self.quality, subsampling=self.subsampling, rounding=self.rounding)

    def _surrogate(self, x: torch.Tensor) -> torch.Tensor:
        return jpeg_op.linear_surrogate(x, self.quality, self.subsampling)

    def extra_repr(self) -> str:
        return (f"quality={self.quality}, subsampling={self.subsampling!r}, rounding={self.rounding!r}, "
                f"backward={self.backward_mode!r}, bpda={self.bpda}, backend={self.backend!r}")


class CropRescale(InputTransform):
    """One random square crop of ``crop_fraction`` of the side, bilinearly resized back to the
    input size (Guo et al.; Athalye et al.'s ``defend_crop``: 90x90 crops of 299x299 images, the
    crop's start uniform over the valid offsets, continuous, ``crop_and_resize``-style bilinear
    sampling). Each example of the batch gets its own offset. Random; differentiable.

    The defense classifies with the mean softmax over 30 such crops:
    ``TransformedClassifier(CropRescale(), net, ensemble=30)``.

    Geometry (see :func:`crop_rescale`): ``"direct"`` (default) samples the crop box straight at
    the input size; ``"authors"`` is the authors' two steps, a ``crop_and_resize`` to a
    ``round(crop_fraction * side)``-pixel square (90x90) and their InceptionV3 wrapper's TF1
    bilinear resize back to the side (the paper profile's).

    Example:
        >>> import torch
        >>> crop = CropRescale(crop_fraction=0.5)
        >>> x = torch.rand(2, 3, 16, 16)
        >>> crop(x, seed=1).shape, torch.equal(crop(x, seed=1), crop(x, seed=1))
        (torch.Size([2, 3, 16, 16]), True)
    """

    random = True

    def __init__(self, crop_fraction: float = 90 / 299, seed: Optional[int] = None,
                 generator: Optional[torch.Generator] = None, geometry: str = "direct"):
        super().__init__(seed, generator)
        self.crop_fraction = check_float(crop_fraction, "crop_fraction", low=0.0, high=1.0, low_inclusive=False)
        self.geometry = check_choice(geometry, "geometry", CROP_GEOMETRIES)

    def transform(self, x: torch.Tensor, seed: int) -> torch.Tensor:
        draws = torch.rand((x.shape[0], 2), generator=torch.Generator().manual_seed(seed)).to(x.device)
        if self.geometry == "authors":  # tf.random_uniform((), 0, (side - crop) / side), float32
            _, start_max, _ = _authors_crop_box(x, self.crop_fraction)
            return _crop_rescale_authors(x, draws * start_max, self.crop_fraction)
        return _crop_rescale_direct(x, draws.to(x.dtype) * (1.0 - self.crop_fraction), self.crop_fraction)

    def extra_repr(self) -> str:
        return f"crop_fraction={self.crop_fraction:.4f}, geometry={self.geometry!r}"


def crop_rescale(x: torch.Tensor, starts: torch.Tensor, crop_fraction: float = 90 / 299, *,
                 geometry: str = "direct") -> torch.Tensor:
    """Guo et al.'s crop-rescale with the crop positions given: image ``n``'s square crop starts
    at ``starts[n] = (start_y, start_x)``, fractions of the side in the box convention of
    ``tf.image.crop_and_resize`` (0 and 1 are the first and last pixel centres).

    Args:
        x: images (N, C, H, W) in [0, 1].
        starts: (N, 2) floats in ``[0, 1 - crop_fraction]`` (the authors draw each uniformly
            over ``[0, (side - crop) / side)``).
        crop_fraction: the crop's side as a fraction of the image's.
        geometry: ``"direct"``: bilinear samples of the box straight at the input size
            (``grid_sample``, corners aligned); ``"authors"``: Athalye et al.'s two steps,
            ``crop_and_resize`` of the box ``[sy, sx, sy + f, sx + f]`` (``f = float32(crop) /
            float32(side)``, ``crop = round(crop_fraction * side)``) to ``crop x crop`` pixels
            (``inputtransformations/defense.py: defend_crop``), then TF1's ``resize_bilinear``
            back to the input size (``inputtransformations/inceptionv3.py: _preprocess``). The
            two agree to within the resampling: "authors" passes the crop through a 90-pixel
            grid and its legacy resize shifts it by up to a crop pixel, so "direct" is the
            default and "authors" the paper profile's (it equals their outputs bit for bit).

    Example:
        >>> import torch
        >>> x = torch.rand(1, 3, 299, 299)
        >>> crop_rescale(x, torch.tensor([[0.2, 0.5]]), geometry="authors").shape
        torch.Size([1, 3, 299, 299])
    """
    check_images(x.detach(), "x")
    crop_fraction = check_float(crop_fraction, "crop_fraction", low=0.0, high=1.0, low_inclusive=False)
    check_choice(geometry, "geometry", CROP_GEOMETRIES)
    if not isinstance(starts, torch.Tensor) or tuple(starts.shape) != (x.shape[0], 2) or not starts.is_floating_point():
        raise ValueError(f"starts: expected ({x.shape[0]}, 2) floats, got {getattr(starts, 'shape', starts)}")
    starts = starts.to(x.device)
    if starts.numel() and not (bool(torch.isfinite(starts).all()) and float(starts.min()) >= 0.0
                               and float(starts.max()) <= 1.0 - crop_fraction + 1e-6):
        raise ValueError(f"starts: expected values in [0, 1 - crop_fraction] = [0, {1.0 - crop_fraction:.6g}]")
    if geometry == "authors":
        return _crop_rescale_authors(x, starts.to(torch.float32), crop_fraction)
    return _crop_rescale_direct(x, starts.to(x.dtype), crop_fraction)


def _crop_rescale_direct(x: torch.Tensor, starts: torch.Tensor, crop_fraction: float) -> torch.Tensor:
    n, _, height, width = x.shape
    # Normalised coordinates in [-1, 1] (align_corners=True: -1 and 1 are the corner pixels'
    # centres, as crop_and_resize's box corners). The crop spans ``f`` of the side.
    scale = crop_fraction
    centre = starts * 2.0 - (1.0 - scale)  # crop centre of a box starting at `starts`
    theta = torch.zeros((n, 2, 3), dtype=x.dtype, device=x.device)
    theta[:, 0, 0] = scale
    theta[:, 1, 1] = scale
    theta[:, 0, 2] = centre[:, 1]
    theta[:, 1, 2] = centre[:, 0]
    grid = F.affine_grid(theta, [n, x.shape[1], height, width], align_corners=True)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=True)


def _authors_crop_box(x: torch.Tensor, crop_fraction: float):
    """((crop_h, crop_w) pixels, the start fractions' upper bound (2,), the box sides (2,)), in
    defend_crop's float32 arithmetic: frac = crop / side, start_max = (side - crop) / side."""
    sides = torch.tensor([x.shape[2], x.shape[3]], dtype=torch.float32)
    crops = torch.tensor([max(1, round(crop_fraction * side)) for side in x.shape[2:]], dtype=torch.float32)
    return tuple(int(c) for c in crops), ((sides - crops) / sides).to(x.device), (crops / sides).to(x.device)


def _crop_rescale_authors(x: torch.Tensor, starts: torch.Tensor, crop_fraction: float) -> torch.Tensor:
    crop_size, _, box_sides = _authors_crop_box(x, crop_fraction)
    boxes = torch.cat([starts, starts + box_sides], dim=1)  # [y1, x1, y2, x2], float32 sums
    crops = _crop_and_resize(x.to(torch.float32), boxes, crop_size)
    return _resize_bilinear_tf1(crops, (x.shape[2], x.shape[3])).to(x.dtype)


class TVMinimization(InputTransform):
    """Random pixel dropout (keep ``keep_prob``) + masked total-variation minimisation with
    ``lambda_tv`` (Guo et al.: 0.5, 0.03). Random (the mask). ``sweep`` and ``border``: the
    solver's order and ghost ring, ``"red_black"``/``"skimage"`` by default; the paper profile
    runs Athalye et al.'s ``"raster"``/``"reflect"``. See :func:`obfgrad.ops.tv_op.tv_minimize`."""

    random = True

    def __init__(self, keep_prob: float = 0.5, lambda_tv: float = 0.03, *, bpda: bool = True,
                 backend: str = "native", seed: Optional[int] = None, generator: Optional[torch.Generator] = None,
                 sweep: str = "red_black", border: str = "skimage", tol: float = 1e-3, max_iter: int = 100):
        super().__init__(seed, generator)
        self.keep_prob = check_float(keep_prob, "keep_prob", low=0.0, high=1.0, low_inclusive=False)
        self.lambda_tv = check_float(lambda_tv, "lambda_tv", low=0.0, low_inclusive=False)
        self.tol = check_float(tol, "tol", low=0.0)
        self.max_iter = check_int(max_iter, "max_iter", low=1, high=tv_op.MAX_ITER)
        self.bpda = bool(bpda)
        self.backend = check_choice(backend, "backend", BACKENDS)
        self.sweep = check_choice(sweep, "sweep", tv_op.SWEEPS)
        self.border = check_choice(border, "border", tv_op.BORDERS)

    def transform(self, x: torch.Tensor, seed: int) -> torch.Tensor:
        options = {"seed": seed, "sweep": self.sweep, "border": self.border, "tol": self.tol,
                   "max_iter": self.max_iter}
        if self.backend == "native" and self.bpda:
            return tv_op.tv_minimize(x, self.keep_prob, self.lambda_tv, **options)
        if self.backend == "reference":
            fn = lambda v: tv_op.reference(v, self.keep_prob, self.lambda_tv, **options)  # noqa: E731
        else:
            fn = lambda v: tv_op.tv_minimize(v, self.keep_prob, self.lambda_tv, **options)  # noqa: E731
        return _straight_through(fn, x, self.bpda)

    def extra_repr(self) -> str:
        return (f"keep_prob={self.keep_prob}, lambda_tv={self.lambda_tv}, tol={self.tol}, max_iter={self.max_iter}, "
                f"sweep={self.sweep!r}, border={self.border!r}, bpda={self.bpda}, backend={self.backend!r}")


class ImageQuilting(InputTransform):
    """Image quilting from ``database`` (Guo et al.: 5x5 patches, overlap 2, K = 10 nearest
    neighbours, one picked at random). Random (the pick). ``stitch``: ``"min_cut"`` (default,
    the textbook boundary cut) or ``"authors"`` (Athalye et al.'s ``assign_block``; the paper
    profile's). See :func:`obfgrad.ops.quilt_op.quilt`."""

    random = True

    def __init__(self, database: Union[PatchDatabase, torch.Tensor], k: int = 10, overlap: int = 2, *,
                 bpda: bool = True, backend: str = "native", seed: Optional[int] = None,
                 generator: Optional[torch.Generator] = None, stitch: str = "min_cut"):
        super().__init__(seed, generator)
        # Checked now (the database once, k and overlap against it) rather than at the first call.
        if not isinstance(database, PatchDatabase):  # a PatchDatabase was checked when built or loaded
            database = quilt_op.check_database_tensor(database)
        self.database = database
        count, size = len(database), int(database.shape[2] if isinstance(database, torch.Tensor) else
                                          database.patch_size)
        self.stitch = check_choice(stitch, "stitch", quilt_op.STITCHES)
        self.k = check_int(k, "k", low=1, high=count)
        self.overlap = check_int(overlap, "overlap", low=2 if self.stitch == "authors" else 1, high=size - 1)
        self.bpda = bool(bpda)
        self.backend = check_choice(backend, "backend", BACKENDS)

    def transform(self, x: torch.Tensor, seed: int) -> torch.Tensor:
        options = {"k": self.k, "overlap": self.overlap, "seed": seed, "stitch": self.stitch}
        if self.backend == "native" and self.bpda:
            return quilt_op.quilt(x, self.database, **options)
        if self.backend == "reference":
            fn = lambda v: quilt_op.reference(v, self.database, **options)  # noqa: E731
        else:
            fn = lambda v: quilt_op.quilt(v, self.database, **options)  # noqa: E731
        return _straight_through(fn, x, self.bpda)

    def extra_repr(self) -> str:
        return (f"patches={len(self.database)}, k={self.k}, overlap={self.overlap}, stitch={self.stitch!r}, "
                f"bpda={self.bpda}, backend={self.backend!r}")


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
        for name, value in (("transform", transform), ("classifier", classifier)):
            if not callable(value):  # else the first call fails with "'int' object is not callable"
                raise TypeError(f"{name}: expected a callable (x -> tensor), got {type(value).__name__}")
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
