"""Every op on CUDA tensors equals the CPU driver bit for bit: forward, BPDA backward, odd
shapes, the Philox streams (TV's mask, quilting's pick), torch's current stream.

Skipped with a reason where torch sees no CUDA device (tests/conftest.py); ``tools/gpu_check.py`` runs them (with
the per-op CUDA tests of the other files: ``pytest -m gpu``) on a GPU machine. Without a GPU the
same drivers run through the host emulation in each op's test file."""

import numpy as np
import pytest
import torch

from obfgrad import _native
from obfgrad.data.patch_db import search_projections
from obfgrad.ops.jpeg_op import jpeg
from obfgrad.ops.quilt_op import _extract_patches, _knn_cuda, knn_reference, quilt
from obfgrad.ops.thermometer_op import thermometer
from obfgrad.ops.tv_op import tv_mask, tv_minimize

pytestmark = pytest.mark.gpu

ODD_SHAPES = [(1, 3, 1, 1), (2, 3, 9, 4), (3, 1, 17, 13), (1, 3, 37, 45)]
SEED = 2**40 + 7  # both 32-bit halves of the Philox key in use


def _images(shape, seed=0):
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed))


def _forward_and_grad(op, x, grad_out, **kwargs):
    leaf = x.clone().requires_grad_(True)
    out = op(leaf, **kwargs)
    out.backward(grad_out)
    return out.detach().cpu(), leaf.grad.cpu()


def _same_on_gpu(op, x, grad_shape=None, **kwargs):
    grad_out = torch.randn(grad_shape or x.shape, generator=torch.Generator().manual_seed(3))
    cpu_out, cpu_grad = _forward_and_grad(op, x, grad_out, **kwargs)
    gpu_out, gpu_grad = _forward_and_grad(op, x.cuda(), grad_out.cuda(), **kwargs)
    assert torch.equal(gpu_out, cpu_out)
    assert torch.equal(gpu_grad, cpu_grad)


@pytest.mark.parametrize("backward", ["soft", "straight_through"])
@pytest.mark.parametrize("levels", [2, 16])
@pytest.mark.parametrize("shape", ODD_SHAPES)
def test_thermometer(shape, levels, backward):
    n, c, h, w = shape
    _same_on_gpu(thermometer, _images(shape, levels), (n, c * levels, h, w), levels=levels, backward=backward)


@pytest.mark.parametrize("backward", ["identity", "linear"])
@pytest.mark.parametrize("subsampling", ["4:2:0", "4:4:4"])
@pytest.mark.parametrize("shape", ODD_SHAPES)
def test_jpeg(shape, subsampling, backward):
    for quality in (10, 75):
        _same_on_gpu(jpeg, _images(shape, quality), quality=quality, subsampling=subsampling, backward=backward)


@pytest.mark.parametrize("sweep", ["red_black", "raster"])
@pytest.mark.parametrize("shape", ODD_SHAPES)
def test_tv(shape, sweep):
    x = _images(shape, 1)
    cpu, cpu_iterations = tv_minimize(x, 0.5, seed=SEED, sweep=sweep, return_iterations=True)
    gpu, gpu_iterations = tv_minimize(x.cuda(), 0.5, seed=SEED, sweep=sweep, return_iterations=True)
    assert torch.equal(gpu_iterations.cpu(), cpu_iterations)
    assert torch.equal(gpu.cpu(), cpu)
    _same_on_gpu(tv_minimize, x, keep_prob=0.5, seed=SEED, sweep=sweep)  # BPDA: the identity


@pytest.mark.parametrize("keep_prob", [0.1, 0.5, 0.9])
def test_tv_mask_philox_stream(keep_prob):
    for shape in [(1, 1, 1, 1), (3, 3, 31, 17), (2, 1, 64, 65)]:
        gpu = tv_mask(torch.zeros(shape, device="cuda"), keep_prob, seed=SEED)
        assert torch.equal(gpu.cpu(), tv_mask(shape, keep_prob, seed=SEED))


