"""Image quilting (Guo et al., ICLR 2018), with the identity as its BPDA backward.

Row 3 of Table 1 (Athalye, Carlini & Wagner, ICML 2018): every 5x5 patch of the image, taken
with stride 3 (overlap 2), is replaced by one of its K = 10 nearest neighbours (l2) in a
database of natural-image patches, picked uniformly at random, and the chosen patches are
stitched in raster order along minimum-error boundary cuts (Efros & Freeman, SIGGRAPH 2001).

Definitions that make the op exact and reproducible:

* Patches are channel-major vectors (C, P, P) of length D = C*P*P.
* Distance: the canonical squared l2 distance of ``quilt.h`` (``quilt_distance``): eight
  interleaved float32 partial sums, combined by a fixed tree. Neighbours are ordered by
  (distance, database index): ties go to the smaller index. The native search is exact under
  this distance (its fast filter only proposes candidates), so CPU, GPU and :func:`reference`
  return identical neighbours.
* Pick: neighbour ``floor(u * K)`` of the sorted list, with ``u = philox_uniform(seed, n, p)``
  for image ``n`` of the batch (its position) and patch ``p`` (raster index): a uniform choice
  among the K, like the paper's ``np.random.choice`` over TF's ``top_k``, but replayable.
* Stitching: patch (i, j) overwrites the image except, in its left overlap (j > 0), the
  pixels left of the minimum vertical cut through the squared-error strip and, in its top
  overlap (i > 0), the pixels above the minimum horizontal cut; in the corner the patch keeps a
  pixel only if it is on its side of both cuts. The overlap error is summed over channels.
  (Athalye et al.'s ``assign_block`` glues the two cuts on the diagonal instead; Guo et al.'s
  code uses a graph cut. Both are "minimum-error boundary cuts"; this one is the textbook
  DP of Efros & Freeman.) This is ``stitch="min_cut"``, the default.
* ``stitch="authors"``: what Athalye et al.'s ``make_defend_quilt``
  (``inputtransformations/defense.py``) actually does, the paper profile's variant. Their
  "minimum error table" adds to each entry only the smallest *raw* error of its neighbours one
  step on (not a cumulative cost), their "index exists" test treats index 0 as missing (so a
  seam never returns to offset 0), and interior blocks measure their overlap errors against
  the canvas's first block row and column instead of their own position. With 5x5 patches and
  overlap 2 the seam collapses to one decision per block: a block writes its 4x4 bottom-right
  part, plus (first row/column) its top-left pixel or (interior) its three top-left pixels when
  that is cheaper. It reproduces their outputs bit for bit (``tests/test_authors_golden.py``).
  The textbook cut stays the default: it follows each block's actual seam. ``stitch="paste"``
  writes whole patches in raster order (their ``graphcut=False``).
* Choices from outside: ``choices=`` gives the database row of every block (skipping the search
  and the pick), e.g. to replay the authors' draws.
* Sizes: the patches tile an image of size P + n*(P - overlap) exactly (299 = 5 + 98*3).
  Other sizes are padded at the bottom/right by edge replication to the next such size,
  quilted, and cropped back, so every output pixel comes from some patch.
"""

from __future__ import annotations

import math
from typing import Optional, Union

import numpy as np
import torch

from obfgrad import _native
from obfgrad._checks import (
    check_choice,
    check_float32_images,
    check_generator,
    check_images,
    check_int,
)
from obfgrad.data.patch_db import MAX_PATCH_SIZE, PatchDatabase, search_projections

__all__ = ["quilt", "reference", "knn_reference", "philox_uniform_reference", "MAX_PATCH_SIZE", "STITCHES"]

_SEED_BOUND = 2**63 - 1
#: Stitching rules, in the order of QuiltStitch in quilt.h: the textbook minimum-error boundary
#: cut, Athalye et al.'s assign_block, whole patches pasted in raster order.
STITCHES = ("min_cut", "authors", "paste")

DatabaseLike = Union[PatchDatabase, torch.Tensor, np.ndarray]


# ------------------------------------------------------------------------ validation


