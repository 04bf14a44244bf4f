"""Image quilting speed (pytest-benchmark; compare ratios within one run).

* Patch search: one 3x299x299 image (99 x 99 = 9,801 queries of 75 dims, K = 10) against
  100,000 and 1,000,000 natural-image patches (scikit-image photographs, built once and cached
  under $OBFGRAD_CACHE/quilt), obfgrad's exact search vs faiss-cpu ``IndexFlatL2``, 2 threads.
  The query image (astronaut) is not among the database's sources.
* Stitching a 299x299 image: obfgrad's kernel vs the structure of the paper's Python loop
  (Athalye et al.'s ``assign_block``: per-patch numpy errors, a Python DP table, a Python
  path trace), re-implemented below.
* End to end: a batch of 8 images at 299x299 with the 1,000,000-patch database.

Run: ``PYTHONPATH=. python -m pytest benchmarks/bench_quilt.py --benchmark-only``
(``-k "not 1M"`` for the quick half).
"""

import numpy as np
import pytest
import torch

from obfgrad._native import native
from obfgrad.data.patch_db import skimage_patch_database
from obfgrad.ops.quilt_op import _extract_patches, quilt

C = native()
THREADS = 2
SIZES = {"100k": 100_000, "1M": 1_000_000}


def held_out_images(count: int) -> torch.Tensor:
    """299x299 crops/resizes of the photographs the databases leave out (astronaut, coffee)."""
    import skimage.data
    from PIL import Image

    sources = [skimage.data.astronaut(), skimage.data.coffee()]
    images = []
    for i in range(count):
        source = sources[i % 2]
        crop = source[(i // 2) * 20:, (i // 2) * 25:]  # different views of the same photos
        resized = Image.fromarray(np.ascontiguousarray(crop)).resize((299, 299), Image.BILINEAR)
        images.append(torch.from_numpy(np.asarray(resized, dtype=np.float32) / 255.0).permute(2, 0, 1))
    return torch.stack(images).contiguous()


@pytest.fixture(scope="module", params=list(SIZES))
def search_case(request):
    database = skimage_patch_database(SIZES[request.param])
    database.projections()  # computed once per database, like the norms
    queries = _extract_patches(held_out_images(1), 5, 3).numpy()
    return request.param, database, np.ascontiguousarray(database.flat()), queries


def obfgrad_search(database, flat, queries):
    index = np.empty((len(queries), 10), np.int64)
    dist = np.empty((len(queries), 10), np.float32)
    stats = C.quilt_knn(queries, flat, database.sq_norms, database.projections(), 3, 10, index, dist)
    return index, dist, stats


@pytest.mark.skipif(C is None, reason="obfgrad._C is not built")
def test_knn_obfgrad(benchmark, search_case):
    name, database, flat, queries = search_case
    C.set_num_threads(THREADS)
    benchmark.group = f"knn-{name}"
    index, dist, stats = benchmark.pedantic(obfgrad_search, (database, flat, queries), rounds=3, iterations=1)
    benchmark.extra_info.update(stats)
    benchmark.extra_info["queries"] = len(queries)


def test_knn_faiss(benchmark, search_case):
    faiss = pytest.importorskip("faiss")
    name, database, flat, queries = search_case
    faiss.omp_set_num_threads(THREADS)
    index = faiss.IndexFlatL2(flat.shape[1])
    index.add(flat)
    benchmark.group = f"knn-{name}"
    faiss_dist, faiss_index = benchmark.pedantic(index.search, (queries, 10), rounds=1 if name == "1M" else 3,
                                                 iterations=1)
    if C is not None:  # same neighbours: identical lists, or lists whose true distances agree (ties)
        ours, _, _ = obfgrad_search(database, flat, queries)
        identical = (ours == faiss_index).all(axis=1)
        ours_true, faiss_true = true_distances(queries, flat, ours), true_distances(queries, flat, faiss_index)
        tie_only = np.isclose(ours_true, np.sort(faiss_true, axis=1), rtol=1e-5, atol=1e-6).all(axis=1)
        benchmark.extra_info["identical_neighbour_lists"] = float(identical.mean())
        benchmark.extra_info["lists_equal_up_to_ties"] = float((identical | tie_only).mean())
        benchmark.extra_info["ours_never_farther"] = bool((ours_true <= np.sort(faiss_true, axis=1) + 1e-6).all())


def true_distances(queries: np.ndarray, flat: np.ndarray, index: np.ndarray) -> np.ndarray:
    """Squared distances in float64 of each query to its listed neighbours."""
    return ((queries[:, None, :].astype(np.float64) - flat[index].astype(np.float64)) ** 2).sum(-1)


# ---------------------------------------------------------------------------- stitching


def _paper_style_table(errors: np.ndarray) -> np.ndarray:
    """Cumulative minimum-error table over rows, with Python loops (the paper's structure)."""
    rows, cols = errors.shape
    table = errors.copy()
    for y in range(1, rows):
        for x in range(cols):
            best = table[y - 1, x]
            if x > 0:
                best = min(best, table[y - 1, x - 1])
            if x < cols - 1:
                best = min(best, table[y - 1, x + 1])
            table[y, x] = errors[y, x] + best
    return table


def _paper_style_cut(table: np.ndarray) -> list:
    rows, cols = table.shape
    cut = [int(np.argmin(table[-1]))]
    for y in range(rows - 2, -1, -1):
        candidates = [x for x in (cut[-1] - 1, cut[-1], cut[-1] + 1) if 0 <= x < cols]
        cut.append(min(candidates, key=lambda x: table[y, x]))
    return cut[::-1]


def paper_style_assemble(tiles: np.ndarray, rows: int, cols: int, size: int = 5, overlap: int = 2) -> np.ndarray:
    """Stitch HWC tiles in raster order, one Python iteration per patch (and per DP cell)."""
    stride = size - overlap
    synth = np.zeros((size + (rows - 1) * stride, size + (cols - 1) * stride, 3))
    for iy in range(rows):
        for ix in range(cols):
            tile = tiles[iy * cols + ix]
            top, left = iy * stride, ix * stride
            region = synth[top:top + size, left:left + size]
            errors = np.sum(np.square(tile - region), axis=2)
            take = np.ones((size, size), dtype=bool)
            if ix > 0:
                cut = _paper_style_cut(_paper_style_table(errors[:, :overlap]))
                for y in range(size):
                    take[y, :cut[y]] = False
            if iy > 0:
                cut = _paper_style_cut(_paper_style_table(errors[:overlap, :].T))
                for x in range(size):
                    take[:cut[x], x] = False
            region[take] = tile[take]
    return synth


@pytest.fixture(scope="module")
def stitch_case():
    rng = np.random.default_rng(0)
    database = rng.random((20_000, 75), dtype=np.float32)
    neighbours = rng.integers(0, len(database), (1, 99 * 99, 10))
    return database, neighbours


@pytest.mark.skipif(C is None, reason="obfgrad._C is not built")
def test_stitch_299_obfgrad(benchmark, stitch_case):
    database, neighbours = stitch_case
    out = np.empty((1, 3, 299, 299), np.float32)
    benchmark.group = "stitch-299"
    benchmark(C.quilt_assemble, database, neighbours, 0, out, 5, 2)


def test_stitch_299_paper_python_loop(benchmark, stitch_case):
    database, neighbours = stitch_case
    tiles = database[neighbours[0, :, 0]].reshape(-1, 3, 5, 5).transpose(0, 2, 3, 1).astype(np.float64)
    benchmark.group = "stitch-299"
    benchmark.pedantic(paper_style_assemble, (tiles, 99, 99), rounds=3, iterations=1)


# ---------------------------------------------------------------------------- end to end


@pytest.mark.skipif(C is None, reason="obfgrad._C is not built")
def test_quilt_end_to_end_batch8_299_1M(benchmark):
    database = skimage_patch_database(1_000_000)
    images = held_out_images(8)
    C.set_num_threads(THREADS)
    benchmark.group = "quilt-e2e-8x299-1M"
    out = benchmark.pedantic(quilt, (images, database), kwargs={"k": 10, "seed": 0}, rounds=1, iterations=1)
    assert out.shape == images.shape
    benchmark.extra_info["seconds_per_image"] = benchmark.stats.stats.mean / 8
