"""Thermometer encoding: native == reference, the BPDA backward is exactly the stated gradient,
bad input is rejected, and gradients flow end to end."""

import pytest
import torch

from obfgrad import _native
from obfgrad.defenses import Thermometer
from obfgrad.ops.thermometer_op import (
    soft_thermometer_reference,
    thermometer,
    thermometer_reference,
)


def _random_images(shape, seed=0, dtype=torch.float32):
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=generator, dtype=dtype)


def _bucket_boundaries(levels):
    """Every x where the bucket or the soft relaxation changes, and its float32 neighbours."""
    exact = torch.arange(levels + 1, dtype=torch.float64) / levels
    soft = torch.arange(levels + 1, dtype=torch.float64) / (levels * 255.0 / 256.0)
    points = torch.cat([exact, soft, exact / 0.99999]).to(torch.float32).clamp(0, 1)
    below = torch.nextafter(points, torch.zeros_like(points))
    above = torch.nextafter(points, torch.ones_like(points))
    return torch.cat([points, below, above, torch.tensor([0.0, 1.0])]).clamp(0, 1)


def test_backend_is_native_when_required(monkeypatch):
    # CI sets OBFGRAD_REQUIRE_NATIVE=1: the extension must load there.
    info = _native.backend_info()
    if info["cpu"]["native"]:
        assert info["cpu"]["openmp_threads"] >= 1
    else:
        monkeypatch.setenv("OBFGRAD_REQUIRE_NATIVE", "1")
        with pytest.raises(RuntimeError, match="OBFGRAD_REQUIRE_NATIVE"):
            _native.native()


@pytest.mark.parametrize("levels", [2, 3, 16, 33])
@pytest.mark.parametrize("shape", [(4, 3, 32, 32), (1, 1, 5, 7), (2, 2, 1, 1)])
def test_forward_matches_reference_on_random_inputs(levels, shape):
    x = _random_images(shape, seed=levels)
    assert torch.equal(thermometer(x, levels), thermometer_reference(x, levels))


@pytest.mark.parametrize("levels", [2, 16, 256])
def test_forward_matches_reference_on_every_boundary(levels):
    x = _bucket_boundaries(levels).view(1, 1, 1, -1)
    assert torch.equal(thermometer(x, levels), thermometer_reference(x, levels))


def test_encoding_definition_on_known_values():
    # floor(0.99999 * 16 * x): 0 -> 0, 0.5 -> 7 (just below the boundary 8), 1 -> 15.
    x = torch.tensor([0.0, 0.0625, 0.5, 1.0]).view(1, 1, 1, 4)
    bits = thermometer(x, 16)[0, :, 0, :]  # (16 levels, 4 pixels)
    assert bits.sum(dim=0).tolist() == [1.0, 1.0, 8.0, 16.0]
    assert torch.all(bits[0] == 1)  # bit 0 is always set
    # Thermometer property: bits are non-increasing in k.
    assert torch.all(bits[1:] <= bits[:-1])


def test_channel_layout_keeps_each_channels_bits_together():
    x = torch.zeros(1, 3, 2, 2)
    x[0, 1] = 1.0  # only channel 1 is bright
    out = thermometer(x, 4)
    assert torch.all(out[0, 4:8] == 1)  # channel 1 -> output channels 4..7
    assert torch.all(out[0, [0, 8]] == 1) and torch.all(out[0, [1, 2, 3, 9, 10, 11]] == 0)


def test_non_contiguous_and_other_dtypes():
    x = _random_images((3, 4, 9, 8), seed=3)
    strided = x.permute(0, 1, 3, 2)  # non-contiguous view
    assert not strided.is_contiguous()
    assert torch.equal(thermometer(strided, 16), thermometer_reference(strided.contiguous(), 16))
    x64 = x.double()
    out64 = thermometer(x64, 16)
    assert out64.dtype == torch.float64
    assert torch.equal(out64.float(), thermometer_reference(x64.float(), 16))


@pytest.mark.parametrize("batch", [0, 1])
def test_small_batches(batch):
    x = _random_images((batch, 3, 4, 4))
    out = thermometer(x, 16)
    assert out.shape == (batch, 48, 4, 4)
    assert torch.equal(out, thermometer_reference(x, 16))
    x.requires_grad_(True)
    thermometer(x, 16).sum().backward()
    assert x.grad.shape == x.shape


def _grid_255_boundaries(levels):
    """The 0-255 scale's ramp ends 256 m / L as x = x255 / 255 (the authors' scale), with their
    float32 neighbours, and every 8-bit value k / 255."""
    ends = (256.0 / levels) * torch.arange(levels + 1, dtype=torch.float64)
    ends = torch.cat([ends.to(torch.float32).clamp(0, 255), torch.arange(256, dtype=torch.float32)])
    ends = torch.cat([ends, torch.nextafter(ends, torch.zeros_like(ends)), torch.nextafter(ends, ends + 1)])
    return (ends.clamp(0, 255) / 255.0).clamp(0, 1)