def check_database_tensor(database) -> torch.Tensor:
    """A patch database given as an array: a non-empty (N, C, P, P) float32 tensor (or numpy
    array) of finite patches in [0, 1] with P >= 2, returned as a tensor."""
    if isinstance(database, np.ndarray):
        database = torch.from_numpy(database)
    if not isinstance(database, torch.Tensor):
        raise TypeError(f"database: expected a PatchDatabase or an (N, C, P, P) tensor, got {type(database).__name__}")
    if database.dim() != 4 or database.shape[2] != database.shape[3] or database.shape[0] < 1:
        raise ValueError(f"database: expected a non-empty (N, C, P, P) tensor, got shape {tuple(database.shape)}")
    if database.dtype != torch.float32:
        raise TypeError(f"database: expected float32, got {database.dtype}")
    if database.shape[2] < 2:
        raise ValueError(f"database: {database.shape[2]}x{database.shape[3]} patches are too small to quilt "
                         "(adjacent patches overlap by 1 <= overlap < P, so P >= 2)")
    lo, hi = (float(v) for v in torch.aminmax(database.detach()))
    if not (0.0 <= lo and hi <= 1.0):  # NaN propagates through aminmax and fails both comparisons
        what = "NaN or Inf" if not (math.isfinite(lo) and math.isfinite(hi)) else f"values in [{lo:.6g}, {hi:.6g}]"
        raise ValueError(f"database: expected finite patches in [0, 1] (the images' scale, not 0-255), found {what}")
    return database


def _database_tensors(database: DatabaseLike, device: torch.device):
    """(flat (N, D) float32, squared norms (N,), search projections (N, m), channels, patch
    size); the projections only for CPU searches (else (N, 0))."""
    if isinstance(database, PatchDatabase):
        flat, sq = database.on_device(device)
        proj = database.projections() if device.type == "cpu" else np.zeros((len(database), 0), np.float32)
        return flat, sq, torch.from_numpy(proj), database.channels, database.patch_size
    database = check_database_tensor(database)
    flat = database.reshape(database.shape[0], -1).to(device).contiguous()
    channels = int(database.shape[1])
    if device.type == "cpu":
        proj = torch.from_numpy(search_projections(flat.numpy(), channels))
    else:
        proj = torch.zeros((flat.shape[0], 0))
    return flat, (flat * flat).sum(1), proj, channels, int(database.shape[2])


def _draw_seed(seed: Optional[int], generator: Optional[torch.Generator]) -> int:
    check_generator(generator)
    if seed is None:
        return int(torch.randint(0, _SEED_BOUND, (), generator=generator))
    if generator is not None:  # the generator would be silently ignored
        raise ValueError("generator: give either seed or generator, not both")
    return check_int(seed, "seed", low=0, high=_SEED_BOUND - 1)


