"""Thermometer forward + BPDA backward, N=128, 3x32x32, 16 levels (issue: native >= 3x the
fastest pure-torch formulation). Compare with:

    nox -s bench -- -k thermometer

Contenders (same inputs, same upstream gradient, medians of rounds):
  * native: obfgrad.ops.thermometer_op (C++ kernel forward, C++ BPDA backward);
  * torch_paper: the formulation of the paper's notebook in torch - compare against the
    thresholds for the forward, autograd through the soft relaxation for the backward;
  * torch_fast: one broadcast comparison for the forward and the closed-form masked sum (no
    autograd graph) for the backward;
  * torch_gather: as torch_fast, but the backward gathers only the <= 3 planes that can be
    active (the native kernel's trick).
The README's ratio is native against the fastest of the torch contenders in the same run.
"""

import pytest
import torch

from obfgrad.ops.thermometer_op import (
    _soft_backward_reference,
    soft_thermometer_reference,
    thermometer,
    thermometer_reference,
)

LEVELS = 16
SHAPE = (128, 3, 32, 32)


@pytest.fixture(scope="module")
def inputs():
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(SHAPE, generator=generator)
    grad_out = torch.randn(SHAPE[0], SHAPE[1] * LEVELS, *SHAPE[2:], generator=generator)
    return x, grad_out


def native_forward_backward(x, grad_out):
    leaf = x.detach().requires_grad_(True)
    thermometer(leaf, LEVELS).backward(grad_out)
    return leaf.grad


def torch_paper_forward_backward(x, grad_out):
    leaf = x.detach().requires_grad_(True)
    hard = thermometer_reference(leaf, LEVELS)
    soft = soft_thermometer_reference(leaf, LEVELS)
    # BPDA in the notebook's style: the value of `hard`, the gradient of `soft`.
    (soft + (hard - soft).detach()).backward(grad_out)
    return leaf.grad


class _FastTorchThermometer(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return thermometer_reference(x, LEVELS)

    @staticmethod
    def backward(ctx, grad_out):
        (x,) = ctx.saved_tensors
        return _soft_backward_reference(x, grad_out, LEVELS)


def torch_fast_forward_backward(x, grad_out):
    leaf = x.detach().requires_grad_(True)
    _FastTorchThermometer.apply(leaf).backward(grad_out)
    return leaf.grad


class _GatherTorchThermometer(_FastTorchThermometer):
    """Backward reads only the <= 3 planes that can be active (k = f, f+1, f+2, f = floor(s*x)),
    the same trick as the native kernel, with torch.gather."""

    @staticmethod
    def backward(ctx, grad_out):
        (x,) = ctx.saved_tensors
        n, c, h, w = x.shape
        slope = LEVELS * 255.0 / 256.0
        grads = grad_out.reshape(n, c, LEVELS, h, w)
        first = torch.floor(slope * x).long()
        total = torch.zeros_like(x)
        for offset in range(3):
            k = first + offset
            valid = k <= LEVELS - 1
            kc = k.clamp(max=LEVELS - 1)
            t = slope * x - kc.to(x.dtype) + 1.0
            active = valid & (t >= 0.0) & (t <= 1.0)
            total = total + torch.gather(grads, 2, kc.unsqueeze(2)).squeeze(2) * active
        return total * slope


def torch_gather_forward_backward(x, grad_out):
    leaf = x.detach().requires_grad_(True)
    _GatherTorchThermometer.apply(leaf).backward(grad_out)
    return leaf.grad


CONTENDERS = {
    "native": native_forward_backward,
    "torch_paper": torch_paper_forward_backward,
    "torch_fast": torch_fast_forward_backward,
    "torch_gather": torch_gather_forward_backward,
}


@pytest.mark.parametrize("contender", list(CONTENDERS))
def test_thermometer_forward_backward(benchmark, inputs, contender):
    x, grad_out = inputs
    fn = CONTENDERS[contender]
    benchmark.group = "thermometer fwd+bwd 128x3x32x32 L=16"
    grad = benchmark.pedantic(fn, args=(x, grad_out), rounds=30, warmup_rounds=3, iterations=1)
    # Every contender computes the same gradient.
    torch.testing.assert_close(grad, native_forward_backward(x, grad_out))


# -- one step of the Table 1 row's adaptive attack (moved here from reproduce/rows/thermometer.py) --------------------
# BPDA through the soft thermometer, CW margin, Adam on sign(grad), on the smoke row's model shape
# (small CNN on the 16-channel code of 28x28x1 images, 100 examples): the native op against
# BPDA over the pure-torch reference encoding. Untrained weights: the step's cost does not
# depend on them (no early stop).

ATTACK_EXAMPLES, ATTACK_STEPS, ATTACK_EPS = 100, 5, 0.1


def _attacked_model(backend: str) -> torch.nn.Module:
    from obfgrad.attacks import BPDA
    from obfgrad.defenses import ThermometerDefense
    from obfgrad.models import build_model

    torch.manual_seed(0)
    classifier = build_model("small_cnn", in_channels=LEVELS, width=16, image_size=28).eval()
    if backend == "native":
        return ThermometerDefense(classifier, LEVELS)
    return torch.nn.Sequential(BPDA(lambda v: thermometer_reference(v, LEVELS),
                                    lambda v: soft_thermometer_reference(v, LEVELS)), classifier)


@pytest.mark.parametrize("backend", ["native", "reference"])
def test_thermometer_adaptive_attack_step(benchmark, backend):
    from obfgrad.attacks import PGD

    generator = torch.Generator().manual_seed(0)
    x = torch.rand(ATTACK_EXAMPLES, 1, 28, 28, generator=generator)
    y = torch.randint(0, 10, (ATTACK_EXAMPLES,), generator=generator)
    model = _attacked_model(backend)
    attack = PGD(distance="linf", eps=ATTACK_EPS, steps=ATTACK_STEPS, step_size=ATTACK_EPS / 8, loss="margin",
                 update="adam_sign", kappa=None, early_stop=False)
    benchmark.group = f"thermometer row: adaptive attack, {ATTACK_STEPS} steps, {ATTACK_EXAMPLES}x1x28x28 L=16"
    result = benchmark.pedantic(attack, args=(model, x, y), rounds=5, warmup_rounds=1, iterations=1)
    assert result.x_adv.shape == x.shape and float((result.x_adv - x).abs().max()) <= ATTACK_EPS + 1e-6
