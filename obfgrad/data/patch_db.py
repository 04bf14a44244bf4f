"""The patch database of image quilting: random square crops of natural images (data the op
:func:`obfgrad.ops.quilt_op.quilt` searches; its file format, building, resizing and cache).

Guo et al. (ICLR 2018) quilt images from a database of 1,000,000 5x5 patches; Athalye et al.'s
``quilt_preprocess.py`` (obfuscated-gradients, ``inputtransformations/``) draws each from a
random ImageNet training image resized so its long side is 300 pixels. :func:`build_patch_database`
follows that recipe for any collection of images and any count (thousands for tests and the
smoke profile, 1,000,000 at paper scale).

Resizing rule (``recipe="uniform"``, the default). Every source image is resized (Pillow bicubic,
Pillow's default) so that its long side is ``long_side`` pixels (the short side rounded), keeping
the aspect ratio; ``long_side=None`` keeps the source resolution -- use it for small images
(CIFAR-10, Fashion-MNIST), where the defended images themselves are small and patches should
come at their scale. Every image is resized, so the patch scale is uniform. Images are drawn
with replacement. Grayscale images are repeated to three channels and alpha channels dropped, as
in the script.

``recipe="authors"`` is ``quilt_preprocess.py`` as Athalye et al. ran it (the paper profile's):
square images are left at their size; others get a long side of ``long_side`` and a short side
of ``int(ratio * long_side)`` (truncated), resampled with Pillow's *default filter of the time*,
nearest neighbour (Pillow < 7.0, January 2020; it is bicubic since), on the decoded 8-bit image
(:func:`authors_resize`); each patch comes from a different image (``random.sample`` of the
files), so ``count`` may not exceed the number of images; an image may be a file path, opened
only when drawn, so a paper-scale build from ImageNet's training files fits in memory.

File format: one ``.npy`` array plus a JSON sidecar.

* ``<name>.npy`` holds float32 patches of shape (N, C, P, P) in C order, **stored in search
  order**: a k-d tree order that makes every block of 480 consecutive patches compact along
  the native search's pruning directions (mean level, ramps, colour contrasts), so the exact
  k-NN search can skip whole blocks. Any order gives the same neighbours (as patches); this one
  gives speed. (Without the native extension the patches are sorted by norm instead.) ``.npy``
  is self-describing (dtype, shape, order) and any numpy reads it without obfgrad.
  Loading reads it into memory (a 1,000,000-patch file is 300 MB) rather than memory-mapping
  it: a mapped file rewritten or truncated by another process would silently change the
  verified database, or kill this one with SIGBUS.
* ``<name>.json`` records how it was built (format version, patch size, channels, count,
  seed, long side, source description) and a SHA-256 of the array's data bytes. Loading
  checks shape and dtype against it and, unless ``verify=False``, the checksum (about 1.4 s
  per GB; done once per file per process; a sidecar without one is refused); every database,
  built or loaded, must hold finite values in [0, 1]. A missing, truncated, corrupt or
  mismatched file raises :class:`PatchDatabaseError` saying what differs.

Files are written with :mod:`obfgrad.atomic` (array first, sidecar last), so a crash never
leaves a sidecar describing a partial array.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch

from obfgrad._checks import check_int
from obfgrad.atomic import atomic_write, atomic_write_json
from obfgrad.cache import cache_dir

__all__ = [
    "PatchDatabase",
    "PatchDatabaseError",
    "build_patch_database",
    "patch_database_from_array",
    "save_patch_database",
    "load_patch_database",
    "skimage_patch_database",
    "search_projections",
    "authors_resize",
    "RECIPES",
]

#: Database recipes: every image resized to the long side, bicubic ("uniform"), or Athalye et
#: al.'s quilt_preprocess.py ("authors").
RECIPES = ("uniform", "authors")
#: Pillow filters by name (``resample=``).
_FILTERS = ("nearest", "bilinear", "bicubic", "lanczos")

FORMAT_VERSION = 1
_HASH_CHUNK = 1 << 24

PathLike = Union[str, os.PathLike]


#: Largest patch side the quilting kernels take (OBF_QUILT_MAX_PATCH in quilt.h).
MAX_PATCH_SIZE = 16


class PatchDatabaseError(ValueError):
    """A patch database file is missing, corrupt, or not what the caller asked for."""


@dataclass
class PatchDatabase:
    """Patches (N, C, P, P) float32 in [0, 1] in search order, and how they were made.

    ``patches`` is made read-only. ``sq_norms`` are the rows' squared l2 norms
    (the search's pruning input), computed on load.
    """

    patches: np.ndarray
    meta: dict
    path: Optional[Path] = None
    sq_norms: np.ndarray = field(init=False, repr=False)
    _device_copies: dict = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        _validate_patches(self.patches)
        # The verified bytes are kept as they are: the ops never write to them, nor may a caller.
        self.patches.flags.writeable = False
        self.sq_norms = _sq_norms(self.flat())
        self._projections: Optional[np.ndarray] = None

    def projections(self) -> np.ndarray:
        """Coordinates along the native search's pruning directions (computed once)."""
        if self._projections is None:
            self._projections = search_projections(self.flat(), self.channels)
        return self._projections

    def __len__(self) -> int:
        return int(self.patches.shape[0])

    @property
    def patch_size(self) -> int:
        return int(self.patches.shape[2])

    @property
    def channels(self) -> int:
        return int(self.patches.shape[1])

    @property
    def dim(self) -> int:
        return self.channels * self.patch_size * self.patch_size

    def flat(self) -> np.ndarray:
        """The patches as an (N, C*P*P) view (channel-major rows, as the search uses them)."""
        return self.patches.reshape(self.patches.shape[0], -1)

    def on_device(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(flat patches, squared norms) as tensors on ``device``; GPU copies are cached."""
        device = torch.device(device)
        if device.type == "cpu":
            with warnings.catch_warnings():  # read-only patches: the ops never write to them
                warnings.simplefilter("ignore", UserWarning)
                return torch.from_numpy(np.asarray(self.flat())), torch.from_numpy(self.sq_norms)
        key = str(device)
        if key not in self._device_copies:
            flat = torch.from_numpy(np.ascontiguousarray(self.flat())).to(device)
            self._device_copies[key] = (flat, torch.from_numpy(self.sq_norms).to(device))
        return self._device_copies[key]


def _validate_patches(patches) -> None:
    """(N, C, P, P) float32, C in (1, 3), finite values in [0, 1]: checked once, when a database is
    built or loaded, so a database on the 0-255 scale or with NaN patches never reaches quilt()."""
    if not isinstance(patches, np.ndarray) or patches.dtype != np.float32 or patches.ndim != 4:
        got = f"{patches.dtype} {patches.shape}" if isinstance(patches, np.ndarray) else type(patches).__name__
        raise PatchDatabaseError(f"patches: expected a float32 (N, C, P, P) numpy array, got {got}")
    count, channels, height, width = patches.shape
    if count < 1 or height != width or channels not in (1, 3) or height < 2:
        raise PatchDatabaseError(f"patches: expected (N, C, P, P) with N >= 1, C in (1, 3) and P >= 2, "
                                 f"got {patches.shape}")
    flat = patches.reshape(count, -1)
    rows = max(1, _HASH_CHUNK // (4 * flat.shape[1]))
    for start in range(0, count, rows):  # in chunks: no full-size temporary for a 1M-patch file
        chunk = flat[start:start + rows]
        lo, hi = float(chunk.min()), float(chunk.max())  # NaN propagates through min and max
        if not (0.0 <= lo and hi <= 1.0):
            what = "NaN or Inf" if not (np.isfinite(lo) and np.isfinite(hi)) else f"values in [{lo:.6g}, {hi:.6g}]"
            raise PatchDatabaseError(f"patches: expected finite values in [0, 1] (images scaled to [0, 1], not "
                                     f"0-255), found {what} in patches {start}..{start + len(chunk) - 1}")


def _sq_norms(flat: np.ndarray) -> np.ndarray:
    from obfgrad._native import native

    flat = np.ascontiguousarray(flat, dtype=np.float32)
    out = np.empty(flat.shape[0], dtype=np.float32)
    module = native()
    if module is not None and flat.shape[0] > 0:
        module.quilt_sq_norms(flat, out)
    else:
        np.einsum("ij,ij->i", flat, flat, out=out)
    return out


def search_projections(flat: np.ndarray, channels: int) -> np.ndarray:
    """(N, m) coordinates of the rows along the native search's pruning directions
    (``quilt.cpp``: mean, ramps, colour contrasts, quadratic shapes); (N, 0) without ``_C``."""
    from obfgrad._native import native

    module = native()
    if module is None:
        return np.zeros((flat.shape[0], 0), dtype=np.float32)
    flat = np.ascontiguousarray(flat, dtype=np.float32)
    out = np.empty((flat.shape[0], module.quilt_num_projections(flat.shape[1], channels)), dtype=np.float32)
    module.quilt_projections(flat, channels, out)
    return out


def _storage_order(patches: np.ndarray) -> np.ndarray:
    """The order patches are stored in: compact 480-patch blocks in the search's projection
    space (a k-d tree order; see quilt_storage_order), or by squared norm without ``_C``."""
    from obfgrad._native import native

    flat = patches.reshape(patches.shape[0], -1)
    module = native()
    if module is None:
        return np.argsort(_sq_norms(flat), kind="stable")
    order = np.empty(flat.shape[0], dtype=np.int64)
    module.quilt_storage_order(search_projections(flat, patches.shape[1]), order)
    return order


# ------------------------------------------------------------------------------ building


def _to_hwc_float(image: Any, channels: int) -> np.ndarray:
    """An (H, W, C) float32 array in [0, 1] from a uint8/bool/float HxW, HxWxC or CxHxW image."""
    if isinstance(image, (str, bytes, os.PathLike)):
        raise TypeError(f"images: file paths ({image!r}) are read by recipe='authors' only; load them as arrays "
                        "for the uniform recipe")
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().numpy()
    array = np.asarray(image)
    if array.dtype == bool:
        array = array.astype(np.float32)
    elif array.dtype == np.uint8:
        array = array.astype(np.float32) / 255.0
    else:
        array = array.astype(np.float32)
    if array.ndim == 3 and array.shape[0] in (1, 3, 4) and array.shape[2] not in (1, 3, 4):
        array = np.transpose(array, (1, 2, 0))  # CHW -> HWC
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3:
        raise ValueError(f"images: expected HxW, HxWxC or CxHxW arrays, got shape {array.shape}")
    if array.shape[2] == 4:
        array = array[:, :, :3]  # drop alpha, as quilt_preprocess.py does
    if array.shape[2] == 1 and channels == 3:
        array = np.repeat(array, 3, axis=2)
    elif array.shape[2] == 3 and channels == 1:
        array = array.mean(axis=2, keepdims=True, dtype=np.float32)
    if not np.isfinite(array).all() or array.min() < 0 or array.max() > 1:
        raise ValueError("images: expected finite values in [0, 1] (or uint8)")
    return np.ascontiguousarray(array)


def _resize_long_side(image: np.ndarray, long_side: Optional[int]) -> np.ndarray:
    if long_side is None:
        return image
    from PIL import Image

    height, width = image.shape[:2]
    scale = long_side / max(height, width)
    size = (max(1, int(round(width * scale))), max(1, int(round(height * scale))))
    planes = [np.asarray(Image.fromarray(image[:, :, c], mode="F").resize(size, Image.BICUBIC))
              for c in range(image.shape[2])]
    return np.clip(np.stack(planes, axis=2), 0.0, 1.0).astype(np.float32)


def _pillow_filter(name: str):
    from PIL import Image

    if name not in _FILTERS:
        raise ValueError(f"resample: expected one of {', '.join(map(repr, _FILTERS))}, got {name!r}")
    return getattr(Image.Resampling, name.upper())


def authors_resize(image: Any, long_side: Optional[int] = 300, resample: str = "nearest") -> np.ndarray:
    """One source image as Athalye et al.'s ``quilt_preprocess.py: load_image`` prepares it,
    before the channel handling: square images unchanged; otherwise the long side becomes
    ``long_side`` and the short side ``int(short / long * long_side)`` (truncated), resampled
    with ``resample`` (their Pillow's default, nearest neighbour; ``"bicubic"`` is Pillow >= 7's).

    Args:
        image: a file path (opened with Pillow), or an HxW / HxWxC array or tensor; uint8 is
            resized as 8-bit (as their decoded JPEGs), floats channel by channel.
        long_side: the long side of non-square images; None keeps every size.
        resample: Pillow filter, ``"nearest"``, ``"bilinear"``, ``"bicubic"`` or ``"lanczos"``.

    Returns:
        The image as an array (uint8 stays uint8), HxW or HxWxC.
    """
    from PIL import Image

    resample_filter = _pillow_filter(resample)
    if long_side is not None:  # 0 or less once made every non-square image a single pixel
        check_int(long_side, "long_side", low=1)
    if isinstance(image, (str, os.PathLike)):
        with Image.open(image) as opened:
            pil = opened.convert("RGB") if opened.mode not in ("L", "RGB", "RGBA") else opened.copy()
        array = None
    else:
        array = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
        pil = Image.fromarray(array) if array.dtype == np.uint8 else None
    width, height = (pil.width, pil.height) if pil is not None else (array.shape[1], array.shape[0])
    if long_side is None or width == height:
        return np.asarray(pil) if pil is not None else array
    if height > width:
        size = (int(float(width) / height * long_side), long_side)
    else:
        size = (long_side, int(float(height) / width * long_side))
    size = (max(1, size[0]), max(1, size[1]))
    if pil is not None:
        return np.asarray(pil.resize(size, resample_filter))
    planes = array[:, :, None] if array.ndim == 2 else array
    resized = [np.asarray(Image.fromarray(np.ascontiguousarray(planes[:, :, c], dtype=np.float32), mode="F")
                          .resize(size, resample_filter)) for c in range(planes.shape[2])]
    return np.stack(resized, axis=2) if array.ndim == 3 else resized[0]


def _crops(image: np.ndarray, top: np.ndarray, left: np.ndarray, patch_size: int) -> np.ndarray:
    """(n, C, P, P) crops of an HxWxC image at the given top-left corners."""
    offsets = np.arange(patch_size)
    ys = (top[:, None] + offsets)[:, :, None]  # (n, P, 1)
    xs = (left[:, None] + offsets)[:, None, :]  # (n, 1, P)
    return np.transpose(image[ys, xs], (0, 3, 1, 2))


def _uniform_patches(images: Sequence[Any], count: int, patch_size: int, channels: int, long_side: Optional[int],
                     rng: np.random.Generator) -> tuple[np.ndarray, int]:
    prepared = [_resize_long_side(_to_hwc_float(image, channels), long_side) for image in images]
    prepared = [image for image in prepared if min(image.shape[:2]) >= patch_size]
    if not prepared:
        raise ValueError(f"images: expected at least one image of at least {patch_size}x{patch_size} pixels")
    which = rng.integers(0, len(prepared), size=count)
    patches = np.empty((count, channels, patch_size, patch_size), dtype=np.float32)
    for index, image in enumerate(prepared):
        rows = np.flatnonzero(which == index)
        if rows.size == 0:
            continue
        height, width = image.shape[:2]
        top = rng.integers(0, height - patch_size + 1, size=rows.size)
        left = rng.integers(0, width - patch_size + 1, size=rows.size)
        patches[rows] = _crops(image, top, left, patch_size)
    return patches, len(prepared)


def _authors_patches(images: Sequence[Any], count: int, patch_size: int, channels: int, long_side: Optional[int],
                     resample: str, rng: np.random.Generator) -> tuple[np.ndarray, int]:
    # quilt_preprocess.py: random.sample(files, SAMPLES), then one random crop of each file.
    if count > len(images):
        raise ValueError(f"count: the authors' recipe takes each patch from a different image; got {count} patches "
                         f"from {len(images)} images")
    patches = np.empty((count, channels, patch_size, patch_size), dtype=np.float32)
    for row, index in enumerate(rng.choice(len(images), size=count, replace=False)):
        image = _to_hwc_float(authors_resize(images[int(index)], long_side, resample), channels)
        height, width = image.shape[:2]
        if min(height, width) < patch_size:
            raise ValueError(f"images: image {int(index)} is {height}x{width} after resizing, smaller than a patch")
        top = rng.integers(0, height - patch_size + 1, size=1)
        left = rng.integers(0, width - patch_size + 1, size=1)
        patches[row] = _crops(image, top, left, patch_size)[0]
    return patches, len(images)


def build_patch_database(
    images: Sequence[Any],
    count: int,
    *,
    patch_size: int = 5,
    channels: int = 3,
    seed: int = 0,
    long_side: Optional[int] = 300,
    source: str = "",
    recipe: str = "uniform",
    resample: Optional[str] = None,
) -> PatchDatabase:
    """Sample ``count`` random ``patch_size`` crops from ``images``, as quilt_preprocess.py does.

    Each patch comes from an image drawn uniformly (with replacement; ``recipe="authors"``:
    each from a different image) and a uniformly random position in it, after the image is
    resized to ``long_side`` (see the module docstring).

    Args:
        images: arrays or tensors, HxW, HxWxC or CxHxW, uint8 or float in [0, 1]; with
            ``recipe="authors"`` also image file paths (HxW / HxWxC only).
        count: number of patches (>= 1).
        patch_size: side P of the square patches.
        channels: 3 (colour; grayscale repeated) or 1 (colour averaged).
        seed: seed of the numpy generator that draws images and positions.
        long_side: pixels of each image's long side after resizing; None keeps the size.
        source: free-text description stored with the database.
        recipe: ``"uniform"`` (default) or ``"authors"`` (Athalye et al.'s quilt_preprocess.py).
        resample: the resize filter (``"nearest"``, ``"bilinear"``, ``"bicubic"``,
            ``"lanczos"``); None: the recipe's, bicubic (uniform) or nearest (authors).

    Returns:
        An in-memory :class:`PatchDatabase`, in search order.
    """
    images = _check_build_arguments(images, count, patch_size, channels, seed, long_side)
    if recipe not in RECIPES:
        raise ValueError(f"recipe: expected one of {', '.join(map(repr, RECIPES))}, got {recipe!r}")
    resample = resample if resample is not None else ("nearest" if recipe == "authors" else "bicubic")
    _pillow_filter(resample)
    rng = np.random.default_rng(seed)
    if recipe == "authors":
        patches, used = _authors_patches(images, count, patch_size, channels, long_side, resample, rng)
    else:
        if resample != "bicubic":
            raise ValueError(f"resample: the uniform recipe resizes bicubic, got {resample!r}")
        patches, used = _uniform_patches(images, count, patch_size, channels, long_side, rng)
    return _in_search_order(patches, seed=seed, long_side=long_side, recipe=recipe, resample=resample,
                            source=source or f"{used} images", source_images=used)


def _in_search_order(patches: np.ndarray, **provenance: Any) -> PatchDatabase:
    """(N, C, P, P) float32 patches as a :class:`PatchDatabase`: sorted into the search's storage
    order, with the metadata every database carries (``provenance``: seed, source, ...)."""
    patches = patches[_storage_order(patches)]
    meta = {
        "format_version": FORMAT_VERSION,
        "patch_size": int(patches.shape[2]),
        "channels": int(patches.shape[1]),
        "count": int(patches.shape[0]),
        **provenance,
        "order": "k-d blocks of 480 in the search's projection space" if _native_loaded() else "ascending squared norm",
        "dtype": "float32",
        "shape": list(patches.shape),
    }
    meta["sha256"] = _checksum(patches)
    return PatchDatabase(patches, meta)


def _check_build_arguments(images, count, patch_size, channels, seed, long_side) -> Sequence[Any]:
    """build_patch_database's arguments, checked before any image is read; returns ``images``."""
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"count: expected a positive int, got {count!r}")
    if isinstance(patch_size, bool) or not isinstance(patch_size, int) or not 2 <= patch_size <= MAX_PATCH_SIZE:
        raise ValueError(f"patch_size: expected an int in [2, {MAX_PATCH_SIZE}] (what quilt() takes), got "
                         f"{patch_size!r}")
    if channels not in (1, 3):
        raise ValueError(f"channels: expected 1 or 3, got {channels!r}")
    check_int(seed, "seed", low=0)
    if long_side is not None:
        check_int(long_side, "long_side", low=patch_size)
    # One image is not a list of images: iterating an (H, W, C) array would quilt its rows as
    # (W, C) "images", silently. A stack (N, H, W[, C]) or a list is what is meant.
    if isinstance(images, (str, bytes, os.PathLike)) or not hasattr(images, "__len__"):
        raise TypeError(f"images: expected a sequence of images (a list, or an (N, H, W[, C]) stack), got "
                        f"{type(images).__name__}")
    if isinstance(images, (np.ndarray, torch.Tensor)) and (images.ndim < 3 or (images.ndim == 3 and
                                                                              images.shape[-1] in (1, 3, 4))):
        raise ValueError(f"images: got one {tuple(images.shape)} array, expected a sequence of images: pass a list "
                         "([image]) or an (N, H, W[, C]) stack")
    return images


def patch_database_from_array(patches: np.ndarray, *, layout: str = "NCHW", source: str = "") -> PatchDatabase:
    """Wrap existing patches, e.g. Athalye et al.'s released ``quilt_db.npy`` ((1000000, 5, 5, 3),
    ``layout="NHWC"``), as a :class:`PatchDatabase` in search order (saved with
    :func:`save_patch_database`)."""
    if layout not in ("NCHW", "NHWC"):
        raise ValueError(f"layout: expected 'NCHW' or 'NHWC', got {layout!r}")
    array = np.asarray(patches, dtype=np.float32)
    if array.ndim != 4:
        raise ValueError(f"patches: expected a 4-D array, got shape {array.shape}")
    if layout == "NHWC":
        array = np.transpose(array, (0, 3, 1, 2))
    if array.shape[0] < 1 or array.shape[2] != array.shape[3] or array.shape[1] not in (1, 3):
        raise ValueError(f"patches: expected (N, C, P, P) with C in (1, 3), got {array.shape} ({layout})")
    if not np.isfinite(array).all() or array.min() < 0 or array.max() > 1:
        raise ValueError("patches: expected finite values in [0, 1]")
    return _in_search_order(np.ascontiguousarray(array), seed=None, long_side=None,
                            source=source or "imported array", source_images=None)


def _native_loaded() -> bool:
    from obfgrad._native import native

    return native() is not None


def _checksum(patches: np.ndarray) -> str:
    digest = hashlib.sha256()
    flat = np.ascontiguousarray(patches).reshape(-1).view(np.uint8)
    for start in range(0, flat.size, _HASH_CHUNK):
        digest.update(flat[start:start + _HASH_CHUNK])
    return digest.hexdigest()


# ------------------------------------------------------------------------- files


def _sidecar(path: Path) -> Path:
    return path.with_suffix(".json")


def save_patch_database(database: PatchDatabase, path: PathLike) -> Path:
    """Write ``database`` to ``path`` (``.npy``) and its sidecar (``.json``), atomically."""
    path = Path(path)
    if path.suffix != ".npy":
        raise ValueError(f"path: expected a .npy file name, got {path}")
    patches = np.ascontiguousarray(database.patches, dtype=np.float32)
    atomic_write(path, lambda handle: np.save(handle, patches, allow_pickle=False))
    atomic_write_json(_sidecar(path), database.meta)
    database.path = path
    return path


_verified: dict[tuple[str, int, int], str] = {}
_verified_lock = threading.Lock()


def load_patch_database(
    path: PathLike,
    *,
    verify: bool = True,
    patch_size: Optional[int] = None,
    channels: Optional[int] = None,
) -> PatchDatabase:
    """Read a database written by :func:`save_patch_database`.

    The array is read into memory, not memory-mapped: a mapped file that is rewritten or
    truncated after loading would change a verified database under the process, or kill it
    with SIGBUS on the next access. The bytes checked against the sidecar's SHA-256 are the
    bytes the ops use.

    Args:
        path: the ``.npy`` file (its ``.json`` sidecar must sit beside it).
        verify: check the SHA-256 of the data (once per file version per process).
        patch_size, channels: when given, the database must have them.

    Raises:
        PatchDatabaseError: the file or sidecar is missing, unreadable, inconsistent with the
            sidecar, fails the checksum, holds values outside [0, 1], or has the wrong patch
            size or channels.
    """
    path = Path(path)
    if not path.is_file():
        raise PatchDatabaseError(f"path: no patch database at {path}")
    meta = _read_sidecar(path)
    expected_shape = (meta["count"], meta["channels"], meta["patch_size"], meta["patch_size"])
    if patch_size is not None and meta["patch_size"] != patch_size:
        raise PatchDatabaseError(f"path: database has {meta['patch_size']}x{meta['patch_size']} patches, "
                                 f"expected {patch_size}x{patch_size}")
    if channels is not None and meta["channels"] != channels:
        raise PatchDatabaseError(f"path: database has {meta['channels']} channels, expected {channels}")
    stat = path.stat()
    try:
        patches = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise PatchDatabaseError(f"path: {path} is not a readable .npy array ({exc}); delete it and its "
                                 f"sidecar {_sidecar(path).name} to rebuild") from None
    if patches.dtype != np.float32 or patches.shape != expected_shape:
        raise PatchDatabaseError(
            f"path: {path} holds {patches.dtype} {patches.shape}, but its sidecar describes "
            f"float32 {expected_shape} (mismatched or corrupt file)")
    if verify:
        key = (str(path.resolve()), stat.st_ino, stat.st_size, stat.st_mtime_ns)
        with _verified_lock:
            known = _verified.get(key)
        if known != meta["sha256"]:
            actual = _checksum(patches)
            if actual != meta["sha256"]:
                raise PatchDatabaseError(f"path: {path} fails its checksum (corrupt file): sha256 {actual}, "
                                         f"sidecar says {meta['sha256']}; delete both files to rebuild")
            with _verified_lock:
                _verified[key] = actual
    return PatchDatabase(np.ascontiguousarray(patches), meta, path)


def _read_sidecar(path: Path) -> dict:
    """The sidecar of ``path``, with the fields loading relies on checked (a sidecar without a
    checksum would let any array through unverified)."""
    sidecar = _sidecar(path)
    try:
        meta = json.loads(sidecar.read_text())
    except FileNotFoundError:
        raise PatchDatabaseError(f"path: {path} has no sidecar {sidecar.name} (incomplete write?)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PatchDatabaseError(f"path: sidecar {sidecar} is not valid JSON ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format_version") != FORMAT_VERSION:
        version = meta.get("format_version") if isinstance(meta, dict) else None
        raise PatchDatabaseError(f"path: {sidecar} has format version {version!r}, expected {FORMAT_VERSION}")
    for name in ("count", "channels", "patch_size"):
        value = meta.get(name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise PatchDatabaseError(f"path: sidecar {sidecar} has no valid {name!r} (got {value!r})")
    digest = meta.get("sha256")
    if not isinstance(digest, str) or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise PatchDatabaseError(f"path: sidecar {sidecar} has no valid 'sha256' (got {digest!r}): the database "
                                 "cannot be verified; rebuild it with save_patch_database")
    return meta


# ----------------------------------------------------------------- bundled images

# scikit-image's bundled natural photographs (no download needed); "astronaut" and "coffee"
# are left out so benchmarks can query with images the database has not seen.
SKIMAGE_SOURCES = ("brick", "camera", "chelsea", "clock", "coins", "grass", "gravel", "hubble_deep_field",
                   "immunohistochemistry", "moon", "page", "retina", "rocket", "text", "colorwheel")


def skimage_patch_database(count: int, *, patch_size: int = 5, seed: int = 0,
                           long_side: Optional[int] = 300, verify: bool = True) -> PatchDatabase:
    """A database from scikit-image's bundled photographs, built once and cached under
    ``quilt/`` of :func:`obfgrad.cache.cache_dir` (keyed by its build parameters)."""
    import skimage.data

    order = "kd" if _native_loaded() else "norm"
    name = f"skimage-p{patch_size}-n{count}-s{seed}-l{long_side}-{order}.npy"
    path = cache_dir() / "quilt" / name
    if path.is_file() and _sidecar(path).is_file():
        return load_patch_database(path, verify=verify, patch_size=patch_size, channels=3)
    images = [getattr(skimage.data, n)() for n in SKIMAGE_SOURCES]
    database = build_patch_database(images, count, patch_size=patch_size, seed=seed, long_side=long_side,
                                    source="scikit-image data: " + ", ".join(SKIMAGE_SOURCES))
    try:
        save_patch_database(database, path)
    except OSError as error:  # a read-only cache must not throw the built database away
        warnings.warn(f"could not cache the patch database at {path} ({error.strerror or error}); using it "
                      "from memory", RuntimeWarning, stacklevel=2)
    return database
