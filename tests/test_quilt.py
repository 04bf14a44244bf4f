"""Image quilting: exact k-NN, boundary cuts, stitching, the patch database file, BPDA."""

import itertools
import json

import numpy as np
import pytest
import skimage.data
import torch

from obfgrad._native import native
from obfgrad.data.patch_db import (
    PatchDatabaseError,
    authors_resize,
    build_patch_database,
    load_patch_database,
    patch_database_from_array,
    save_patch_database,
    search_projections,
)
from obfgrad.ops.quilt_op import (
    STITCHES,
    _extract_patches,
    _knn_cuda,
    _quilt_cuda,
    _quilt_op,
    knn_reference,
    philox_uniform_reference,
    quilt,
    reference,
)

C = native()
needs_native = pytest.mark.skipif(C is None, reason="obfgrad._C is not built")
ISAS = ["generic"] + ([] if C is None else {"avx512": ["avx2", "avx512"], "avx2": ["avx2"]}.get(C.quilt_best_isa(), []))


def native_knn(queries: np.ndarray, database: np.ndarray, k: int, isa: str = "auto", channels: int = 3):
    sq = np.empty(len(database), np.float32)
    C.quilt_sq_norms(database, sq)
    proj = search_projections(database, channels)
    index = np.empty((len(queries), k), np.int64)
    dist = np.empty((len(queries), k), np.float32)
    C.quilt_knn(queries, database, sq, proj, channels, k, index, dist, isa)
    return index, dist


def natural_images():
    return [skimage.data.camera(), skimage.data.chelsea(), skimage.data.coins(), skimage.data.rocket()]


def image_tensor(image: np.ndarray, size: int) -> torch.Tensor:
    from PIL import Image

    resized = np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR), dtype=np.float32) / 255.0
    if resized.ndim == 2:
        resized = np.repeat(resized[:, :, None], 3, axis=2)
    return torch.from_numpy(resized).permute(2, 0, 1)[None].contiguous()


# ------------------------------------------------------------------------------ k-NN


@needs_native
@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("num_queries,num_db,dim,k", [(50, 1000, 75, 10), (33, 487, 27, 5), (70, 2900, 75, 1),
                                                      (5, 13, 75, 13), (40, 961, 12, 7), (30, 1200, 10, 4)])
def test_knn_equals_brute_force_on_random_data(isa, num_queries, num_db, dim, k):
    rng = np.random.default_rng(num_db)
    queries = rng.random((num_queries, dim), dtype=np.float32)
    database = rng.random((num_db, dim), dtype=np.float32)
    index, dist = native_knn(queries, database, k, isa, channels=1 if dim == 10 else 3)
    want_index, want_dist = knn_reference(torch.from_numpy(queries), torch.from_numpy(database), k)
    np.testing.assert_array_equal(index, want_index.numpy())
    np.testing.assert_array_equal(dist, want_dist.numpy())


@needs_native
@pytest.mark.parametrize("isa", ISAS)
def test_knn_ties_go_to_the_smaller_index(isa):
    rng = np.random.default_rng(1)
    database = rng.random((1500, 75), dtype=np.float32)
    database[[1400, 3, 977, 12]] = database[701]  # five identical rows, scattered over blocks
    database[100:1100:50] = 0.25  # twenty identical flat patches
    queries = np.stack([database[701], database[100], database[701] + 1e-3, np.full(75, 0.25, np.float32)])
    index, dist = native_knn(queries, database, 8, isa)
    np.testing.assert_array_equal(index[0, :5], [3, 12, 701, 977, 1400])
    np.testing.assert_array_equal(index[1], list(range(100, 500, 50)))
    np.testing.assert_array_equal(index[3], list(range(100, 500, 50)))
    assert (dist[0, :5] == 0).all() and (dist[1] == 0).all()
    want_index, _ = knn_reference(torch.from_numpy(queries), torch.from_numpy(database), 8)
    np.testing.assert_array_equal(index, want_index.numpy())


@needs_native
@pytest.mark.parametrize("isa", ISAS)
def test_knn_equals_brute_force_on_natural_patches(isa):
    # Natural patches are where the norm pruning skips blocks: it must not lose neighbours.
    database = build_patch_database(natural_images(), 6000, seed=3, long_side=120)
    queries = quilt_queries(image_tensor(skimage.data.astronaut(), 41))
    flat = np.ascontiguousarray(database.flat())
    index, dist = native_knn(queries, flat, 10, isa)
    want_index, want_dist = knn_reference(torch.from_numpy(queries), torch.from_numpy(flat), 10)
    np.testing.assert_array_equal(index, want_index.numpy())
    np.testing.assert_array_equal(dist, want_dist.numpy())


