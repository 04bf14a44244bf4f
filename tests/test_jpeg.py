"""JPEG round trip: the reference equals Pillow (libjpeg-turbo) bit for bit, the native kernel
equals the reference, the `linear` BPDA backward is the exact transpose of the rounding-free
round trip, the `identity` backward passes the gradient through, bad input is rejected."""

import importlib
import io

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from obfgrad import _native
from obfgrad.ops.jpeg_op import (
    SUBSAMPLINGS,
    jpeg,
    linear_surrogate,
    quantization_tables,
    reference,
)

# The module itself (obfgrad.ops may re-export the function under the same name).
jpeg_module = importlib.import_module("obfgrad.ops.jpeg_op")

QUALITIES = (10, 50, 75, 95)


# ----------------------------------------------------------------------------- oracles


def _to_uint8(x):
    """The documented input rule: floor(255 x + 0.5) in float32."""
    return torch.floor(x.to(torch.float32) * 255.0 + 0.5).to(torch.uint8)


def pillow_roundtrip(x, quality, subsampling="4:2:0", to_uint8=_to_uint8):
    """What ART and the paper do: Pillow save + open, one image at a time; returns uint8 NCHW."""
    options = {} if subsampling == "4:2:0" else {"subsampling": 0}
    decoded = []
    for image in to_uint8(x).permute(0, 2, 3, 1).numpy():
        buffer = io.BytesIO()
        Image.fromarray(image[..., 0] if image.shape[2] == 1 else image).save(
            buffer, format="jpeg", quality=quality, **options)
        array = np.asarray(Image.open(buffer))
        decoded.append(array[..., None] if array.ndim == 2 else array)
    return torch.from_numpy(np.stack(decoded)).permute(0, 3, 1, 2)


def as_uint8(y):
    """Outputs are v / 255 for integers v: recover v exactly."""
    return torch.round(y.to(torch.float64) * 255.0).to(torch.uint8)


def random_images(shape, seed=0):
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed))


def natural_images(size):
    """Crops of scikit-image's bundled photographs, (N, 3, size, size) in [0, 1]."""
    from skimage import data

    photos = [data.astronaut(), data.chelsea(), data.coffee()]
    crops = []
    for k, photo in enumerate(photos):
        top = (photo.shape[0] - size) * (k + 1) // 4
        left = (photo.shape[1] - size) * (3 - k) // 4
        crops.append(torch.from_numpy(photo[top:top + size, left:left + size].copy()))
    return torch.stack(crops).permute(0, 3, 1, 2).to(torch.float32) / 255.0


# ----------------------------------------------------------------------------- forward vs Pillow


@pytest.mark.parametrize("quality", QUALITIES)
@pytest.mark.parametrize("subsampling", ["4:2:0", "4:4:4"])
def test_reference_matches_pillow_on_random_images(quality, subsampling):
    # 37 x 45: neither side divisible by 8 or 16.
    x = random_images((3, 3, 37, 45), seed=quality)
    assert torch.equal(as_uint8(reference(x, quality, subsampling)), pillow_roundtrip(x, quality, subsampling))


@pytest.mark.parametrize("quality", QUALITIES)
def test_reference_matches_pillow_on_natural_crops(quality):
    x = natural_images(32)
    assert torch.equal(as_uint8(reference(x, quality)), pillow_roundtrip(x, quality))


@pytest.mark.parametrize("quality", QUALITIES)
@pytest.mark.parametrize("size", [32, 299])
def test_jpeg_matches_pillow_on_natural_images(quality, size):
    x = natural_images(size)
    assert torch.equal(as_uint8(jpeg(x, quality)), pillow_roundtrip(x, quality))


@pytest.mark.parametrize("quality", QUALITIES)
def test_jpeg_matches_pillow_on_grayscale(quality):
    x = random_images((4, 1, 21, 19), seed=quality)
    assert torch.equal(as_uint8(jpeg(x, quality)), pillow_roundtrip(x, quality))


@pytest.mark.parametrize("height,width", [(1, 1), (1, 2), (2, 1), (2, 2), (3, 5), (4, 4), (5, 6),
                                          (6, 5), (8, 8), (9, 9), (15, 17), (16, 16), (17, 15),
                                          (1, 40), (40, 1), (24, 7)])
def test_jpeg_matches_pillow_on_small_and_odd_sizes(height, width):
    # Covers the edge padding, odd chroma sizes and libjpeg-turbo's switch to plain 2x2
    # replication when the downsampled width is <= 2.
    x = random_images((2, 3, height, width), seed=height * 100 + width)
    for quality in (5, 75, 100):
        for subsampling in ("4:2:0", "4:4:4"):
            expected = pillow_roundtrip(x, quality, subsampling)
            assert torch.equal(as_uint8(jpeg(x, quality, subsampling=subsampling)), expected)