@pytest.mark.parametrize("levels", [2, 16, 33])
@pytest.mark.parametrize("backward, scale, boundaries, grad_seed", [
    ("soft", "unit", _bucket_boundaries, 1),  # the relaxation's own kinks
    ("soft_255", "255", _grid_255_boundaries, 2),  # the authors' relaxation on the 0-255 scale
])
def test_soft_backward_equals_autograd_through_its_relaxation(levels, backward, scale, boundaries, grad_seed):
    x = torch.cat([_random_images((2, 3, 6, 6), seed=levels).flatten(), boundaries(levels)])
    x = x.view(1, 1, 1, -1)
    grad_out = torch.randn(1, levels, 1, x.shape[-1], generator=torch.Generator().manual_seed(grad_seed))
    leaf = x.clone().requires_grad_(True)
    thermometer(leaf, levels, backward=backward).backward(grad_out)
    ref = x.clone().requires_grad_(True)
    soft_thermometer_reference(ref, levels, scale=scale).backward(grad_out)
    assert torch.equal(leaf.grad, ref.grad)


def test_soft_255_counts_both_ramps_where_they_meet_on_the_0_255_grid():
    # x255 = 16 m: level m ends its ramp and level m + 1 starts, both with slope 255/16; the last
    # level's ramp ends at 240, above which nothing ramps.
    x = (torch.tensor([0.0, 16.0, 224.0, 17.5, 240.0, 250.0]) / 255.0).view(1, 1, 1, 6).requires_grad_(True)
    thermometer(x, 16, backward="soft_255").sum().backward()
    assert x.grad.flatten().tolist() == [2 * 255 / 16, 2 * 255 / 16, 2 * 255 / 16, 255 / 16, 255 / 16, 0.0]


def test_soft_and_soft_255_agree_away_from_the_ramp_ends():
    x = _random_images((2, 3, 16, 16), seed=12)
    x255 = x * 255.0
    away = ((x255 / 16.0) - torch.round(x255 / 16.0)).abs() > 1e-3
    grad_out = torch.randn(2, 48, 16, 16, generator=torch.Generator().manual_seed(5))
    grads = []
    for mode in ("soft", "soft_255"):
        leaf = x.clone().requires_grad_(True)
        thermometer(leaf, 16, backward=mode).backward(grad_out)
        grads.append(leaf.grad)
    torch.testing.assert_close(grads[0][away], grads[1][away], rtol=1e-5, atol=1e-5)


def test_soft_gradient_is_the_stated_slope():
    # Away from boundaries exactly one soft component is on its ramp, with slope 16*255/256.
    x = torch.tensor([0.3]).view(1, 1, 1, 1).requires_grad_(True)
    thermometer(x, 16).sum().backward()
    assert x.grad.item() == pytest.approx(16 * 255 / 256)


def test_straight_through_backward_sums_the_bits_gradients():
    x = _random_images((2, 3, 5, 5), seed=4).requires_grad_(True)
    grad_out = torch.randn(2, 48, 5, 5, generator=torch.Generator().manual_seed(2))
    thermometer(x, 16, backward="straight_through").backward(grad_out)
    expected = grad_out.view(2, 3, 16, 5, 5).sum(dim=2)
    torch.testing.assert_close(x.grad, expected, rtol=1e-6, atol=1e-6)


def test_relaxation_is_smooth_where_it_claims_gradcheck():
    # gradcheck of the relaxation itself (float64) at points away from its kinks.
    x = torch.tensor([0.11, 0.37, 0.52, 0.83], dtype=torch.float64).view(1, 1, 1, 4).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: soft_thermometer_reference(t, 16), (x,))


@pytest.mark.parametrize("backward", ["soft", "soft_255"])
def test_fallback_reference_backward_matches_native(monkeypatch, backward):
    x = torch.cat([_random_images((2, 3, 7, 7), seed=5).flatten(), _grid_255_boundaries(16)]).view(1, 1, 1, -1)
    grad_out = torch.randn(1, 16, 1, x.shape[-1], generator=torch.Generator().manual_seed(3))
    native_leaf = x.clone().requires_grad_(True)
    thermometer(native_leaf, 16, backward=backward).backward(grad_out)
    monkeypatch.setattr(_native, "native", lambda: None)
    fallback_leaf = x.clone().requires_grad_(True)
    out = thermometer(fallback_leaf, 16, backward=backward)
    assert torch.equal(out, thermometer_reference(x, 16))
    out.backward(grad_out)
    assert torch.equal(native_leaf.grad, fallback_leaf.grad)


