"""Madry et al.'s CIFAR-10 wide ResNet (MadryLab/cifar10_challenge ``model.py``), the classifier
of Table 1 rows 1 (thermometer encoding, 48 input channels), 4 (SAP), 6 (PixelDefend) and 8
(PGD adversarial training).

Layout at paper scale (``tiny=False`` in the authors' ``thermometer/cifar_model.py``):

* optional per-image standardisation of the input;
* stem: 3×3 conv, ``in_channels`` -> 16;
* 3 stages of 5 pre-activation residual units, widths 160 / 320 / 640, strides 1 / 2 / 2;
  each unit is BN -> leaky ReLU(0.1) -> conv3×3 -> BN -> leaky ReLU(0.1) -> conv3×3, plus a
  shortcut that, where the width changes, average-pools by the stride and zero-pads channels
  (half the new channels before, half after). The first unit of stage 1 applies its BN+ReLU
  to the shortcut as well ("activate_before_residual");
* final BN -> leaky ReLU(0.1) -> global average pool -> fully connected to 10 logits.

Batch norm uses TF's decay 0.9 (PyTorch momentum 0.1) and ``epsilon`` 1e-3 (the default of
``tf.contrib.layers.batch_norm``). Convolutions are initialised N(0, 2/(k·k·out)) as in Madry's
``_conv``.

Inputs here are in [0, 1]. Madry's TF model took pixels on the 0–255 scale and applied
``tf.image.per_image_standardization``; standardisation is invariant to that scale (up to its
floor of 1/sqrt(#values) on the standard deviation, which matters only for near-constant
images), so ``standardize=True`` (the default) reproduces the original input pipeline.
Differences from TF: 'SAME' padding of the stride-2 convolutions pads (0, 1) in TF and (1, 1)
here.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F

_LEAK = 0.1
_BN_MOMENTUM = 0.1  # = 1 - TF decay 0.9
_BN_EPS = 1e-3


def per_image_standardization(x: torch.Tensor) -> torch.Tensor:
    """``(x - mean) / max(std, 1/sqrt(n))`` per image over its n = C·H·W values, as
    ``tf.image.per_image_standardization`` (population standard deviation)."""
    flat = x.flatten(1)
    mean = flat.mean(dim=1, keepdim=True)
    std = flat.std(dim=1, unbiased=False, keepdim=True)
    floor = 1.0 / math.sqrt(flat.shape[1])
    return ((flat - mean) / std.clamp_min(floor)).view_as(x)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=_BN_EPS, momentum=_BN_MOMENTUM)


def _conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)


class ResidualUnit(nn.Module):
    """One pre-activation unit of Madry's ``_residual``."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, activate_before_residual: bool):
        super().__init__()
        self.activate_before_residual = activate_before_residual
        self.stride = stride
        self.pad_channels = out_channels - in_channels
        self.bn1 = _bn(in_channels)
        self.conv1 = _conv3x3(in_channels, out_channels, stride)
        self.bn2 = _bn(out_channels)
        self.conv2 = _conv3x3(out_channels, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        activated = F.leaky_relu(self.bn1(x), _LEAK)
        shortcut = activated if self.activate_before_residual else x
        out = self.conv1(activated)
        out = self.conv2(F.leaky_relu(self.bn2(out), _LEAK))
        if self.pad_channels:
            shortcut = F.avg_pool2d(shortcut, self.stride, self.stride) if self.stride > 1 else shortcut
            half = self.pad_channels // 2
            shortcut = F.pad(shortcut, (0, 0, 0, 0, half, self.pad_channels - half))
        return out + shortcut


class WideResNet(nn.Module):
    """Madry's CIFAR wide ResNet; logits for float32 N×C×32×32 inputs in [0, 1].

    Args:
        in_channels: 3 for images, 48 for 16-level thermometer-encoded images (row 1).
        widths: widths of the three stages; (160, 320, 640) at paper scale, (16, 32, 64)
            for the authors' "tiny" variant.
        units_per_stage: residual units per stage (5 at paper scale, 2 in "tiny").
        num_classes: logits.
        standardize: apply per-image standardisation first (Madry's pipeline).

    Example:
        >>> net = WideResNet(widths=(8, 16, 32), units_per_stage=1)
        >>> net(torch.rand(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """

    def __init__(self, in_channels: int = 3, widths: Sequence[int] = (160, 320, 640), units_per_stage: int = 5,
                 num_classes: int = 10, standardize: bool = True, stem_width: int = 16):
        super().__init__()
        if len(widths) != 3 or units_per_stage < 1:
            raise ValueError(f"widths: expected three stage widths and units_per_stage >= 1, "
                             f"got {widths}, {units_per_stage}")
        self.standardize = standardize
        self.stem = _conv3x3(in_channels, stem_width)
        units = []
        previous = stem_width
        for stage, (width, stride) in enumerate(zip(widths, (1, 2, 2))):
            for index in range(units_per_stage):
                first = index == 0
                units.append(ResidualUnit(previous, width, stride if first else 1,
                                          activate_before_residual=first and stage == 0))
                previous = width
        self.units = nn.Sequential(*units)
        self.final_bn = _bn(previous)
        self.fc = nn.Linear(previous, num_classes)
        self._init_like_madry()

    def _init_like_madry(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels
                nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / fan_out))
        # uniform_unit_scaling_initializer(1.0): U(-sqrt(3/fan_in), sqrt(3/fan_in))
        bound = math.sqrt(3.0 / self.fc.in_features)
        nn.init.uniform_(self.fc.weight, -bound, bound)
        nn.init.zeros_(self.fc.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.standardize:
            x = per_image_standardization(x)
        out = self.units(self.stem(x))
        out = F.leaky_relu(self.final_bn(out), _LEAK)
        return self.fc(out.mean(dim=(2, 3)))