def _tiled_size(extent: int, size: int, stride: int) -> int:
    """Smallest size + n * stride >= extent."""
    if extent <= size:
        return size
    return size + -(-(extent - size) // stride) * stride


# ------------------------------------------------------------------------ the op


def quilt(x: torch.Tensor, database: DatabaseLike, *, k: int = 10, overlap: int = 2, patch_size: Optional[int] = None,
          seed: Optional[int] = None, generator: Optional[torch.Generator] = None, stitch: str = "min_cut",
          choices: Optional[torch.Tensor] = None) -> torch.Tensor:
    r"""Quilt each image from its patches' nearest neighbours in ``database``.

    For each patch position :math:`p` (stride :math:`P - \text{overlap}`) the op finds the
    :math:`K` database patches :math:`d` minimising :math:`\|x_p - d\|_2^2`, takes one of
    them uniformly at random, and stitches the chosen patches in raster order along
    minimum-error boundary cuts. The backward is the identity (BPDA, as in Athalye et al.).

    Args:
        x: float32 images in [0, 1], NCHW.
        database: a :class:`~obfgrad.data.patch_db.PatchDatabase` or an (N, C, P, P) float32
            tensor of patches with C equal to the images' channels.
        k: neighbours to pick from (paper: 10), 1 <= k <= N.
        overlap: pixels shared by adjacent patches (paper: 2), 1 <= overlap < P.
        patch_size: when given, the database's patch side P must equal it (paper: 5).
        seed: key of the random pick (same seed -> same output on CPU and GPU); drawn from
            ``generator`` (or torch's default generator) when None.
        generator: torch generator used to draw the seed.
        stitch: ``"min_cut"`` (default, Efros & Freeman's boundary cut), ``"authors"`` (Athalye
            et al.'s ``assign_block``, overlap >= 2; the paper profile's) or ``"paste"``.
        choices: the database row of every block given from outside instead of the search and
            the pick: (B, rows * cols) integers, blocks in raster order (rows and cols of the
            padded size); rows index ``database`` as passed (a :class:`PatchDatabase` in its
            stored order). ``seed`` and ``generator`` must then be None.

    Shape:
        x: (B, C, H, W) -> (B, C, H, W). Sizes that the patches do not tile exactly are
        edge-padded at the bottom/right, quilted, and cropped back.

    Example:
        >>> import torch
        >>> db = torch.rand(500, 3, 5, 5)
        >>> x = torch.rand(2, 3, 32, 32, requires_grad=True)
        >>> y = quilt(x, db, k=10, seed=0)
        >>> y.shape
        torch.Size([2, 3, 32, 32])
        >>> bool(torch.equal(y, quilt(x, db, k=10, seed=0)))
        True
        >>> y.sum().backward()  # BPDA: identity
        >>> bool(torch.equal(x.grad, torch.ones_like(x)))
        True

    Paper: C. Guo, M. Rana, M. Cisse, L. van der Maaten, "Countering Adversarial Images using
    Input Transformations", ICLR 2018; broken with BPDA in Athalye et al., ICML 2018 (row 3).
    """
    flat, sq, proj, size = _checked_images_and_database(x, database, patch_size)
    check_int(k, "k", low=1, high=int(flat.shape[0]))
    check_int(overlap, "overlap", low=2 if stitch == "authors" else 1, high=size - 1)
    stitch_code = STITCHES.index(check_choice(stitch, "stitch", STITCHES))
    choices, seed = _choices_or_seed(choices, seed, generator, x, size, overlap, int(flat.shape[0]))
    if x.numel() == 0:
        return x.clone()
    return _quilt_op(x, flat, sq, proj, size, k, overlap, seed, stitch_code, choices)


def _choices_or_seed(choices, seed: Optional[int], generator: Optional[torch.Generator], x: torch.Tensor, size: int,
                     overlap: int, patches: int):
    """(the given block choices as the kernels take them, seed 0), or (None, the seed given or drawn)."""
    if choices is None:
        return None, _draw_seed(seed, generator)
    if seed is not None or generator is not None:
        raise ValueError("choices: give either choices or seed/generator, not both")
    return _checked_choices(choices, x, size, overlap, patches), 0


def _checked_images_and_database(x, database: DatabaseLike, patch_size: Optional[int]):
    """quilt's images and database, checked against each other: the database's (flat (N, D) on
    x's device, squared norms, search projections, patch size)."""
    check_images(x.detach() if isinstance(x, torch.Tensor) else x, "x", in_unit_range=True)
    if x.dtype != torch.float32:
        raise TypeError(f"x: expected float32 images, got {x.dtype}")
    flat, sq, proj, channels, size = _database_tensors(database, x.device)
    if channels != x.shape[1]:
        raise ValueError(f"database: has {channels}-channel patches, but x has {x.shape[1]} channels")
    if size > MAX_PATCH_SIZE:
        raise ValueError(f"database: patch size {size} exceeds the supported maximum {MAX_PATCH_SIZE}")
    if x.device.type == "cuda" and channels * size * size > CUDA_MAX_PATCH_DIM:
        raise ValueError(f"database: {channels}x{size}x{size} patches exceed the GPU search's "
                         f"{CUDA_MAX_PATCH_DIM} values")
    if patch_size is not None and check_int(patch_size, "patch_size", low=2) != size:
        raise ValueError(f"database: has {size}x{size} patches, expected patch_size={patch_size}")
    return flat, sq, proj, size


def _checked_choices(choices, x: torch.Tensor, size: int, overlap: int, patches: int) -> torch.Tensor:
    """Given block choices as the kernels take them: (B, blocks, 1) int64, contiguous, on x's device."""
    stride = size - overlap
    blocks = ((_tiled_size(x.shape[2], size, stride) - size) // stride + 1) * \
        ((_tiled_size(x.shape[3], size, stride) - size) // stride + 1)
    if not isinstance(choices, torch.Tensor) or choices.is_floating_point() or choices.dtype == torch.bool:
        raise TypeError(f"choices: expected an integer tensor, got {getattr(choices, 'dtype', type(choices).__name__)}")
    if tuple(choices.shape) != (x.shape[0], blocks):
        raise ValueError(f"choices: expected shape ({x.shape[0]}, {blocks}), got {tuple(choices.shape)}")
    if choices.numel() and (int(choices.min()) < 0 or int(choices.max()) >= patches):
        raise ValueError(f"choices: expected database rows in [0, {patches}), got [{int(choices.min())}, "
                         f"{int(choices.max())}]")
    return choices.to(device=x.device, dtype=torch.int64).reshape(x.shape[0], blocks, 1).contiguous()


def _check_op_arguments(x, database, size, k, overlap, seed, stitch, choices=None) -> None:
    # The registered op is callable directly (torch.ops.obfgrad.quilt): check what the kernels
    # rely on (the public quilt has checked all of it already).
    check_float32_images(x, "x")
    check_int(size, "size", low=2, high=MAX_PATCH_SIZE)
    if database.dim() != 2 or database.shape[1] != x.shape[1] * size * size or database.shape[0] < 1:
        raise ValueError(f"database: expected (N, {x.shape[1] * size * size}) flat patches, "
                         f"got {tuple(database.shape)}")
    if database.dtype != torch.float32 or database.device != x.device:
        raise ValueError(f"database: expected float32 on {x.device}, got {database.dtype} on {database.device}")
    check_int(k, "k", low=1, high=int(database.shape[0]))
    check_int(overlap, "overlap", low=1, high=size - 1)
    check_int(seed, "seed", low=0, high=_SEED_BOUND - 1)
    check_int(stitch, "stitch", low=0, high=len(STITCHES) - 1)
    if choices is not None:
        _check_op_choices(choices, x, size, overlap)


def _check_op_choices(choices: torch.Tensor, x: torch.Tensor, size: int, overlap: int) -> None:
    # The GPU stitch reads the rows as int64 without a bounds check: a wrong dtype, shape or
    # device would read garbage or outside the buffer. (Values are checked by _checked_rows.)
    stride = size - overlap
    blocks = ((_tiled_size(x.shape[2], size, stride) - size) // stride + 1) * \
        ((_tiled_size(x.shape[3], size, stride) - size) // stride + 1)
    if choices.dtype != torch.int64:
        raise TypeError(f"choices: the registered op takes int64 database rows, got {choices.dtype}")
    if choices.dim() != 3 or tuple(choices.shape[:2]) != (x.shape[0], blocks) or choices.shape[2] < 1:
        raise ValueError(f"choices: expected shape ({x.shape[0]}, {blocks}, K >= 1), got {tuple(choices.shape)}")
    if choices.device != x.device:
        raise ValueError(f"choices: expected them on {x.device}, got {choices.device}")


def _checked_rows(index: torch.Tensor, patches: int, given: bool) -> torch.Tensor:
    """Neighbour rows (given, or found by the search) inside the database, before a kernel reads
    them: the GPU stitch has no bounds check, and a search over NaN distances finds no row."""
    if index.numel():
        lo, hi = (int(v) for v in torch.aminmax(index))
        if lo < 0 or hi >= patches:
            if given:
                raise ValueError(f"choices: expected database rows in [0, {patches}), got [{lo}, {hi}]")
            raise ValueError("database: the search found no neighbour for some patches: the database or its "
                             "squared norms hold NaN or Inf")
    return index.contiguous()


@torch.library.custom_op("obfgrad::quilt", mutates_args=())
def _quilt_op(x: torch.Tensor, database: torch.Tensor, database_sq_norms: torch.Tensor,
              database_projections: torch.Tensor, size: int, k: int, overlap: int, seed: int, stitch: int = 0,
              choices: Optional[torch.Tensor] = None) -> torch.Tensor:
    _check_op_arguments(x, database, size, k, overlap, seed, stitch, choices)
    if choices is not None:
        choices = _checked_rows(choices, int(database.shape[0]), given=True)
    database = database.contiguous()  # the GPU kernels index dense rows
    stride = size - overlap
    height, width = x.shape[2], x.shape[3]
    padded_h, padded_w = _tiled_size(height, size, stride), _tiled_size(width, size, stride)
    xp = x.contiguous()
    if (padded_h, padded_w) != (height, width):
        xp = torch.nn.functional.pad(xp, (0, padded_w - width, 0, padded_h - height), mode="replicate")
    backend = _native.choose_backend("quilt", x.device)
    if backend == "cuda":
        queries = None if choices is not None else _extract_patches(xp, size, stride)
        out = _quilt_cuda(xp, queries, database, size, k, overlap, seed, stitch, choices)
    elif backend == "native":
        module = _native.native()
        index = choices if choices is not None else _knn_cpu(module, _extract_patches(xp, size, stride), database,
                                                             database_sq_norms, database_projections, xp.shape[1], k)
        out = torch.empty_like(xp)
        module.quilt_assemble(database.detach().numpy(), index.reshape(xp.shape[0], -1, index.shape[-1]).numpy(),
                              seed, out.numpy(), size, overlap, stitch)
    else:
        out = _quilt_reference_padded(xp, database.reshape(database.shape[0], x.shape[1], size, size), k, overlap,
                                      seed, STITCHES[stitch], choices)
    return out[:, :, :height, :width].contiguous()


@_quilt_op.register_fake
def _(x, database, database_sq_norms, database_projections, size, k, overlap, seed, stitch=0, choices=None):
    _check_op_arguments(x, database, size, k, overlap, seed, stitch, choices)
    return x.new_empty(x.shape)


def _quilt_backward(ctx, grad):
    # BPDA with the identity (Athalye et al. section 4.1; the paper's choice for quilting).
    return grad, None, None, None, None, None, None, None, None, None


_quilt_op.register_autograd(_quilt_backward)


def _extract_patches(x: torch.Tensor, size: int, stride: int) -> torch.Tensor:
    """(B*rows*cols, C*P*P) channel-major patches in raster order of an exactly tiled batch."""
    batch, channels = x.shape[:2]
    patches = x.unfold(2, size, stride).unfold(3, size, stride)  # B, C, rows, cols, P, P
    return patches.permute(0, 2, 3, 1, 4, 5).reshape(-1, channels * size * size).contiguous()


def _knn_cpu(module, queries, database, database_sq_norms, database_projections, channels, k) -> torch.Tensor:
    """(Q, k) int64 neighbour indices of the queries (the native exact search)."""
    index = np.empty((queries.shape[0], k), dtype=np.int64)
    dist = np.empty((queries.shape[0], k), dtype=np.float32)
    module.quilt_knn(queries.detach().numpy(), database.detach().numpy(), database_sq_norms.detach().numpy(),
                     database_projections.detach().numpy(), channels, k, index, dist)
    return _checked_rows(torch.from_numpy(index), int(database.shape[0]), given=False)


# The tiled k-NN kernel's constants (csrc/cuda/quilt.cu): threads (queries) per block, rows
# scored together, shared-memory floats per tile.
_KNN_QUERIES, _KNN_ROWS, _KNN_TILE_FLOATS = 128, 8, 8192
#: Longest patch vector (C*P*P) the GPU search takes: a tile must hold OBF_KNN_ROWS rows.
CUDA_MAX_PATCH_DIM = _KNN_TILE_FLOATS // _KNN_ROWS
_KNN_BLOCKS_PER_MULTIPROCESSOR = 8  # enough blocks to fill the GPU when the queries are few


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _knn_splits(num_queries: int, num_db: int, dim: int, multiprocessors: int) -> tuple[int, int]:
    """(splits, rows_per_split): the database is cut into splits of whole tiles so that
    query blocks x splits fill ``multiprocessors`` several times over."""
    tile_rows = _KNN_TILE_FLOATS // dim // _KNN_ROWS * _KNN_ROWS
    wanted = _ceil_div(_KNN_BLOCKS_PER_MULTIPROCESSOR * multiprocessors, _ceil_div(num_queries, _KNN_QUERIES))
    splits = max(1, min(wanted, _ceil_div(num_db, tile_rows)))
    rows_per_split = _ceil_div(_ceil_div(num_db, splits), tile_rows) * tile_rows
    return _ceil_div(num_db, rows_per_split), rows_per_split


def _multiprocessors(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 2  # a CPU device: the host emulation of the CUDA driver in the tests


def _knn_cuda(queries: torch.Tensor, database: torch.Tensor, k: int, *,
              multiprocessors: Optional[int] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact (index (Q, k) int64, distance (Q, k)) with the CUDA driver's tiled search and merge."""
    num_queries, dim = queries.shape
    num_db = int(database.shape[0])
    if dim > CUDA_MAX_PATCH_DIM:
        raise ValueError(f"database: patches of {dim} values exceed the GPU search's maximum {CUDA_MAX_PATCH_DIM}")
    device = queries.device
    splits, rows_per_split = _knn_splits(num_queries, num_db, dim,
                                         multiprocessors or _multiprocessors(device))
    index = torch.empty((num_queries, k), dtype=torch.int64, device=device)
    dist = torch.empty((num_queries, k), dtype=torch.float32, device=device)
    part_index, part_dist = index, dist
    if splits > 1:
        part_index = torch.empty((num_queries, splits, k), dtype=torch.int64, device=device)
        part_dist = torch.empty((num_queries, splits, k), dtype=torch.float32, device=device)
    grid = (-(-num_queries // _KNN_QUERIES), splits)
    _native.launch_cuda_grid("quilt", "quilt_knn_tiled_kernel", grid, _KNN_QUERIES,
                             (queries.t().contiguous(), database, num_queries, num_db, dim, k, rows_per_split,
                              part_index, part_dist), device=device)
    if splits > 1:
        _native.launch_cuda("quilt", "quilt_knn_merge_kernel", num_queries,
                            (part_index, part_dist, num_queries, splits, k, index, dist), device=device)
    return index, dist


def _assemble_cuda(xp, database, index, size, overlap, seed, stitch):
    """Stitch on the GPU from (B, blocks, K) neighbour indices (K = 1: given choices)."""
    out = torch.empty_like(xp)
    batch, channels, height, width = xp.shape
    _native.launch_cuda("quilt", "quilt_assemble_kernel", batch,
                        (out, database, index.contiguous(), batch, channels, height, width, int(index.shape[-1]),
                         size, overlap, seed, stitch), device=xp.device, block=32)
    return out


def _quilt_cuda(xp, queries, database, size, k, overlap, seed, stitch=0, choices=None):
    """The CUDA path: the tiled k-NN search (or the given choices), then the stitch."""
    if choices is not None:
        index = choices
    else:
        index = _checked_rows(_knn_cuda(queries, database, k)[0], int(database.shape[0]), given=False)
    return _assemble_cuda(xp, database, index.reshape(xp.shape[0], -1, index.shape[-1]), size, overlap, seed,
                          stitch)


# ------------------------------------------------------------------------ reference


def philox_uniform_reference(seed: int, stream: int, counters: np.ndarray) -> np.ndarray:
    """numpy Philox4x32-10 (rng.h): ``philox_uniform(seed, stream, i)`` for each counter i."""
    mask = np.uint64(0xFFFFFFFF)
    counters = np.asarray(counters, dtype=np.uint64)
    c0, c1 = counters & mask, counters >> np.uint64(32)
    c2 = np.full_like(counters, np.uint64(stream) & mask)
    c3 = np.full_like(counters, np.uint64(stream) >> np.uint64(32))
    k0, k1 = np.uint64(seed) & mask, np.uint64(seed) >> np.uint64(32)
    for _ in range(10):
        p0 = np.uint64(0xD2511F53) * c0
        p1 = np.uint64(0xCD9E8D57) * c2
        c0, c1, c2, c3 = ((p1 >> np.uint64(32)) ^ c1 ^ k0, p1 & mask,
                          (p0 >> np.uint64(32)) ^ c3 ^ k1, p0 & mask)
        k0 = (k0 + np.uint64(0x9E3779B9)) & mask
        k1 = (k1 + np.uint64(0xBB67AE85)) & mask
    return (c0 >> np.uint64(8)).astype(np.float32) * np.float32(1.0 / 16777216.0)


def _canonical_distances(queries: torch.Tensor, database: torch.Tensor) -> torch.Tensor:
    """(Q, N) canonical squared distances (quilt_distance's summation order, float32)."""
    dim = queries.shape[1]
    lanes = [torch.zeros(queries.shape[0], database.shape[0]) for _ in range(8)]
    for j in range(dim):
        diff = queries[:, j:j + 1] - database[:, j][None, :]
        lanes[j % 8] = lanes[j % 8] + diff * diff
    return ((lanes[0] + lanes[4]) + (lanes[1] + lanes[5])) + ((lanes[2] + lanes[6]) + (lanes[3] + lanes[7]))


def knn_reference(queries: torch.Tensor, database: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Brute-force (index (Q, k) int64, distance (Q, k)): canonical distance, ties to the
    smaller index. Materialises the (Q, N) matrix: small sizes only."""
    if queries.dim() != 2 or database.dim() != 2 or queries.shape[1] != database.shape[1]:
        # a shorter query once matched the database's first values only
        raise ValueError(f"queries, database: expected (Q, D) and (N, D), got {tuple(queries.shape)} and "
                         f"{tuple(database.shape)}")
    check_int(k, "k", low=1, high=int(database.shape[0]))
    dist = _canonical_distances(queries.float().cpu(), database.float().cpu())
    order = torch.sort(dist, dim=1, stable=True).indices[:, :k]  # stable: equal distances keep index order
    return order, torch.gather(dist, 1, order)


def _min_cut_reference(err: np.ndarray) -> list[int]:
    """quilt_min_cut in numpy float32: DP down the rows, backtrace from the cheapest end."""
    length, width = err.shape
    cum = err.astype(np.float32).copy()
    for row in range(1, length):
        for col in range(width):
            lo, hi = max(col - 1, 0), min(col + 1, width - 1)
            cum[row, col] = np.float32(err[row, col] + cum[row - 1, lo:hi + 1].min())
    cut = [int(np.argmin(cum[-1]))]
    for row in range(length - 2, -1, -1):
        lo, hi = max(cut[-1] - 1, 0), min(cut[-1] + 1, width - 1)
        cut.append(lo + int(np.argmin(cum[row, lo:hi + 1])))
    return cut[::-1]


def _place_patch_reference(image: np.ndarray, patch: np.ndarray, top: int, left: int, overlap: int) -> None:
    size = patch.shape[1]
    region = image[:, top:top + size, left:left + size]
    diff = patch - region
    err = np.zeros((size, size), dtype=np.float32)
    for c in range(patch.shape[0]):  # channel order, float32, as quilt_pixel_error
        err = err + diff[c] * diff[c]
    take = np.ones((size, size), dtype=bool)
    if left > 0:
        cut = _min_cut_reference(err[:, :overlap])
        take &= np.arange(size)[None, :] >= np.array(cut)[:, None]
    if top > 0:
        cut = _min_cut_reference(err[:overlap, :].T)
        take &= np.arange(size)[:, None] >= np.array(cut)[None, :]
    region[:, take] = patch[:, take]


def _authors_table(err: np.ndarray) -> np.ndarray:
    """Athalye et al.'s "minimum error table" of a strip whose seam runs down axis 0: each entry
    is its own error plus the smallest raw error of its (up to three) neighbours in the next row."""
    table = err.copy()
    for a in range(err.shape[0] - 1):
        for b in range(err.shape[1]):
            table[a, b] = err[a, b] + err[a + 1, max(b - 1, 0):b + 2].min()
    return table


def _authors_seam(table: np.ndarray, start_row: int, start_col: int) -> list[int]:
    """The seam's column in rows start_row.. : from start_col, each next row takes the first
    cheapest of (same, left, right) whose indices are all strictly positive and inside."""
    cols = [start_col]
    for row in range(start_row + 1, table.shape[0]):
        candidates = [c for c in (cols[-1], cols[-1] - 1, cols[-1] + 1) if 0 < c < table.shape[1]]
        cols.append(min(candidates, key=lambda c: table[row, c]))
    return cols


def _channel_sum_float64(diff: np.ndarray) -> np.ndarray:
    squares = diff.astype(np.float64) ** 2
    total = np.zeros(squares.shape[1:])
    for channel in squares:  # (0 + e_0) + e_1 + ..., numpy's float64 sum over the channel axis
        total = total + channel
    return total


def _place_patch_authors_reference(image: np.ndarray, patch: np.ndarray, top: int, left: int, overlap: int) -> None:
    """Athalye et al.'s assign_block (see quilt.h): the left strip against canvas rows 0..P-1, the
    top strip against canvas columns 0..P-1, seams that never re-enter offset 0."""
    size = patch.shape[1]
    take = np.zeros((size, size), dtype=bool)
    left_table = top_table = None
    if left > 0:  # (P, O): seam down the rows
        strip = image[:, :size, left:left + overlap].astype(np.float64)
        left_table = _authors_table(_channel_sum_float64(patch[:, :, :overlap].astype(np.float64) - strip))
    if top > 0:  # transposed to (P, O): seam along the columns
        strip = image[:, top:top + overlap, :size].astype(np.float64)
        top_table = _authors_table(_channel_sum_float64(patch[:, :overlap, :].astype(np.float64) - strip).T)
    if left_table is None and top_table is None:
        take[:] = True
    elif top_table is None or left_table is None:  # first block row or column: one seam
        table = left_table if top_table is None else top_table
        seam = _authors_seam(table, 0, int(np.argmin(table[0])))
        for a, b in enumerate(seam):
            if top_table is None:
                take[a, b:] = True
            else:
                take[b:, a] = True
    else:  # interior: both seams from the cheapest diagonal entry, glued there
        glue = int(np.argmin([top_table[i, i] + left_table[i, i] for i in range(overlap)]))
        for a, b in enumerate(_authors_seam(left_table, glue, glue), start=glue):
            take[a, b:overlap] = True
        for a, b in enumerate(_authors_seam(top_table, glue, glue), start=glue):
            take[b:overlap, a] = True
        take[overlap:, overlap:] = True
    image[:, top:top + size, left:left + size][:, take] = patch[:, take]


def _quilt_reference_padded(xp: torch.Tensor, database: torch.Tensor, k: int, overlap: int, seed: int,
                            stitch: str = "min_cut", choices: Optional[torch.Tensor] = None) -> torch.Tensor:
    batch, channels, height, width = xp.shape
    size = database.shape[2]
    stride = size - overlap
    rows, cols = (height - size) // stride + 1, (width - size) // stride + 1
    flat = database.reshape(database.shape[0], -1).float().cpu()
    if choices is None:
        index, _ = knn_reference(_extract_patches(xp.detach().float().cpu(), size, stride), flat, k)
        index = index.reshape(batch, rows * cols, k).numpy()
    else:
        index = choices.cpu().reshape(batch, rows * cols, 1).numpy()
    db = database.detach().float().cpu().numpy()
    out = np.zeros((batch, channels, height, width), dtype=np.float32)
    for n in range(batch):
        u = philox_uniform_reference(seed, n, np.arange(rows * cols))
        pick = np.minimum((u * np.float32(index.shape[2])).astype(np.int64), index.shape[2] - 1)
        for p in range(rows * cols):
            py, px = divmod(p, cols)
            patch, top, left = db[index[n, p, pick[p]]], py * stride, px * stride
            if stitch == "paste":
                out[n, :, top:top + size, left:left + size] = patch
            elif stitch == "authors":
                _place_patch_authors_reference(out[n], patch, top, left, overlap)
            else:
                _place_patch_reference(out[n], patch, top, left, overlap)
    return torch.from_numpy(out).to(xp.device)


def reference(x: torch.Tensor, database: DatabaseLike, *, k: int = 10, overlap: int = 2, seed: int = 0,
              stitch: str = "min_cut", choices: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Pure torch/numpy quilting (brute-force search, Python stitching): the tests' oracle.
    Same definitions and outputs as :func:`quilt`; practical for small images only."""
    check_images(x, "x", in_unit_range=True)
    flat, _, _, channels, size = _database_tensors(database, torch.device("cpu"))
    if channels != x.shape[1]:
        raise ValueError(f"database: has {channels}-channel patches, but x has {x.shape[1]} channels")
    check_int(k, "k", low=1, high=int(flat.shape[0]))
    check_int(overlap, "overlap", low=2 if stitch == "authors" else 1, high=size - 1)
    check_choice(stitch, "stitch", STITCHES)
    stride = size - overlap
    height, width = x.shape[2], x.shape[3]
    if choices is not None:
        choices = _checked_choices(choices, x.cpu(), size, overlap, int(flat.shape[0]))
    padded_h, padded_w = _tiled_size(height, size, stride), _tiled_size(width, size, stride)
    xp = torch.nn.functional.pad(x.detach().float().cpu(), (0, padded_w - width, 0, padded_h - height),
                                 mode="replicate")
    out = _quilt_reference_padded(xp, flat.reshape(-1, channels, size, size), k, overlap, seed, stitch, choices)
    return out[:, :, :height, :width].contiguous().to(x.device)
