"""Thermometer encoding with its BPDA backward.

Buckman, Roy, Raffel & Goodfellow, "Thermometer Encoding: One Hot Way To Resist Adversarial
Examples" (ICLR 2018) quantise each pixel into ``L`` levels and feed the network the cumulative
one-hot ("thermometer") code. The encoding is piecewise constant, so its gradient is zero almost
everywhere: a shattered gradient. Athalye, Carlini & Wagner (ICML 2018, Section 5.1) break it
with BPDA: forward through the true encoding, backward through the soft thermometer

.. math::  \\hat\\tau(x)_k = \\min(\\max(s x - k + 1, 0), 1),\\qquad s = L\\cdot 255/256,

which for ``L = 16`` is the repository's ``clip((x_{255} - 16(k-1))/16, 0, 1)``.

``backward="soft_255"`` evaluates that relaxation as Athalye et al.'s attack graph does
(``thermometer/robustml_attack.py``), on the 0-255 scale in float32:
``clip((255 x - c_k) / w, 0, 1)`` with ``w = 256/L``, ``c_k = w (k - 1)``. It is the same function
up to rounding, which matters only within a few ulps of a ramp's ends (``255 x = 16 m`` for
``L = 16``), where it decides whether a component counts. Measured on the authors' golden
arrays (``tests/test_authors_golden.py``; their sweep of 9,216 values on the 0-255 scale fed as
``x = x255 / 255``): ``"soft_255"`` reproduces every gradient entry exactly, ``"soft"`` all but one
(at ``x255 = 16 - 1 ulp``, off by ``G/16``, the opposite sign). (Fed ``x255 * float32(1/255)``,
which does not map back to ``x255``, both differ at about 90 entries: there the scale conversion's
rounding decides.) ``"soft"`` stays the default (the smoke profile's numbers); the paper profile
uses ``"soft_255"``.

Forward (the discrete encoding, ``discretize_uniform`` of the paper's repository):

.. math::  b(x) = \\lfloor 0.99999\\, L\\, x \\rfloor,\\qquad \\tau(x)_k = [\\, b(x) \\ge k \\,],
           \\quad k = 0, \\dots, L-1.

Output layout: ``(N, C, H, W) -> (N, C*L, H, W)``; output channel ``c*L + k`` is bit ``k`` of
input channel ``c`` (the ``L`` bits of one channel are contiguous). Bit 0 is always 1.

Inputs must lie in ``[0, 1]``: values outside are rejected with ``ValueError`` (not clamped), so
a caller that forgot to normalise 0-255 images gets an error instead of a saturated code.
The computation is float32; float16/bfloat16/float64 inputs are converted and the output has
the input's dtype.
"""

from __future__ import annotations

import torch

from obfgrad import _native
from obfgrad._checks import (
    check_choice,
    check_float32_images,
    check_image_batch,
    check_images,
    check_int,
)

__all__ = ["thermometer", "thermometer_reference", "soft_thermometer_reference", "BACKWARD_MODES"]

#: BPDA backward choices: the paper's soft-thermometer derivative, or straight-through
#: (d bit_k / dx = 1 for every k).
BACKWARD_MODES = ("soft", "straight_through", "soft_255")
_MODE_CODE = {"soft": 0, "straight_through": 1, "soft_255": 2}


def _scale(levels: int, device: torch.device) -> torch.Tensor:
    # One float32 product, rounded exactly as the kernel's `0.99999f * L`.
    return torch.tensor(0.99999, dtype=torch.float32, device=device) * float(levels)


def _soft_slope(levels: int) -> float:
    return levels * 255.0 / 256.0  # exact in float32 for any practical L


def _level_index(levels: int, device: torch.device) -> torch.Tensor:
    return torch.arange(levels, dtype=torch.float32, device=device).view(1, 1, levels, 1, 1)


def thermometer_reference(x: torch.Tensor, levels: int = 16) -> torch.Tensor:
    """Pure-torch discrete encoding: the oracle in tests and the fallback without ``_C``."""
    check_image_batch(x, "x")
    check_int(levels, "levels", low=2)
    x = x.to(torch.float32).clamp(0.0, 1.0)
    n, c, h, w = x.shape
    buckets = torch.floor(x * _scale(levels, x.device))
    bits = (buckets.unsqueeze(2) >= _level_index(levels, x.device)).to(torch.float32)
    return bits.reshape(n, c * levels, h, w)


def _ramp_starts_255(levels: int, device: torch.device) -> torch.Tensor:
    # c_k = (256/L) (k - 1) in float64, then float32: the authors' numpy constant fed to TF.
    starts = (256.0 / levels) * torch.arange(-1, levels - 1, dtype=torch.float64, device=device)
    return starts.to(torch.float32).view(1, 1, levels, 1, 1)