def quilt_queries(x: torch.Tensor, size: int = 5, stride: int = 3) -> np.ndarray:
    patches = x.unfold(2, size, stride).unfold(3, size, stride).permute(0, 2, 3, 1, 4, 5)
    return np.ascontiguousarray(patches.reshape(-1, x.shape[1] * size * size).numpy())


@needs_native
def test_knn_distances_are_squared_l2():
    rng = np.random.default_rng(2)
    queries = rng.random((20, 75), dtype=np.float32)
    database = rng.random((300, 75), dtype=np.float32)
    index, dist = native_knn(queries, database, 3)
    exact = ((queries[:, None, :].astype(np.float64) - database[index].astype(np.float64)) ** 2).sum(-1)
    np.testing.assert_allclose(dist, exact, rtol=1e-5)


@needs_native
def test_knn_rejects_bad_sizes():
    queries = np.zeros((4, 75), np.float32)
    database = np.zeros((10, 75), np.float32)
    with pytest.raises(ValueError, match="k"):
        native_knn(queries, database, 11)
    with pytest.raises(ValueError, match="queries"):
        native_knn(np.zeros((4, 12), np.float32), database, 2)
    with pytest.raises(ValueError, match="out_index"):
        C.quilt_knn(queries, database, np.zeros(10, np.float32), search_projections(database, 3), 3, 2,
                    np.zeros((4, 3), np.int64), np.zeros((4, 2), np.float32))
    with pytest.raises(ValueError, match="database_projections"):
        C.quilt_knn(queries, database, np.zeros(10, np.float32), np.zeros((10, 2), np.float32), 3, 2,
                    np.zeros((4, 2), np.int64), np.zeros((4, 2), np.float32))


# ------------------------------------------------------------------------ boundary cut


def exhaustive_min_cut(err: np.ndarray) -> list:
    """Every path with one column per row and steps of at most one column; the cheapest."""
    length, width = err.shape
    best, best_path = None, None
    for path in itertools.product(range(width), repeat=length):
        if any(abs(a - b) > 1 for a, b in zip(path, path[1:])):
            continue
        cost = sum(float(err[row, col]) for row, col in enumerate(path))
        if best is None or cost < best:
            best, best_path = cost, list(path)
    return best_path


@needs_native
@pytest.mark.parametrize("length,width", [(5, 2), (5, 3), (6, 4), (7, 1), (1, 3), (8, 3)])
def test_min_cut_equals_exhaustive_search(length, width):
    rng = np.random.default_rng(length * 10 + width)
    for _ in range(20):
        err = rng.random((length, width), dtype=np.float32)
        cut = np.empty(length, np.int32)
        C.quilt_min_cut(err, cut)
        assert list(cut) == exhaustive_min_cut(err)


@needs_native
def test_min_cut_ties_go_to_the_smaller_column():
    cut = np.empty(5, np.int32)
    C.quilt_min_cut(np.zeros((5, 3), np.float32), cut)
    assert list(cut) == [0, 0, 0, 0, 0]


# ------------------------------------------------------------------------------ quilting


@pytest.mark.parametrize("shape,k,overlap", [((2, 3, 20, 20), 10, 2), ((1, 3, 23, 17), 3, 2), ((2, 1, 14, 14), 5, 1),
                                             ((1, 3, 26, 26), 1, 3), ((1, 3, 4, 9), 2, 2)])
def test_quilt_equals_reference(shape, k, overlap):
    torch.manual_seed(sum(shape) + k)
    database = torch.rand(700, shape[1], 5 if overlap < 3 else 6, 5 if overlap < 3 else 6)
    x = torch.rand(shape)
    got = quilt(x, database, k=k, overlap=overlap, seed=11)
    want = reference(x, database, k=k, overlap=overlap, seed=11)
    assert got.shape == x.shape
    assert torch.equal(got, want)


def test_without_the_native_extension_quilt_falls_back_to_the_reference(monkeypatch):
    from obfgrad import _native

    torch.manual_seed(12)
    database = torch.rand(300, 3, 5, 5)
    x = torch.rand(1, 3, 13, 16)
    monkeypatch.setattr(_native, "native", lambda: None)
    assert torch.equal(quilt(x, database, k=4, seed=2), reference(x, database, k=4, seed=2))