def test_every_quality_matches_pillow():
    x = random_images((1, 3, 17, 23), seed=7)
    for quality in range(1, 101):
        assert torch.equal(as_uint8(jpeg(x, quality)), pillow_roundtrip(x, quality)), quality


def test_quantization_tables_equal_pillows():
    x = random_images((1, 3, 8, 8))
    for quality in (1, 10, 24, 25, 50, 75, 95, 100):
        buffer = io.BytesIO()
        Image.fromarray(_to_uint8(x)[0].permute(1, 2, 0).numpy()).save(buffer, format="jpeg", quality=quality)
        tables = Image.open(buffer).quantization  # natural order in Pillow >= 8
        luma, chroma = quantization_tables(quality)
        assert luma.flatten().tolist() == list(tables[0])
        assert chroma.flatten().tolist() == list(tables[1])


# ----------------------------------------------------------------------------- native vs reference


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("subsampling", ["4:2:0", "4:4:4"])
@pytest.mark.parametrize("shape", [(1, 1), (2, 3), (7, 9), (16, 16), (31, 33), (61, 47)])
def test_native_matches_reference(channels, subsampling, shape):
    x = random_images((3, channels, *shape), seed=shape[0] * 7 + shape[1])
    for quality in (1, 10, 50, 75, 95, 100):
        assert torch.equal(jpeg(x, quality, subsampling=subsampling), reference(x, quality, subsampling))


@settings(max_examples=30, deadline=None)
@given(height=st.integers(1, 40), width=st.integers(1, 40), channels=st.sampled_from([1, 3]),
       quality=st.integers(1, 100), subsampling=st.sampled_from(SUBSAMPLINGS), seed=st.integers(0, 2**16))
def test_native_matches_reference_property(height, width, channels, quality, subsampling, seed):
    x = random_images((2, channels, height, width), seed=seed)
    assert torch.equal(jpeg(x, quality, subsampling=subsampling), reference(x, quality, subsampling))


def test_native_matches_reference_on_flat_and_extreme_images():
    # Saturated and flat inputs: the IDCT's range limit and the colour clamps are hit.
    black, white = torch.zeros(1, 3, 16, 16), torch.ones(1, 3, 16, 16)
    checker = (torch.arange(16)[:, None] + torch.arange(16)[None, :]) % 2
    stripes = torch.stack([checker, 1 - checker, checker]).float()[None]
    x = torch.cat([black, white, stripes, torch.full((1, 3, 16, 16), 0.5)])
    for quality in (1, 50, 100):
        assert torch.equal(jpeg(x, quality), reference(x, quality))
        assert torch.equal(as_uint8(jpeg(x, quality)), pillow_roundtrip(x, quality))


@pytest.mark.parametrize("batch", [0, 1, 5])
def test_batch_sizes(batch):
    x = random_images((batch, 3, 12, 10), seed=batch)
    y = jpeg(x)
    assert y.shape == x.shape and y.dtype == torch.float32
    if batch:
        assert torch.equal(y, reference(x))
        # Images are independent: each equals its own round trip.
        assert torch.equal(y[-1:], jpeg(x[-1:]))


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("subsampling", ["4:2:0", "4:4:4"])
def test_fewer_images_than_threads_share_rows_among_threads(channels, subsampling):
    # With fewer images than threads the CPU driver splits each image's rows and blocks among
    # the threads instead of giving each thread whole images.
    module = _native.native()
    if module is None:
        pytest.skip("native extension not built")
    previous = module.openmp_max_threads()
    module.set_num_threads(3)
    try:
        for shape in [(1, 1), (5, 7), (37, 45), (64, 48)]:
            x = random_images((2, channels, *shape), seed=shape[0])
            for quality in (10, 95):
                assert torch.equal(jpeg(x, quality, subsampling=subsampling), reference(x, quality, subsampling))
    finally:
        module.set_num_threads(previous)


def test_empty_images_pass_through():
    x = torch.rand(2, 3, 0, 5)
    assert jpeg(x).shape == x.shape


def test_output_is_on_the_8_bit_grid_and_keeps_dtype():
    x = random_images((2, 3, 9, 9)).double()
    y = jpeg(x)
    assert y.dtype == torch.float64
    assert torch.equal(y.float(), as_uint8(y).float() / 255.0)


