"""GPU benchmarks: every op against the best GPU alternative, at the paper's sizes.

Each contender runs ``WARMUP`` untimed calls, then ``ROUNDS`` calls each timed with CUDA events
(``torch.cuda.Event`` before and after, on torch's current stream); the median in milliseconds
is ``extra_info["cuda_ms_median"]`` (pytest-benchmark's own wall-clock numbers, which include
the synchronisation, are kept beside it). Skipped with a reason where torch sees no GPU.

    python -m pytest benchmarks/bench_gpu.py -o python_files='bench_*.py' --benchmark-json=gpu.json

``tools/gpu_check.py`` runs this file and prints the medians side by side. Contenders:

* JPEG q75 round trip (float NCHW in, float NCHW out), 16x3x299x299 and 256x3x32x32:
  obfgrad's CUDA kernel; nvJPEG through ``torchvision.io.encode_jpeg`` / ``decode_jpeg`` on CUDA
  tensors (torchvision's defaults, plus the float <-> uint8 conversions both ends need); the
  pure-torch integer reference on the GPU.
* TV minimisation, 100 iterations (tolerance 0), 1x3x299x299 and 30x3x299x299 (an EOT step):
  obfgrad's CUDA kernels (red-black sweep) vs the pure-torch red-black reference on the GPU.
* Thermometer, 16 levels, forward + BPDA backward, 128x3x32x32 and 4096x3x32x32: obfgrad vs
  the closed-form pure-torch formulation (one comparison forward, masked sum backward).
* k-NN, 9,801 queries (one 3x299x299 image, 5x5 patches, stride 3) x 75 dims x 1,000,000
  natural-image patches, K = 10: obfgrad's exact tiled search vs ``torch.cdist`` + ``topk``
  over database chunks (its squared-distance expansion is not exact: ``extra_info`` gives the
  fraction of queries whose K neighbours it gets exactly right).
* Quilting end to end (padding, search, pick, stitching), 1 and 8 images of 3x299x299 with the
  same database: ``extra_info["ms_per_image"]``.
"""

from __future__ import annotations

import statistics

import numpy as np
import pytest
import torch

from obfgrad.ops.jpeg_op import jpeg
from obfgrad.ops.jpeg_op import reference as jpeg_reference
from obfgrad.ops.quilt_op import _extract_patches, _knn_cuda, quilt
from obfgrad.ops.thermometer_op import _soft_backward_reference, thermometer, thermometer_reference
from obfgrad.ops.tv_op import reference as tv_reference
from obfgrad.ops.tv_op import tv_minimize

pytestmark = pytest.mark.gpu  # skipped without a CUDA device (benchmarks/conftest.py)

WARMUP = 2
ROUNDS = 5
DATABASE_SIZE = 1_000_000
K = 10


def measure(benchmark, fn, *, rounds: int = ROUNDS, warmup: int = WARMUP) -> float:
    """CUDA-event median (ms) of ``fn`` over ``rounds`` calls after ``warmup``; recorded in
    ``benchmark.extra_info`` and returned."""
    times: list[float] = []

    def timed():
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))

    benchmark.pedantic(timed, rounds=rounds, warmup_rounds=warmup, iterations=1)
    measured = times[warmup:]
    benchmark.extra_info["cuda_ms_median"] = statistics.median(measured)
    benchmark.extra_info["cuda_ms"] = measured
    return statistics.median(measured)


def _images(shape, seed=0):
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed)).cuda()


# ----------------------------------------------------------------------------- JPEG

JPEG_SHAPES = {"16x3x299x299": (16, 3, 299, 299), "256x3x32x32": (256, 3, 32, 32)}


def _nvjpeg_roundtrip(x: torch.Tensor, quality: int) -> torch.Tensor:
    from torchvision.io import decode_jpeg, encode_jpeg

    samples = torch.floor(x * 255.0 + 0.5).clamp(0, 255).to(torch.uint8)  # obfgrad's input rule
    encoded = encode_jpeg(list(samples), quality=quality)
    encoded = [data.cpu() for data in encoded]  # decode_jpeg reads the bytes from host memory
    decoded = decode_jpeg(encoded, device=x.device)
    return torch.stack(decoded).to(torch.float32) / 255.0


@pytest.fixture(scope="module")
def nvjpeg_available():
    pytest.importorskip("torchvision.io", reason="torchvision is not installed")
    try:
        _nvjpeg_roundtrip(_images((1, 3, 16, 16)), 75)
    except (RuntimeError, TypeError) as exc:  # a torchvision built without nvJPEG, or too old
        pytest.skip(f"nvJPEG through torchvision is not usable here: {exc}")


@pytest.mark.parametrize("shape", list(JPEG_SHAPES))
@pytest.mark.parametrize("contender", ["obfgrad", "nvjpeg", "reference"])
def test_jpeg_roundtrip(benchmark, request, shape, contender):
    benchmark.group = f"gpu jpeg q75 {shape}"
    x = _images(JPEG_SHAPES[shape])
    if contender == "nvjpeg":
        request.getfixturevalue("nvjpeg_available")
        fn = lambda: _nvjpeg_roundtrip(x, 75)  # noqa: E731
        out = fn()
        ours = jpeg(x, 75)
        benchmark.extra_info["max_diff_vs_obfgrad_in_255ths"] = float((out - ours).abs().max() * 255)
    elif contender == "reference":
        fn = lambda: jpeg_reference(x, 75, "4:2:0")  # noqa: E731
    else:
        fn = lambda: jpeg(x, 75)  # noqa: E731
    measure(benchmark, fn)