def test_quilt_with_k1_returns_an_image_whose_patches_are_in_the_database():
    x = image_tensor(skimage.data.chelsea(), 32)  # 32 = 5 + 9 * 3: tiles exactly
    own = x.unfold(2, 5, 3).unfold(3, 5, 3).permute(0, 2, 3, 1, 4, 5).reshape(-1, 3, 5, 5)
    distractors = torch.rand(300, 3, 5, 5)
    database = torch.cat([distractors, own])[torch.randperm(300 + own.shape[0],
                                                            generator=torch.Generator().manual_seed(0))]
    assert torch.equal(quilt(x, database, k=1, seed=0), x)


def test_quilt_output_is_made_of_database_pixels():
    torch.manual_seed(4)
    database = torch.rand(400, 3, 5, 5)
    y = quilt(torch.rand(1, 3, 20, 20), database, seed=2)
    assert set(y.flatten().tolist()) <= set(database.flatten().tolist())


def test_same_seed_same_quilt_and_other_seeds_differ():
    torch.manual_seed(5)
    database = torch.rand(600, 3, 5, 5)
    x = torch.rand(2, 3, 29, 29)
    first = quilt(x, database, seed=123)
    assert torch.equal(first, quilt(x, database, seed=123))
    assert not torch.equal(first, quilt(x, database, seed=124))
    a = quilt(x, database, generator=torch.Generator().manual_seed(9))
    b = quilt(x, database, generator=torch.Generator().manual_seed(9))
    assert torch.equal(a, b)


def test_sizes_that_do_not_tile_are_edge_padded_then_cropped():
    torch.manual_seed(6)
    database = torch.rand(500, 3, 5, 5)
    x = torch.rand(1, 3, 22, 19)  # tiled sizes are 23 and 20
    padded = torch.nn.functional.pad(x, (0, 1, 0, 1), mode="replicate")
    assert torch.equal(quilt(x, database, seed=3), quilt(padded, database, seed=3)[:, :, :22, :19])
    tiny = torch.rand(1, 3, 3, 2)  # smaller than one patch
    assert quilt(tiny, database, seed=3).shape == tiny.shape


def test_backward_is_the_identity():
    database = torch.rand(300, 3, 5, 5)
    x = torch.rand(1, 3, 17, 17, requires_grad=True)
    weights = torch.randn(1, 3, 17, 17)
    (quilt(x, database, seed=0) * weights).sum().backward()
    assert torch.equal(x.grad, weights)


def test_custom_op_passes_opcheck():
    database = torch.rand(200, 3, 5, 5)
    flat = database.reshape(200, -1)
    x = torch.rand(1, 3, 14, 14, requires_grad=True)
    proj = torch.from_numpy(search_projections(flat.numpy(), 3))
    torch.library.opcheck(_quilt_op, (x, flat, (flat * flat).sum(1), proj, 5, 4, 2, 7),
                          test_utils=("test_schema", "test_faketensor", "test_autograd_registration"))
    choices = torch.randint(0, 200, (1, 16, 1))
    torch.library.opcheck(_quilt_op, (x, flat, (flat * flat).sum(1), proj, 5, 4, 2, 0, 1, choices),
                          test_utils=("test_schema", "test_faketensor", "test_autograd_registration"))


@pytest.mark.parametrize("bad,kwargs,error,match", [
    ("x_nan", {}, ValueError, "x: contains NaN"),
    ("x_range", {}, ValueError, "x: expected values in"),
    ("x_rank", {}, ValueError, "x: expected a 4-D"),
    ("x_dtype", {}, TypeError, "x: expected float32"),
    ("db_channels", {}, ValueError, "database: has 1-channel"),
    ("db_nan", {}, ValueError, r"database: expected finite patches in \[0, 1\].*NaN"),
    ("db_shape", {}, ValueError, "database: expected a non-empty"),
    ("db_patch", {}, ValueError, "database: patch size 17"),
    (None, {"patch_size": 4}, ValueError, "database: has 5x5 patches, expected patch_size=4"),
    (None, {"k": 51}, ValueError, "k: expected an int <= 50"),
    (None, {"k": 0}, ValueError, "k: expected an int >= 1"),
    (None, {"overlap": 5}, ValueError, "overlap"),
    (None, {"seed": -1}, ValueError, "seed"),
    (None, {"stitch": "graphcut"}, ValueError, "stitch"),
    (None, {"stitch": "authors", "overlap": 1}, ValueError, "overlap"),
    (None, {"choices": torch.zeros(1, 16, dtype=torch.long)}, ValueError, r"choices: expected shape \(1, 9\)"),
    (None, {"choices": torch.zeros(1, 9)}, TypeError, "choices: expected an integer"),
    (None, {"choices": torch.full((1, 9), 50)}, ValueError, "choices: expected database rows"),
    (None, {"choices": torch.zeros(1, 9, dtype=torch.long), "seed": 3}, ValueError, "choices: give either"),
])
def test_bad_input_is_rejected(bad, kwargs, error, match):
    x = torch.rand(1, 3, 11, 11)
    database = torch.rand(50, 3, 5, 5)
    if bad == "x_nan":
        x[0, 0, 3, 3] = float("nan")
    elif bad == "x_range":
        x = x + 1
    elif bad == "x_rank":
        x = x[0]
    elif bad == "x_dtype":
        x = x.double()
    elif bad == "db_channels":
        database = database[:, :1].contiguous()
    elif bad == "db_nan":
        database[3, 0, 0, 0] = float("nan")
    elif bad == "db_shape":
        database = database[:, :, :4]
    elif bad == "db_patch":
        database = torch.rand(50, 3, 17, 17)
    with pytest.raises(error, match=match):
        quilt(x, database, **kwargs)