def test_non_contiguous_input():
    x = random_images((2, 3, 12, 20))
    strided = x.transpose(2, 3)
    assert torch.equal(jpeg(strided), reference(strided.contiguous()))


@pytest.mark.parametrize("shape", [(11, 13), (3, 4), (6, 5), (1, 1)])
def test_reference_fallback_without_native(monkeypatch, shape):
    monkeypatch.setattr(_native, "native", lambda: None)
    x = random_images((2, 3, *shape), seed=3)
    assert torch.equal(jpeg(x), reference(x))
    x.requires_grad_(True)
    grad_out = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    jpeg(x, backward="linear").backward(grad_out)
    expected = torch.autograd.functional.vjp(linear_surrogate, x.detach().double(), grad_out.double())[1]
    torch.testing.assert_close(x.grad.double(), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("channels", [1, 3])
def test_references_keep_to_the_input_device(channels):
    # The fallbacks (used on CUDA without CuPy) must not mix in CPU tensors: on the meta device
    # any stray CPU tensor raises.
    x = torch.rand(2, channels, 13, 11, device="meta")
    for subsampling in SUBSAMPLINGS:
        assert reference(x, 75, subsampling).device.type == "meta"
        assert linear_surrogate(x, 75, subsampling).device.type == "meta"
        assert jpeg_module._linear_backward_reference(x, subsampling == "4:2:0").device.type == "meta"


def _truncate_as_the_authors(x):
    """Athalye et al.'s defend_jpeg: (x * 255.0).astype(np.uint8) on the HWC float32 array."""
    return torch.from_numpy((x.numpy() * 255.0).astype(np.uint8))


@pytest.mark.parametrize("shape", [(3, 3, 16, 16), (2, 3, 45, 37), (2, 1, 19, 8)])
def test_truncating_rounding_equals_pillow_fed_the_authors_uint8(shape):
    x = random_images(shape, seed=shape[2])  # off the 8-bit grid: the rounding rules disagree
    assert not torch.equal(_to_uint8(x), _truncate_as_the_authors(x))
    expected = pillow_roundtrip(x, 75, to_uint8=_truncate_as_the_authors)
    assert torch.equal(as_uint8(jpeg(x, 75, rounding="truncate")), expected)
    assert torch.equal(as_uint8(reference(x, 75, rounding="truncate")), expected)


def test_the_roundings_agree_on_8_bit_images_and_differ_off_them():
    levels = torch.randint(0, 256, (2, 3, 16, 16), generator=torch.Generator().manual_seed(1))
    on_grid = levels.to(torch.float32) / 255.0
    assert torch.equal(jpeg(on_grid, rounding="truncate"), jpeg(on_grid))
    off_grid = (on_grid + 0.7 / 255).clamp(0, 1)  # 0.7 of a level up: truncation keeps k, rounding k + 1
    assert not torch.equal(jpeg(off_grid, rounding="truncate"), jpeg(off_grid))
    assert torch.equal(jpeg(off_grid, rounding="truncate"), jpeg(on_grid))


def test_truncating_rounding_keeps_the_identity_backward():
    x = random_images((1, 3, 8, 8)).requires_grad_(True)
    grad_out = torch.randn(x.shape)
    jpeg(x, rounding="truncate").backward(grad_out)
    assert torch.equal(x.grad, grad_out)


def test_module_form():
    # The op's one nn.Module is the defense's JPEGCompression.
    from obfgrad.defenses import JPEGCompression

    module = JPEGCompression(50, backward="linear", subsampling="4:4:4")
    x = random_images((2, 3, 8, 8))
    assert torch.equal(module(x), jpeg(x, 50, subsampling="4:4:4"))
    assert "quality=50" in repr(module) and "backward='linear'" in repr(module)
    assert torch.equal(JPEGCompression(50, rounding="truncate")(x), jpeg(x, 50, rounding="truncate"))
    grad_out = torch.randn(x.shape, generator=torch.Generator().manual_seed(4))
    want = torch.autograd.functional.vjp(lambda v: linear_surrogate(v, 50, "4:4:4"), x.double(), grad_out.double())[1]
    for backend in ("native", "reference"):  # the registered linear backward, or BPDA over the surrogate
        leaf = x.clone().requires_grad_(True)
        JPEGCompression(50, backend=backend, backward="linear", subsampling="4:4:4")(leaf).backward(grad_out)
        torch.testing.assert_close(leaf.grad.double(), want, rtol=1e-5, atol=1e-6)


def test_opcheck():
    x = random_images((2, 3, 9, 11)).requires_grad_(True)
    for mode in (0, 1):
        torch.library.opcheck(torch.ops.obfgrad.jpeg_roundtrip.default, (x, 75, True, mode))
        torch.library.opcheck(torch.ops.obfgrad.jpeg_roundtrip.default, (x, 75, True, mode, True))
    torch.library.opcheck(torch.ops.obfgrad.jpeg_linear_backward.default, (torch.randn(2, 3, 9, 11), True))


# ----------------------------------------------------------------------------- backward


def test_identity_backward_passes_gradient_through():
    x = random_images((2, 3, 10, 10)).requires_grad_(True)
    grad_out = torch.randn(x.shape)
    jpeg(x, backward="identity").backward(grad_out)
    assert torch.equal(x.grad, grad_out)


SHAPES_FOR_BACKWARD = [(1, 1), (2, 3), (3, 4), (4, 5), (5, 7), (8, 8), (9, 6), (13, 11)]


@pytest.mark.parametrize("shape", SHAPES_FOR_BACKWARD)
@pytest.mark.parametrize("subsampling", ["4:2:0", "4:4:4"])
@pytest.mark.parametrize("channels", [1, 3])
def test_linear_backward_equals_autograd_through_rounding_free_reference(shape, subsampling, channels):
    generator = torch.Generator().manual_seed(shape[0] * 31 + shape[1])
    x = torch.rand((2, channels, *shape), generator=generator, dtype=torch.float64)
    grad_out = torch.randn(x.shape, generator=generator, dtype=torch.float64)
    leaf = x.clone().requires_grad_(True)
    linear_surrogate(leaf, 75, subsampling).backward(grad_out)
    leaf32 = x.float().requires_grad_(True)
    jpeg(leaf32, 75, subsampling=subsampling, backward="linear").backward(grad_out.float())
    torch.testing.assert_close(leaf32.grad.double(), leaf.grad, rtol=1e-5, atol=1e-6)


class _SurrogateWithKernelBackward(torch.autograd.Function):
    """Forward: the rounding-free round trip (float64); backward: the native linear kernel.
    gradcheck compares the kernel with the surrogate's numerical Jacobian."""

    @staticmethod
    def forward(ctx, x, subsampling):
        ctx.subsampling = subsampling
        return linear_surrogate(x, 75, subsampling)

    @staticmethod
    def backward(ctx, grad_out):
        grad = torch.ops.obfgrad.jpeg_linear_backward(grad_out, ctx.subsampling == "4:2:0")
        return grad.to(grad_out.dtype), None


@pytest.mark.parametrize("shape", [(3, 4), (5, 7), (6, 6)])
@pytest.mark.parametrize("subsampling", ["4:2:0", "4:4:4"])
def test_linear_backward_gradcheck(shape, subsampling):
    x = torch.rand((1, 3, *shape), dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    x.requires_grad_(True)
    # The kernel runs in float32: tolerances are float32's, far below any indexing error.
    assert torch.autograd.gradcheck(lambda t: _SurrogateWithKernelBackward.apply(t, subsampling), (x,),
                                    atol=1e-5, rtol=1e-4)


def test_linear_surrogate_is_close_to_the_real_round_trip_at_high_quality():
    # The surrogate is what JPEG does minus rounding: at quality 100 they differ by a few levels.
    x = natural_images(32)
    assert (linear_surrogate(x.double(), 100) - reference(x, 100).double()).abs().max() * 255 < 4


def test_linear_backward_is_linear_and_not_identity_for_colour():
    generator = torch.Generator().manual_seed(0)
    a, b = torch.randn(2, 1, 3, 12, 12, generator=generator)
    back = lambda g: torch.ops.obfgrad.jpeg_linear_backward(g, True)  # noqa: E731
    torch.testing.assert_close(back(2 * a + b), 2 * back(a) + back(b), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(back(a), a, atol=1e-3)


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("bad,error,match", [
    (torch.rand(3, 8, 8), ValueError, "4-D"),
    (torch.rand(1, 2, 8, 8), ValueError, "channels"),
    (torch.rand(1, 4, 8, 8), ValueError, "channels"),
    (torch.full((1, 3, 8, 8), float("nan")), ValueError, "NaN"),
    (torch.zeros(1, 3, 8, 8).index_put_((torch.tensor([0]),) * 4, torch.tensor(float("nan"))), ValueError, "NaN"),
    (torch.zeros(1, 1, 4, 4).index_put_((torch.tensor([0]),) * 4, torch.tensor(float("-inf"))), ValueError, "Inf"),
    (torch.rand(()), ValueError, "4-D"),
    (torch.full((1, 3, 8, 8), 1.5), ValueError, r"\[0, 1\]"),
    (torch.randint(0, 255, (1, 3, 8, 8)), TypeError, "floating-point"),
    (np.zeros((1, 3, 8, 8), np.float32), TypeError, "torch.Tensor"),
])
def test_bad_images_are_rejected(bad, error, match):
    with pytest.raises(error, match=match):
        jpeg(bad)


@pytest.mark.parametrize("kwargs,error,match", [
    ({"quality": 0}, ValueError, "quality"),
    ({"quality": 101}, ValueError, "quality"),
    ({"quality": 75.0}, TypeError, "quality"),
    ({"subsampling": "4:2:2"}, ValueError, "subsampling"),
    ({"backward": "bpda"}, ValueError, "backward"),
    ({"rounding": "floor"}, ValueError, "rounding"),
])
def test_bad_options_are_rejected(kwargs, error, match):
    with pytest.raises(error, match=match):
        jpeg(torch.rand(1, 3, 8, 8), **kwargs)


def test_native_driver_rechecks_sizes():
    module = _native.native()
    if module is None:
        pytest.skip("native extension not built")
    luma, chroma = (t.flatten().numpy() for t in quantization_tables(75))
    x = torch.rand(1, 3, 8, 8)
    with pytest.raises(ValueError, match="out"):
        module.jpeg_forward(x.numpy(), torch.empty(1, 3, 8, 9).numpy(), luma, chroma, True)
    with pytest.raises(ValueError, match="luma_table"):
        module.jpeg_forward(x.numpy(), torch.empty_like(x).numpy(), luma[:10], chroma, True)
    with pytest.raises(ValueError, match="channels"):
        module.jpeg_forward(torch.rand(1, 2, 8, 8).numpy(), torch.empty(1, 2, 8, 8).numpy(), luma, chroma, True)


# ----------------------------------------------------------------------------- CUDA


def test_cuda_driver_compiles_with_nvrtc(nvrtc):
    for arch in ("sm_80", "sm_90"):
        assert len(_native.compile_cuda_source("jpeg", arch)) > 0


@pytest.mark.parametrize("channels,shape,subsampling", [(3, (13, 11), "4:2:0"), (3, (9, 4), "4:2:0"),
                                                       (3, (10, 9), "4:4:4"), (1, (11, 10), "4:2:0")])
def test_cuda_driver_on_host_equals_the_reference(cuda_on_host, channels, shape, subsampling):
    # The CUDA driver's kernels, compiled for the CPU (tests/cuda_host_shim.py) and run through
    # the op's own CUDA path: same results as the reference, forward and linear backward.
    x = random_images((2, channels, *shape), seed=11)
    luma, chroma = quantization_tables(50)
    out = jpeg_module._forward_cuda(x, luma, chroma, subsampling == "4:2:0")
    assert torch.equal(out, jpeg_module._forward_impl(x, 50, subsampling == "4:2:0"))  # the CPU driver
    assert torch.equal(out, reference(x, 50, subsampling))
    grad_out = torch.randn(x.shape, generator=torch.Generator().manual_seed(2))
    grad = jpeg_module._linear_backward_cuda(grad_out, subsampling == "4:2:0")
    assert torch.equal(grad, jpeg_module._backward_impl(grad_out, subsampling == "4:2:0"))
    launched = cuda_on_host.kernels_launched("jpeg")
    assert {"jpeg_encode_luma", "jpeg_roundtrip_blocks", "jpeg_decode"} <= launched
    assert ("jpeg_linear_backward" in launched) == (channels == 3)  # grayscale: the gradient is copied


@pytest.mark.gpu
@pytest.mark.parametrize("subsampling", ["4:2:0", "4:4:4"])
@pytest.mark.parametrize("channels", [1, 3])
def test_cuda_matches_cpu(subsampling, channels):
    x = random_images((4, channels, 37, 45), seed=channels)
    for quality in QUALITIES:
        on_cuda = jpeg(x.cuda(), quality, subsampling=subsampling).cpu()
        assert torch.equal(on_cuda, jpeg(x, quality, subsampling=subsampling))


@pytest.mark.gpu
def test_cuda_linear_backward_matches_cpu():
    x = random_images((2, 3, 13, 11)).requires_grad_(True)
    grad_out = torch.randn(x.shape)
    jpeg(x, backward="linear").backward(grad_out)
    xc = x.detach().cuda().requires_grad_(True)
    jpeg(xc, backward="linear").backward(grad_out.cuda())
    assert torch.equal(xc.grad.cpu(), x.grad)