# ----------------------------------------------------------------------------- TV

TV_BATCHES = {"1x3x299x299": 1, "30x3x299x299": 30}


@pytest.mark.parametrize("shape", list(TV_BATCHES))
@pytest.mark.parametrize("contender", ["obfgrad", "reference"])
def test_tv_100_iterations(benchmark, shape, contender):
    benchmark.group = f"gpu tv 100 iterations {shape}"
    x = _images((TV_BATCHES[shape], 3, 299, 299), 1)
    if contender == "obfgrad":
        fn = lambda: tv_minimize(x, 0.5, tol=0.0, max_iter=100, seed=1)  # noqa: E731
    else:
        fn = lambda: tv_reference(x, 0.5, tol=0.0, max_iter=100, seed=1)  # noqa: E731
    measure(benchmark, fn, rounds=3, warmup=1)


# ----------------------------------------------------------------------------- thermometer

THERMOMETER_BATCHES = {"128x3x32x32": 128, "4096x3x32x32": 4096}


class _TorchThermometer(torch.autograd.Function):
    """The closed-form pure-torch contender: one comparison forward, masked sum backward."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return thermometer_reference(x, 16)

    @staticmethod
    def backward(ctx, grad_out):
        (x,) = ctx.saved_tensors
        return _soft_backward_reference(x, grad_out, 16)


@pytest.mark.parametrize("shape", list(THERMOMETER_BATCHES))
@pytest.mark.parametrize("contender", ["obfgrad", "torch"])
def test_thermometer_forward_backward(benchmark, shape, contender):
    benchmark.group = f"gpu thermometer fwd+bwd L=16 {shape}"
    n = THERMOMETER_BATCHES[shape]
    x = _images((n, 3, 32, 32), 2)
    grad_out = _images((n, 48, 32, 32), 3)
    encode = (lambda t: thermometer(t, 16)) if contender == "obfgrad" else _TorchThermometer.apply

    def step():
        leaf = x.detach().requires_grad_(True)
        encode(leaf).backward(grad_out)
        return leaf.grad

    measure(benchmark, step, rounds=20, warmup=3)


# ----------------------------------------------------------------------------- k-NN and quilting


@pytest.fixture(scope="module")
def natural_database():
    """1,000,000 5x5 patches of scikit-image's photographs (built once and cached under
    $OBFGRAD_CACHE/quilt; its GPU copy is cached by the database object)."""
    from obfgrad.data.patch_db import skimage_patch_database

    return skimage_patch_database(DATABASE_SIZE)


def _flat_on_gpu(database) -> torch.Tensor:
    return database.on_device(torch.device("cuda", torch.cuda.current_device()))[0]


@pytest.fixture(scope="module")
def query_images():
    """299x299 views of the astronaut photograph (not among the database's sources)."""
    import skimage.data
    from PIL import Image

    photo = skimage.data.astronaut()
    views = []
    for i in range(8):
        crop = photo[i * 20:, i * 25:]
        resized = Image.fromarray(crop.copy()).resize((299, 299), Image.BILINEAR)
        views.append(torch.from_numpy(np.asarray(resized, dtype=np.float32) / 255.0).permute(2, 0, 1))
    return torch.stack(views).contiguous().cuda()


def _cdist_topk(queries: torch.Tensor, database: torch.Tensor, k: int, chunk: int = 100_000):
    best_dist = best_index = None
    for start in range(0, database.shape[0], chunk):
        dist, index = torch.cdist(queries, database[start:start + chunk]).topk(k, dim=1, largest=False)
        index = index + start
        if best_dist is not None:
            dist, order = torch.cat([best_dist, dist], 1).topk(k, dim=1, largest=False)
            index = torch.gather(torch.cat([best_index, index], 1), 1, order)
        best_dist, best_index = dist, index
    return best_index, best_dist


@pytest.mark.parametrize("contender", ["obfgrad", "cdist_topk"])
def test_knn_9801_queries_1m_patches(benchmark, natural_database, query_images, contender):
    benchmark.group = "gpu knn 9801 queries x 75 dims x 1,000,000 patches, K=10"
    queries = _extract_patches(query_images[:1], 5, 3)
    assert queries.shape == (9801, 75)
    flat = _flat_on_gpu(natural_database)
    if contender == "obfgrad":
        fn = lambda: _knn_cuda(queries, flat, K)  # noqa: E731
    else:
        fn = lambda: _cdist_topk(queries, flat, K)  # noqa: E731
        exact, _ = _knn_cuda(queries, flat, K)
        approx, _ = fn()
        same = (approx.sort(1).values == exact.sort(1).values).all(1).float().mean()
        benchmark.extra_info["queries_with_exact_neighbours"] = float(same)
    measure(benchmark, fn, rounds=3, warmup=1)


@pytest.mark.parametrize("images", [1, 8])
def test_quilt_end_to_end(benchmark, natural_database, query_images, images):
    benchmark.group = "gpu quilt end to end 3x299x299, 1,000,000 patches"
    x = query_images[:images]
    median = measure(benchmark, lambda: quilt(x, natural_database, k=K, seed=0), rounds=3, warmup=1)
    benchmark.extra_info["ms_per_image"] = median / images