@needs_native
def test_native_assemble_rejects_out_of_range_neighbours():
    database = np.random.default_rng(0).random((10, 75), dtype=np.float32)
    neighbours = np.zeros((1, 4, 2), np.int64)
    neighbours[0, 2, 1] = 10
    with pytest.raises(ValueError, match="neighbours"):
        C.quilt_assemble(database, neighbours, 0, np.zeros((1, 3, 8, 8), np.float32), 5, 2)
    with pytest.raises(ValueError, match="out"):
        C.quilt_assemble(database, np.zeros((1, 4, 2), np.int64), 0, np.zeros((1, 3, 9, 8), np.float32), 5, 2)
    with pytest.raises(ValueError, match="stitch"):
        C.quilt_assemble(database, np.zeros((1, 4, 2), np.int64), 0, np.zeros((1, 3, 8, 8), np.float32), 5, 2, 3)
    with pytest.raises(ValueError, match="overlap"):
        C.quilt_assemble(database, np.zeros((1, 4, 2), np.int64), 0, np.zeros((1, 3, 8, 8), np.float32), 5, 1, 1)


# ------------------------------------------------------- Athalye et al.'s stitch, choices given
# Their outputs themselves (golden arrays) are checked in tests/test_authors_golden.py.


@pytest.mark.parametrize("stitch", ["authors", "paste"])
@pytest.mark.parametrize("shape,patch,overlap", [((2, 3, 17, 17), 5, 2), ((1, 3, 23, 20), 5, 2),
                                                 ((1, 1, 19, 19), 7, 3), ((1, 3, 14, 14), 6, 4)])
def test_native_stitch_variants_equal_the_reference(stitch, shape, patch, overlap):
    generator = torch.Generator().manual_seed(sum(shape) + patch)
    database = torch.rand(300, shape[1], patch, patch, generator=generator)
    x = torch.rand(shape, generator=generator)
    assert torch.equal(quilt(x, database, k=4, overlap=overlap, seed=5, stitch=stitch),
                       reference(x, database, k=4, overlap=overlap, seed=5, stitch=stitch))


def test_given_choices_replay_the_seeded_search_and_pick():
    generator = torch.Generator().manual_seed(3)
    database, x = torch.rand(400, 3, 5, 5, generator=generator), torch.rand(2, 3, 20, 20, generator=generator)
    neighbours, _ = knn_reference(x.unfold(2, 5, 3).unfold(3, 5, 3).permute(0, 2, 3, 1, 4, 5).reshape(-1, 75),
                                  database.reshape(400, -1), 10)
    neighbours = neighbours.view(2, 36, 10)
    picks = [np.minimum((philox_uniform_reference(11, n, np.arange(36)) * np.float32(10)).astype(np.int64), 9)
             for n in range(2)]
    choices = torch.stack([neighbours[n, torch.arange(36), torch.from_numpy(picks[n])] for n in range(2)])
    for stitch in ("min_cut", "authors"):
        seeded = quilt(x, database, seed=11, stitch=stitch)
        assert torch.equal(quilt(x, database, choices=choices, stitch=stitch), seeded)
        assert torch.equal(reference(x, database, choices=choices, stitch=stitch), seeded)