def soft_thermometer_reference(x: torch.Tensor, levels: int = 16, scale: str = "unit") -> torch.Tensor:
    """The differentiable relaxation the BPDA backward differentiates (same layout):
    ``scale="unit"`` for ``backward="soft"``, ``"255"`` for ``"soft_255"`` (the authors'
    float32 evaluation on the 0-255 scale)."""
    check_image_batch(x, "x")
    check_int(levels, "levels", low=2)
    check_choice(scale, "scale", ("unit", "255"))  # any other once ran as "unit"
    n, c, h, w = x.shape
    if scale == "255":
        width = torch.tensor(256.0 / levels, dtype=torch.float32).item()
        t = (x.unsqueeze(2) * 255.0 - _ramp_starts_255(levels, x.device)) / width
    else:
        t = _soft_slope(levels) * x.unsqueeze(2) - _level_index(levels, x.device).to(x.dtype) + 1.0
    return t.clamp(0.0, 1.0).reshape(n, c * levels, h, w)


def _straight_through_backward_reference(grad_out: torch.Tensor, levels: int) -> torch.Tensor:
    n, cl, h, w = grad_out.shape
    return grad_out.reshape(n, cl // levels, levels, h, w).sum(dim=2)


def _soft_backward_reference(x: torch.Tensor, grad_out: torch.Tensor, levels: int) -> torch.Tensor:
    # Autograd through soft_thermometer_reference, written out: slope * (sum of the gradients of
    # the components whose clamp is inactive). Same order of operations as autograd uses.
    n, c, h, w = x.shape
    t = _soft_slope(levels) * x.unsqueeze(2) - _level_index(levels, x.device) + 1.0
    active = (t >= 0.0) & (t <= 1.0)
    masked = grad_out.reshape(n, c, levels, h, w) * active
    return masked.sum(dim=2) * _soft_slope(levels)


# ----------------------------------------------------------------------------- dispatch



def _forward_cuda(x: torch.Tensor, levels: int) -> torch.Tensor:
    n, c, h, w = x.shape
    out = torch.empty((n, c * levels, h, w), dtype=torch.float32, device=x.device)
    _native.launch_cuda("thermometer", "thermometer_forward", x.numel(),
                        (x, out, x.numel(), h * w, levels, float(_scale(levels, torch.device("cpu")))),
                        device=x.device)
    return out


def _backward_cuda(x: torch.Tensor, grad_out: torch.Tensor, levels: int, mode: int) -> torch.Tensor:
    grad_in = torch.empty_like(x)
    _native.launch_cuda("thermometer", "thermometer_backward", x.numel(),
                        (x, grad_out, grad_in, x.numel(), x.shape[2] * x.shape[3], levels,
                         _soft_slope(levels), mode), device=x.device)
    return grad_in


def _forward_impl(x: torch.Tensor, levels: int) -> torch.Tensor:
    # The kernels index a dense NCHW buffer: any other layout (channels_last, a slice) is copied
    # first, and the output is allocated contiguous, so every layout gives the same answer.
    x = x.contiguous()
    n, c, h, w = x.shape
    backend = _native.choose_backend("thermometer", x.device)
    if backend == "cuda":
        return _forward_cuda(x, levels)
    if backend == "reference":
        return thermometer_reference(x, levels)
    out = torch.empty((n, c * levels, h, w), dtype=torch.float32)
    _native.native().thermometer_forward(x.numpy(), out.numpy(), levels)
    return out


def _soft_255_backward_reference(x: torch.Tensor, grad_out: torch.Tensor, levels: int) -> torch.Tensor:
    # Autograd through soft_thermometer_reference(scale="255"), written out: divide each active
    # component's gradient by w, sum over k, scale by 255 (autograd's order).
    n, c, h, w = x.shape
    width = torch.tensor(256.0 / levels, dtype=torch.float32).item()
    t = (x.clamp(0.0, 1.0).unsqueeze(2) * 255.0 - _ramp_starts_255(levels, x.device)) / width
    active = (t >= 0.0) & (t <= 1.0)
    return ((grad_out.reshape(n, c, levels, h, w) * active) / width).sum(dim=2) * 255.0


def _backward_impl(x: torch.Tensor, grad_out: torch.Tensor, levels: int, mode: int) -> torch.Tensor:
    x, grad_out = x.contiguous(), grad_out.contiguous()
    backend = _native.choose_backend("thermometer", x.device)
    if backend == "cuda":
        return _backward_cuda(x, grad_out, levels, mode)
    if backend == "reference":
        if mode == _MODE_CODE["straight_through"]:
            return _straight_through_backward_reference(grad_out, levels)
        if mode == _MODE_CODE["soft_255"]:
            return _soft_255_backward_reference(x, grad_out, levels)
        return _soft_backward_reference(x, grad_out, levels)
    grad_in = torch.empty(x.shape, dtype=torch.float32)
    _native.native().thermometer_backward(x.numpy(), grad_out.numpy(), grad_in.numpy(), levels, mode)
    return grad_in


# ----------------------------------------------------------------------------- torch ops


def _check_op_arguments(x: torch.Tensor, levels: int, mode: int) -> None:
    # The registered ops are callable directly (torch.ops.obfgrad.*): check what the kernels rely on.
    check_float32_images(x, "x")
    check_int(levels, "levels", low=2)
    check_choice(mode, "mode", tuple(_MODE_CODE.values()))


@torch.library.custom_op("obfgrad::thermometer_encode", mutates_args=())
def _encode_op(x: torch.Tensor, levels: int, mode: int) -> torch.Tensor:
    _check_op_arguments(x, levels, mode)
    return _forward_impl(x, levels)


@_encode_op.register_fake
def _encode_fake(x: torch.Tensor, levels: int, mode: int) -> torch.Tensor:
    _check_op_arguments(x, levels, mode)
    n, c, h, w = x.shape
    return x.new_empty((n, c * levels, h, w))


@torch.library.custom_op("obfgrad::thermometer_bpda_backward", mutates_args=())
def _backward_op(x: torch.Tensor, grad_out: torch.Tensor, levels: int, mode: int) -> torch.Tensor:
    _check_op_arguments(x, levels, mode)
    _check_grad_out(x, grad_out, levels)
    return _backward_impl(x, grad_out, levels, mode)


@_backward_op.register_fake
def _backward_fake(x: torch.Tensor, grad_out: torch.Tensor, levels: int, mode: int) -> torch.Tensor:
    _check_op_arguments(x, levels, mode)
    _check_grad_out(x, grad_out, levels)
    return x.new_empty(x.shape)


def _check_grad_out(x: torch.Tensor, grad_out: torch.Tensor, levels: int) -> None:
    n, c, h, w = x.shape
    if grad_out.dtype != torch.float32 or tuple(grad_out.shape) != (n, c * levels, h, w):
        raise ValueError(f"grad_out: expected float32 of shape {(n, c * levels, h, w)}, "
                         f"got {grad_out.dtype} {tuple(grad_out.shape)}")


def _setup_context(ctx, inputs, output):
    x, levels, mode = inputs
    ctx.save_for_backward(x)
    ctx.levels = levels
    ctx.mode = mode


def _encode_backward(ctx, grad_out):
    (x,) = ctx.saved_tensors
    return _backward_op(x, grad_out, ctx.levels, ctx.mode), None, None


torch.library.register_autograd("obfgrad::thermometer_encode", _encode_backward, setup_context=_setup_context)


def thermometer(x: torch.Tensor, levels: int = 16, *, backward: str = "soft") -> torch.Tensor:
    """Thermometer-encode a batch of images; the gradient is the paper's BPDA approximation.

    Args:
        x: images in ``[0, 1]``, any float dtype (computed in float32).
        levels: number of quantisation levels ``L >= 2`` (Buckman et al. and Table 1 use 16).
        backward: ``"soft"`` (default, the paper's choice): the gradient of the soft
            thermometer, ``slope = L*255/256`` where ``0 <= slope*x - k + 1 <= 1``, else 0;
            ``"straight_through"``: every bit's derivative is 1, so ``grad_x = sum_k grad_k``;
            ``"soft_255"``: the soft thermometer evaluated as Athalye et al.'s attack graph
            (``thermometer/robustml_attack.py``) on the 0-255 scale, ``255/w`` where
            ``0 <= (255 x - w (k - 1)) / w <= 1`` in float32, ``w = 256/L`` (the paper profile's).

    Shape:
        ``(N, C, H, W) -> (N, C*L, H, W)``; channel ``c*L + k`` is bit ``k`` of channel ``c``.

    Example:
        >>> import torch
        >>> from obfgrad.ops.thermometer_op import thermometer
        >>> x = torch.tensor([[[[0.0, 0.5, 1.0]]]])  # 0.5 sits on a boundary: 0.99999 rounds it down
        >>> thermometer(x, levels=4)[0, :, 0, :]
        tensor([[1., 1., 1.],
                [0., 1., 1.],
                [0., 0., 1.],
                [0., 0., 1.]])
        >>> x.requires_grad_(True)
        tensor([[[[0.0000, 0.5000, 1.0000]]]], requires_grad=True)
        >>> thermometer(x, levels=4).sum().backward()
        >>> x.grad
        tensor([[[[7.9688, 3.9844, 0.0000]]]])
    """
    check_images(x, "x")
    check_int(levels, "levels", low=2)
    check_choice(backward, "backward", BACKWARD_MODES)
    out = _encode_op(x.to(torch.float32).contiguous(), levels, _MODE_CODE[backward])
    return out if x.dtype == torch.float32 else out.to(x.dtype)