@pytest.mark.parametrize("k", [1, 10])
@pytest.mark.parametrize("shape,size", [((2, 3, 26, 31), 5), ((1, 1, 7, 9), 4), ((1, 3, 14, 17), 5)])
def test_quilt_with_the_pick_stream(shape, size, k):
    # Sizes that need edge padding and exactly tiled ones; several seeds exercise the pick.
    generator = torch.Generator().manual_seed(k)
    database = torch.rand(700, shape[1], size, size, generator=generator)
    x = torch.rand(shape, generator=generator)
    overlap = 2 if size == 5 else 1
    for seed in (0, 17, SEED):
        cpu = quilt(x, database, k=k, overlap=overlap, seed=seed)
        gpu = quilt(x.cuda(), database.cuda(), k=k, overlap=overlap, seed=seed)
        assert torch.equal(gpu.cpu(), cpu)


def test_quilt_backward_is_the_identity_on_gpu():
    x = _images((1, 3, 14, 17), 4).cuda().requires_grad_(True)
    grad_out = torch.randn(x.shape, device="cuda")
    quilt(x, torch.rand(300, 3, 5, 5, device="cuda"), seed=1).backward(grad_out)
    assert torch.equal(x.grad, grad_out)


def test_knn_with_ties_many_query_blocks_and_splits():
    rng = np.random.default_rng(5)
    database = (rng.integers(0, 3, (20_000, 75)) / 2).astype(np.float32)  # most distances tie
    database[[19_000, 3, 7_001]] = database[500]
    queries = np.concatenate([database[[500, 5]], rng.random((1_000, 75), dtype=np.float32)])
    q, db = torch.from_numpy(queries), torch.from_numpy(database)
    index, dist = _knn_cuda(q.cuda(), db.cuda(), 10)
    want_index, want_dist = knn_reference(q, db, 10)
    assert torch.equal(index.cpu(), want_index)
    assert torch.equal(dist.cpu(), want_dist)
    assert index[0, :4].tolist() == [3, 500, 7_001, 19_000]


def test_knn_of_a_paper_size_image_equals_the_cpu_search():
    # 99 x 99 = 9,801 queries of one 299x299 image against 50,000 patches: the CPU driver's
    # pruned search and the GPU's brute force return the same neighbours and distances.
    module = _native.native()
    if module is None:
        pytest.skip("obfgrad._C is not built")
    generator = torch.Generator().manual_seed(9)
    database = torch.rand(50_000, 3, 5, 5, generator=generator)
    queries = _extract_patches(torch.rand(1, 3, 299, 299, generator=generator), 5, 3)
    flat = database.reshape(50_000, -1).contiguous()
    index = np.empty((len(queries), 10), np.int64)
    dist = np.empty((len(queries), 10), np.float32)
    module.quilt_knn(queries.numpy(), flat.numpy(), (flat * flat).sum(1).numpy(),
                     search_projections(flat.numpy(), 3), 3, 10, index, dist)
    gpu_index, gpu_dist = _knn_cuda(queries.cuda(), flat.cuda(), 10)
    assert np.array_equal(gpu_index.cpu().numpy(), index)
    assert np.array_equal(gpu_dist.cpu().numpy(), dist)


def test_ops_run_on_torchs_current_stream():
    x = _images((4, 3, 64, 64), 2)
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        xs = x.to("cuda", non_blocking=False)
        outs = [thermometer(xs, 16), jpeg(xs, 75), tv_minimize(xs, 0.5, seed=1)]
    side.synchronize()
    assert torch.equal(outs[0].cpu(), thermometer(x, 16))
    assert torch.equal(outs[1].cpu(), jpeg(x, 75))
    assert torch.equal(outs[2].cpu(), tv_minimize(x, 0.5, seed=1))


def test_backend_info_lists_the_compiled_kernels():
    thermometer(_images((1, 3, 4, 4)).cuda(), 16)
    info = _native.backend_info()["cuda"]
    assert info["torch_cuda_available"] and info["nvrtc"]
    major, minor = torch.cuda.get_device_capability()
    assert f"thermometer@sm_{major}{minor}" in info["compiled_kernels"]