def _tile_canvas(choices, database, rows, cols):
    """Each block's patch pasted in raster order onto a zero canvas (the paste stitch)."""
    canvas = torch.zeros(database.shape[1], 3 * (rows - 1) + 5, 3 * (cols - 1) + 5)
    for p, index in enumerate(choices.tolist()):
        top, left = 3 * (p // cols), 3 * (p % cols)
        canvas[:, top:top + 5, left:left + 5] = database[index]
    return canvas


def test_paste_writes_whole_patches_later_over_earlier():
    generator = torch.Generator().manual_seed(4)
    database, x = torch.rand(100, 3, 5, 5, generator=generator), torch.rand(1, 3, 14, 17, generator=generator)
    choices = torch.randint(0, 100, (1, 20), generator=generator)
    assert torch.equal(quilt(x, database, choices=choices, stitch="paste")[0], _tile_canvas(choices[0], database, 4, 5))


def test_authors_stitch_always_writes_each_blocks_lower_right_four_by_four():
    # With 5x5 patches and overlap 2 every block but the first writes rows and columns 1..4 of
    # its tile whatever the errors; the seams only decide the top-left pixels.
    generator = torch.Generator().manual_seed(6)
    database, x = torch.rand(100, 3, 5, 5, generator=generator), torch.rand(1, 3, 17, 17, generator=generator)
    choices = torch.randint(0, 100, (1, 25), generator=generator)
    out = quilt(x, database, choices=choices, stitch="authors")[0]
    last = database[choices[0, 24]]
    assert torch.equal(out[:, 13:17, 13:17], last[:, 1:, 1:])
    for p in range(20, 24):  # the last block row; the next block may write its tile (1, 0) and column 4 over it
        left = 3 * (p % 5)
        assert torch.equal(out[:, 14:17, left + 1:left + 4], database[choices[0, p]][:, 2:, 1:4])
    textbook = quilt(x, database, choices=choices)
    assert not torch.equal(out, textbook)  # the textbook cut follows each block's own seam


# ------------------------------------------------------------------------ database file


def small_database(**kwargs):
    args = dict(count=2000, seed=1, long_side=64, source="test images")
    args.update(kwargs)
    return build_patch_database(natural_images(), **args)


def test_database_build_is_seeded_and_in_range():
    first, second = small_database(), small_database()
    assert np.array_equal(first.patches, second.patches)
    assert not np.array_equal(first.patches, small_database(seed=2).patches)
    assert first.patches.shape == (2000, 3, 5, 5) and first.patches.dtype == np.float32
    assert first.patches.min() >= 0 and first.patches.max() <= 1
    assert first.meta["count"] == 2000 and first.meta["seed"] == 1 and first.meta["source"] == "test images"


def test_database_patches_are_crops_of_the_resized_images():
    image = np.random.default_rng(0).integers(0, 256, (40, 20, 3), dtype=np.uint8)
    database = build_patch_database([image], 50, seed=0, long_side=None)
    crops = {np.ascontiguousarray(image[y:y + 5, x:x + 5].transpose(2, 0, 1)).astype(np.float32).tobytes()
             for y in range(36) for x in range(16)}
    scaled = (database.patches * 255).round().astype(np.float32)
    assert all(patch.tobytes() in crops for patch in scaled)
    gray = build_patch_database([image[:, :, 0]], 10, seed=0, long_side=300)  # 300 x 150, repeated to RGB
    assert gray.channels == 3 and np.array_equal(gray.patches[:, 0], gray.patches[:, 2])


def test_authors_resize_rule_keeps_squares_and_truncates_the_short_side():
    # quilt_preprocess.py: long side 300, short side int(ratio * 300); square images untouched.
    wide = np.random.default_rng(1).integers(0, 256, (427, 640, 3), dtype=np.uint8)
    assert authors_resize(wide).shape == (200, 300, 3)  # 427/640*300 = 200.16
    tall = (np.random.default_rng(2).integers(0, 2, (401, 299)) * 255).astype(np.uint8)  # black and white
    assert authors_resize(tall).shape == (300, 223)  # 299/401*300 = 223.69: truncated, not rounded
    square = np.random.default_rng(3).integers(0, 256, (512, 512, 3), dtype=np.uint8)
    assert authors_resize(square) is not None and np.array_equal(authors_resize(square), square)
    # Nearest neighbour (their Pillow's default) only copies source values; bicubic blends them.
    assert set(np.unique(authors_resize(tall)).tolist()) == {0, 255}
    assert len(np.unique(authors_resize(tall, resample="bicubic"))) > 2
    floats = authors_resize(wide.astype(np.float32) / 255)
    assert floats.shape == (200, 300, 3) and np.allclose(floats * 255, authors_resize(wide), atol=1e-3)


def test_authors_recipe_takes_each_patch_from_a_different_image(tmp_path):
    from PIL import Image

    images = [np.full((12, 16), level, np.uint8) for level in range(0, 240, 12)]  # 20 flat images
    database = build_patch_database(images, 20, seed=4, long_side=None, recipe="authors")
    levels = sorted(np.round(database.patches[:, 0, 0, 0] * 255).astype(int).tolist())
    assert levels == list(range(0, 240, 12))  # one patch of each image
    assert database.meta["recipe"] == "authors" and database.meta["resample"] == "nearest"
    with pytest.raises(ValueError, match="count"):
        build_patch_database(images, 21, recipe="authors")
    paths = []
    for index, image in enumerate(images[:3]):  # file paths are opened when drawn
        paths.append(tmp_path / f"{index}.png")
        Image.fromarray(image).save(paths[-1])
    from_files = build_patch_database(paths, 3, seed=4, long_side=8, recipe="authors")
    assert sorted(np.round(from_files.patches[:, 1, 2, 2] * 255).astype(int).tolist()) == [0, 12, 24]


def test_database_recipe_options_are_checked():
    images = natural_images()
    with pytest.raises(ValueError, match="recipe"):
        build_patch_database(images, 10, recipe="imagenet")
    with pytest.raises(ValueError, match="resample"):
        build_patch_database(images, 3, recipe="authors", resample="box")
    with pytest.raises(ValueError, match="resample"):
        build_patch_database(images, 10, resample="nearest")  # the uniform recipe is bicubic


def test_database_from_an_nhwc_array_keeps_the_patches():
    hwc = np.random.default_rng(3).random((700, 5, 5, 3), dtype=np.float32)
    database = patch_database_from_array(hwc, layout="NHWC", source="quilt_db.npy")
    want = sorted(np.ascontiguousarray(hwc.transpose(0, 3, 1, 2)).reshape(700, -1).tolist())
    assert sorted(database.flat().tolist()) == want
    with pytest.raises(ValueError, match="patches"):
        patch_database_from_array(hwc[:, :, :4], layout="NHWC")


def test_database_roundtrip_is_read_into_memory_and_read_only(tmp_path):
    # Not memory-mapped: a mapped file truncated or rewritten later would change the verified
    # database or raise SIGBUS (issue 15, cases 5 and 6; see tests/test_faults_patch_db.py).
    database = small_database()
    path = save_patch_database(database, tmp_path / "db.npy")
    loaded = load_patch_database(path, patch_size=5, channels=3)
    assert not isinstance(loaded.patches, np.memmap) and not loaded.patches.flags.writeable
    assert np.array_equal(loaded.patches, database.patches)
    assert loaded.meta == json.loads((tmp_path / "db.json").read_text()) == database.meta
    x = torch.rand(1, 3, 11, 11)
    assert torch.equal(quilt(x, loaded, seed=1), quilt(x, torch.from_numpy(database.patches.copy()), seed=1))


def test_database_refuses_corrupt_truncated_or_mismatched_files(tmp_path):
    path = save_patch_database(small_database(), tmp_path / "db.npy")
    raw = bytearray(path.read_bytes())
    raw[-7] ^= 0x40  # one flipped bit in the data
    (tmp_path / "bad.npy").write_bytes(bytes(raw))
    (tmp_path / "bad.json").write_text((tmp_path / "db.json").read_text())
    with pytest.raises(PatchDatabaseError, match="checksum"):
        load_patch_database(tmp_path / "bad.npy")
    (tmp_path / "short.npy").write_bytes(path.read_bytes()[:-1000])
    (tmp_path / "short.json").write_text((tmp_path / "db.json").read_text())
    with pytest.raises(PatchDatabaseError, match="short.npy"):
        load_patch_database(tmp_path / "short.npy")
    meta = json.loads((tmp_path / "db.json").read_text())
    meta["count"] = 1999
    (tmp_path / "db.json").write_text(json.dumps(meta))
    with pytest.raises(PatchDatabaseError, match="sidecar describes"):
        load_patch_database(path)
    (tmp_path / "db.json").unlink()
    with pytest.raises(PatchDatabaseError, match="no sidecar"):
        load_patch_database(path)
    with pytest.raises(PatchDatabaseError, match="no patch database"):
        load_patch_database(tmp_path / "missing.npy")


def test_database_of_the_wrong_patch_size_or_channels_is_refused(tmp_path):
    path = save_patch_database(small_database(patch_size=4, count=300), tmp_path / "p4.npy")
    with pytest.raises(PatchDatabaseError, match="4x4 patches, expected 5x5"):
        load_patch_database(path, patch_size=5)
    with pytest.raises(PatchDatabaseError, match="3 channels, expected 1"):
        load_patch_database(path, channels=1)


def test_database_build_rejects_bad_arguments():
    with pytest.raises(ValueError, match="count"):
        build_patch_database(natural_images(), 0)
    with pytest.raises(ValueError, match="images"):
        build_patch_database([np.zeros((3, 3), np.uint8)], 10, long_side=None)
    with pytest.raises(ValueError, match="images"):
        build_patch_database([np.full((8, 8), np.nan, np.float32)], 10)


# ------------------------------------------------------------------ independent float64 oracle
# tests/data/golden_tv_quilt.npz: tools/make_golden_tv_quilt.py, scalar numpy loops written from the
# op's definitions without importing obfgrad (edge padding, l2 search with index ties, Philox pick,
# Efros & Freeman cut). Quilting is discrete: every output pixel is a copied database value, and the
# generator refuses any decision closer than 1e-4 (relative) to a tie, far above float32 rounding,
# so both backends must equal it exactly.


@pytest.mark.parametrize("name", ["exact", "padded"])
@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("stitch", ["min_cut", "paste"])
def test_native_and_reference_equal_the_independent_oracle(golden_tv_quilt, name, k, stitch):
    g = golden_tv_quilt
    seed, overlap = g["quilt_params"].tolist()
    x, database = torch.from_numpy(g[f"quilt_{name}_x"]), torch.from_numpy(g["quilt_database"])
    expected = torch.from_numpy(g[f"quilt_{name}_k{k}_{stitch}_out"])
    assert torch.equal(quilt(x, database, k=k, overlap=overlap, seed=seed, stitch=stitch), expected)
    assert torch.equal(reference(x, database, k=k, overlap=overlap, seed=seed, stitch=stitch), expected)


@pytest.mark.parametrize("name", ["exact", "padded"])
def test_given_choices_replay_the_independent_oracle(golden_tv_quilt, name):
    # The oracle's chosen rows fed back as choices= stitch the same image (search and pick skipped).
    g = golden_tv_quilt
    x, database = torch.from_numpy(g[f"quilt_{name}_x"]), torch.from_numpy(g["quilt_database"])
    choices = torch.from_numpy(g[f"quilt_{name}_k3_chosen"])
    expected = torch.from_numpy(g[f"quilt_{name}_k3_min_cut_out"])
    assert torch.equal(quilt(x, database, overlap=int(g["quilt_params"][1]), choices=choices), expected)


# ---------------------------------------------------------------------------------- GPU


def test_cuda_driver_compiles_with_nvrtc(nvrtc):
    from obfgrad._native import compile_cuda_source

    assert compile_cuda_source("quilt", "sm_80")


@pytest.mark.gpu
@pytest.mark.parametrize("stitch", ["min_cut", "authors", "paste"])
def test_cuda_equals_cpu(stitch):
    torch.manual_seed(8)
    database = torch.rand(900, 3, 5, 5)
    x = torch.rand(2, 3, 26, 31)
    cpu = quilt(x, database, seed=17, stitch=stitch)
    gpu = quilt(x.cuda(), database.cuda(), seed=17, stitch=stitch)
    assert torch.equal(gpu.cpu(), cpu)
    choices = torch.randint(0, 900, (2, 90))
    cpu = quilt(x, database, choices=choices, stitch=stitch)
    assert torch.equal(quilt(x.cuda(), database.cuda(), choices=choices.cuda(), stitch=stitch).cpu(), cpu)


# ------------------------------------------------------------------------ CUDA driver on the host


def _gpu_knn_on_host(queries: np.ndarray, database: np.ndarray, k: int, multiprocessors: int):
    index, dist = _knn_cuda(torch.from_numpy(queries), torch.from_numpy(database), k,
                            multiprocessors=multiprocessors)
    return index.numpy(), dist.numpy()


@pytest.mark.parametrize("num_queries,num_db,dim,k,multiprocessors", [
    (1, 1, 12, 1, 1),        # one query, one row, a tail of four lanes
    (130, 300, 75, 10, 2),   # two query blocks (128 + 2), three splits, a partial last tile
    (37, 250, 27, 5, 1),     # one split: the tiled kernel writes the answer itself, no merge
    (9, 40, 768, 40, 4),     # 16x16x3 patches: 8-row tiles, five splits each shorter than k
])
def test_cuda_knn_on_host_equals_brute_force(cuda_on_host, num_queries, num_db, dim, k, multiprocessors):
    # csrc/cuda/quilt.cu's tiled search (shared-memory tiles, __syncthreads, register blocks of
    # 8 rows) and merge, run on the CPU with real concurrent threads per block.
    rng = np.random.default_rng(dim)
    queries = rng.random((num_queries, dim), dtype=np.float32)
    database = rng.random((num_db, dim), dtype=np.float32)
    index, dist = _gpu_knn_on_host(queries, database, k, multiprocessors)
    want_index, want_dist = knn_reference(torch.from_numpy(queries), torch.from_numpy(database), k)
    np.testing.assert_array_equal(index, want_index.numpy())
    np.testing.assert_array_equal(dist, want_dist.numpy())
    splits = {grid[1] for _, kernel, grid, _ in cuda_on_host.launches if kernel == "quilt_knn_tiled_kernel"}
    assert ("quilt_knn_merge_kernel" in cuda_on_host.kernels_launched("quilt")) == (max(splits) > 1)


def test_cuda_knn_on_host_breaks_ties_like_the_cpu(cuda_on_host):
    # Coarsely quantised values: most distances tie, across tiles and splits; the GPU search
    # orders them by index, as the CPU driver and the reference do.
    rng = np.random.default_rng(5)
    database = (rng.integers(0, 3, (700, 75)) / 2).astype(np.float32)
    database[[650, 3, 401]] = database[200]
    queries = np.concatenate([database[[200, 5, 650]], (rng.integers(0, 3, (40, 75)) / 2).astype(np.float32)])
    index, dist = _gpu_knn_on_host(queries, database, 9, multiprocessors=3)
    np.testing.assert_array_equal(index[0, :4], [3, 200, 401, 650])
    want_index, want_dist = knn_reference(torch.from_numpy(queries), torch.from_numpy(database), 9)
    np.testing.assert_array_equal(index, want_index.numpy())
    np.testing.assert_array_equal(dist, want_dist.numpy())
    if C is not None:
        cpu_index, cpu_dist = native_knn(queries, database, 9)
        np.testing.assert_array_equal(index, cpu_index)
        np.testing.assert_array_equal(dist, cpu_dist)


@needs_native
@pytest.mark.parametrize("channels,size,overlap,shape", [(3, 5, 2, (2, 14, 17)), (1, 4, 1, (1, 13, 10))])
def test_cuda_quilt_on_host_equals_the_cpu_driver(cuda_on_host, channels, size, overlap, shape):
    # The whole CUDA path (search, merge, Philox pick, stitching) on an exactly tiled batch.
    generator = torch.Generator().manual_seed(channels)
    database = torch.rand(400, channels, size, size, generator=generator)
    x = torch.rand(shape[0], channels, *shape[1:], generator=generator)
    seed = 2**40 + 3  # both halves of the Philox key in use
    queries = _extract_patches(x, size, size - overlap)
    gpu = _quilt_cuda(x, queries, database.reshape(400, -1), size, 10, overlap, seed)
    assert torch.equal(gpu, quilt(x, database, k=10, overlap=overlap, seed=seed))
    assert {"quilt_knn_tiled_kernel", "quilt_assemble_kernel"} <= cuda_on_host.kernels_launched("quilt")


@needs_native
@pytest.mark.parametrize("stitch", ["authors", "paste"])
def test_cuda_stitch_variants_on_host_equal_the_cpu_driver(cuda_on_host, stitch):
    # The authors' stitch and the paste through the CUDA driver's assemble kernel, searched and
    # with given choices, equal to the CPU driver.
    generator = torch.Generator().manual_seed(3)
    database = torch.rand(300, 3, 5, 5, generator=generator)
    x = torch.rand(2, 3, 14, 17, generator=generator)
    code = STITCHES.index(stitch)
    queries = _extract_patches(x, 5, 3)
    gpu = _quilt_cuda(x, queries, database.reshape(300, -1), 5, 10, 2, 11, code)
    assert torch.equal(gpu, quilt(x, database, k=10, overlap=2, seed=11, stitch=stitch))
    choices = torch.randint(0, 300, (2, queries.shape[0] // 2), generator=generator)
    gpu = _quilt_cuda(x, None, database.reshape(300, -1), 5, 10, 2, 11, code, choices.reshape(2, -1, 1))
    assert torch.equal(gpu, quilt(x, database, overlap=2, choices=choices, stitch=stitch))


def test_cuda_search_refuses_patches_longer_than_its_tiles():
    with pytest.raises(ValueError, match="database: patches of 1088 values"):
        _knn_cuda(torch.zeros(1, 1088), torch.zeros(2, 1088), 1)