def test_gradient_reaches_pixels_through_a_conv_net():
    torch.manual_seed(0)
    net = torch.nn.Sequential(Thermometer(16), torch.nn.Conv2d(48, 8, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 10))
    x = _random_images((4, 3, 16, 16), seed=6).requires_grad_(True)
    loss = torch.nn.functional.cross_entropy(net(x), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert (x.grad != 0).float().mean() > 0.5


def test_opcheck_schema_fake_and_autograd_registration():
    x = _random_images((2, 3, 4, 4), seed=7)
    torch.library.opcheck(torch.ops.obfgrad.thermometer_encode.default, (x, 16, 0))
    torch.library.opcheck(torch.ops.obfgrad.thermometer_encode.default, (x, 16, 2))


def test_torch_compile_traces_the_op():
    compiled = torch.compile(lambda t: thermometer(t, 16).sum(dim=1), backend="eager", fullgraph=False)
    x = _random_images((2, 3, 4, 4), seed=8)
    assert torch.equal(compiled(x), thermometer_reference(x, 16).sum(dim=1))


@pytest.mark.parametrize(
    "bad, error, match",
    [
        (torch.rand(3, 32, 32), ValueError, "x: expected a 4-D"),
        (torch.randint(0, 255, (1, 3, 4, 4)), TypeError, "x: expected a floating-point"),
        (torch.full((1, 1, 2, 2), float("nan")), ValueError, "x: contains NaN"),
        (torch.full((1, 1, 2, 2), float("inf")), ValueError, "x: contains NaN or Inf"),
        (torch.full((1, 1, 2, 2), 1.5), ValueError, r"x: expected values in \[0, 1\]"),
        (torch.full((1, 1, 2, 2), -0.01), ValueError, r"x: expected values in \[0, 1\]"),
        ([[0.5]], TypeError, "x: expected a torch.Tensor"),
    ],
)
def test_bad_input_is_rejected_naming_the_argument(bad, error, match):
    with pytest.raises(error, match=match):
        thermometer(bad)


@pytest.mark.parametrize("levels", [1, 0, -3])
def test_levels_below_two_are_rejected(levels):
    with pytest.raises(ValueError, match="levels: expected an int >= 2"):
        thermometer(torch.rand(1, 1, 2, 2), levels)


def test_unknown_backward_mode_is_rejected():
    with pytest.raises(ValueError, match="backward: expected one of"):
        thermometer(torch.rand(1, 1, 2, 2), backward="identity")


def test_native_driver_rechecks_buffer_shapes():
    module = _native.native()
    if module is None:
        pytest.skip("native extension not built")
    x = torch.rand(1, 3, 4, 4)
    with pytest.raises(ValueError, match="out: expected shape"):
        module.thermometer_forward(x.numpy(), torch.empty(1, 47, 4, 4).numpy(), 16)
    with pytest.raises(ValueError, match="grad_in: expected shape"):
        module.thermometer_backward(x.numpy(), torch.empty(1, 48, 4, 4).numpy(), torch.empty(1, 3, 4, 5).numpy(), 16, 0)
    with pytest.raises(ValueError, match="levels"):
        module.thermometer_forward(x.numpy(), torch.empty(1, 3, 4, 4).numpy(), 1)


def test_cuda_driver_compiles_without_warnings(nvrtc):
    for arch in ("sm_80", "sm_90"):
        assert len(_native.compile_cuda_source("thermometer", arch)) > 0


@pytest.mark.gpu
@pytest.mark.parametrize("backward", ["soft", "soft_255"])
def test_cuda_matches_cpu_bit_for_bit(backward):
    x = _random_images((4, 3, 32, 32), seed=9)
    x[0, 0, 0, :16] = torch.arange(0, 256, 16, dtype=torch.float32) / 255.0  # ramp ends on the 0-255 grid
    grad_out = torch.randn(4, 48, 32, 32, generator=torch.Generator().manual_seed(4))
    cpu_leaf, gpu_leaf = x.clone().requires_grad_(True), x.cuda().requires_grad_(True)
    cpu_out, gpu_out = thermometer(cpu_leaf, 16, backward=backward), thermometer(gpu_leaf, 16, backward=backward)
    assert torch.equal(cpu_out, gpu_out.cpu())
    cpu_out.backward(grad_out)
    gpu_out.backward(grad_out.cuda())
    assert torch.equal(cpu_leaf.grad, gpu_leaf.grad.cpu())


# ----------------------------------------------------------------------------- CUDA driver on the host


@pytest.mark.parametrize("levels", [2, 7, 16])
@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (2, 3, 5, 7), (3, 1, 9, 4)])
def test_cuda_driver_on_host_equals_the_cpu_driver(cuda_on_host, levels, shape):
    # csrc/cuda/thermometer.cu compiled for the CPU, launched through the op's own CUDA path
    # (packing, signature check, grid): forward and both BPDA backwards equal the CPU driver's,
    # on random values and on every bucket boundary.
    from obfgrad.ops import thermometer_op as module

    if _native.native() is None:
        pytest.skip("native extension not built")
    x = _random_images(shape, seed=levels).flatten()
    edges = _bucket_boundaries(levels)
    x[: min(len(x), len(edges))] = edges[: len(x)]
    x = x.view(shape)
    grad_out = torch.randn(shape[0], shape[1] * levels, *shape[2:], generator=torch.Generator().manual_seed(1))
    assert torch.equal(module._forward_cuda(x, levels), module._forward_impl(x, levels))
    for mode in (0, 1):
        assert torch.equal(module._backward_cuda(x, grad_out, levels, mode),
                           module._backward_impl(x, grad_out, levels, mode))
    assert cuda_on_host.kernels_launched("thermometer") == set(_native.kernel_signatures("thermometer"))
