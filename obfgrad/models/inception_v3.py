"""InceptionV3 (Szegedy et al., "Rethinking the Inception Architecture for Computer Vision",
CVPR 2016) in plain torch: the ImageNet classifier of Table 1's Guo et al. and Xie et al. rows.

The layer names follow the paper's figure labels as the common checkpoints spell them
(``Conv2d_1a_3x3`` ... ``Mixed_7c``, ``fc``; each conv is ``conv`` + ``bn`` with eps 1e-3), so a
state dict saved from torchvision's ``inception_v3`` loads with :func:`load_inception_weights`
(its auxiliary head is dropped: it only matters for training), and so does a TF-slim checkpoint
converted to these names (1001 logits, class 0 "background", dropped).

Input: float32 images in [0, 1], any size (bilinearly resized to 299x299, as the repo's
``inceptionv3.py`` does), then mapped to the network's input scale. Both weight formats the
Table 1 rows accept expect ``"tf"``, ``2x - 1`` per channel ([-1, 1]):

* TF-slim's InceptionV3 (Athalye et al.'s checkpoint) is trained on [-1, 1] inputs;
* torchvision's pretrained ``inception_v3`` (weights ported from TF) is documented as
  ``Normalize(mean, std)`` followed by the model built with ``transform_input=True``, whose first
  step (``Inception3._transform_input``) maps channel c of the normalised input back by
  ``z * std_c / 0.5 + (mean_c - 0.5) / 0.5``: composed with the normalisation that is exactly
  ``(x - 0.5) / 0.5 = 2x - 1``.

``"mean_std"`` (ImageNet mean/std normalisation, nothing else) is for a checkpoint trained on
normalised inputs without that step (torchvision's ``transform_input=False``); ``"none"`` feeds
the input unchanged (the caller scales).
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Mapping, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from obfgrad._checks import check_choice, check_int

__all__ = ["InceptionV3", "load_inception_weights", "pretrained_inception", "INPUT_SCALINGS"]

INPUT_SCALINGS = ("tf", "mean_std", "none")
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
Kernel = Union[int, Tuple[int, int]]


class _ConvBN(nn.Module):
    """conv (no bias) -> batch norm (eps 1e-3) -> ReLU, the unit every Inception block is made of."""

    def __init__(self, cin: int, cout: int, kernel: Kernel, stride: int = 1, padding: Kernel = 0):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _avg_pool_3x3(x: torch.Tensor) -> torch.Tensor:
    return F.avg_pool2d(x, 3, stride=1, padding=1)


class _BlockA(nn.Module):
    """35x35 block (paper Fig. 5): 1x1 | 1x1-5x5 | 1x1-3x3-3x3 | pool-1x1."""

    def __init__(self, cin: int, pool_features: int):
        super().__init__()
        self.branch1x1 = _ConvBN(cin, 64, 1)
        self.branch5x5_1 = _ConvBN(cin, 48, 1)
        self.branch5x5_2 = _ConvBN(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = _ConvBN(cin, 64, 1)
        self.branch3x3dbl_2 = _ConvBN(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = _ConvBN(96, 96, 3, padding=1)
        self.branch_pool = _ConvBN(cin, pool_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([
            self.branch1x1(x),
            self.branch5x5_2(self.branch5x5_1(x)),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            self.branch_pool(_avg_pool_3x3(x)),
        ], 1)


class _ReductionA(nn.Module):
    """35x35 -> 17x17 grid reduction (paper Fig. 10)."""

    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3 = _ConvBN(cin, 384, 3, stride=2)
        self.branch3x3dbl_1 = _ConvBN(cin, 64, 1)
        self.branch3x3dbl_2 = _ConvBN(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = _ConvBN(96, 96, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([
            self.branch3x3(x),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            F.max_pool2d(x, 3, stride=2),
        ], 1)


class _BlockB(nn.Module):
    """17x17 block with factorised 7x7 convolutions (paper Fig. 6)."""

    def __init__(self, cin: int, mid: int):
        super().__init__()
        self.branch1x1 = _ConvBN(cin, 192, 1)
        self.branch7x7_1 = _ConvBN(cin, mid, 1)
        self.branch7x7_2 = _ConvBN(mid, mid, (1, 7), padding=(0, 3))
        self.branch7x7_3 = _ConvBN(mid, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = _ConvBN(cin, mid, 1)
        self.branch7x7dbl_2 = _ConvBN(mid, mid, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = _ConvBN(mid, mid, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = _ConvBN(mid, mid, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = _ConvBN(mid, 192, (1, 7), padding=(0, 3))
        self.branch_pool = _ConvBN(cin, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seven = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        double = self.branch7x7dbl_1(x)
        for layer in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            double = layer(double)
        return torch.cat([self.branch1x1(x), seven, double, self.branch_pool(_avg_pool_3x3(x))], 1)


class _ReductionB(nn.Module):
    """17x17 -> 8x8 grid reduction."""

    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3_1 = _ConvBN(cin, 192, 1)
        self.branch3x3_2 = _ConvBN(192, 320, 3, stride=2)
        self.branch7x7x3_1 = _ConvBN(cin, 192, 1)
        self.branch7x7x3_2 = _ConvBN(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = _ConvBN(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = _ConvBN(192, 192, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seven = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([self.branch3x3_2(self.branch3x3_1(x)), seven, F.max_pool2d(x, 3, stride=2)], 1)


class _BlockC(nn.Module):
    """8x8 block with expanded filter banks (paper Fig. 7)."""

    def __init__(self, cin: int):
        super().__init__()
        self.branch1x1 = _ConvBN(cin, 320, 1)
        self.branch3x3_1 = _ConvBN(cin, 384, 1)
        self.branch3x3_2a = _ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = _ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = _ConvBN(cin, 448, 1)
        self.branch3x3dbl_2 = _ConvBN(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = _ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = _ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = _ConvBN(cin, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        three = self.branch3x3_1(x)
        double = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        return torch.cat([
            self.branch1x1(x),
            self.branch3x3_2a(three), self.branch3x3_2b(three),
            self.branch3x3dbl_3a(double), self.branch3x3dbl_3b(double),
            self.branch_pool(_avg_pool_3x3(x)),
        ], 1)


class InceptionV3(nn.Module):
    """InceptionV3 logits for float32 Nx3xHxW images in [0, 1].

    Args:
        num_classes: outputs of the final layer (1000; 1001 for TF-slim checkpoints).
        drop_background: drop logit 0 (TF-slim's "background" class), as the repo's
            ``inceptionv3.py`` does, leaving 1000 ImageNet classes.
        input_scaling: ``"tf"`` ([0, 1] -> [-1, 1]: TF-slim and torchvision's pretrained
            weights), ``"mean_std"`` ((x - mean) / std) or ``"none"`` (see the module docstring).
        image_size: side the input is bilinearly resized to (299).

    Example:
        >>> import torch
        >>> InceptionV3(num_classes=10).eval()(torch.rand(1, 3, 75, 75)).shape
        torch.Size([1, 10])
    """

    def __init__(self, num_classes: int = 1000, drop_background: bool = False, input_scaling: str = "tf",
                 image_size: int = 299):
        super().__init__()
        self.num_classes = check_int(num_classes, "num_classes", low=2)
        self.drop_background = bool(drop_background)
        if input_scaling == "torchvision":  # the old name, which invited feeding pretrained weights wrongly
            raise ValueError("input_scaling: 'torchvision' is ambiguous; torchvision's pretrained weights "
                             "(transform_input=True) expect 'tf' ([-1, 1]); use 'mean_std' for a checkpoint "
                             "trained on mean/std-normalised input without transform_input")
        self.input_scaling = check_choice(input_scaling, "input_scaling", INPUT_SCALINGS)
        self.image_size = check_int(image_size, "image_size", low=75)
        self.Conv2d_1a_3x3 = _ConvBN(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = _ConvBN(32, 32, 3)
        self.Conv2d_2b_3x3 = _ConvBN(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = _ConvBN(64, 80, 1)
        self.Conv2d_4a_3x3 = _ConvBN(80, 192, 3)
        self.Mixed_5b = _BlockA(192, 32)
        self.Mixed_5c = _BlockA(256, 64)
        self.Mixed_5d = _BlockA(288, 64)
        self.Mixed_6a = _ReductionA(288)
        self.Mixed_6b = _BlockB(768, 128)
        self.Mixed_6c = _BlockB(768, 160)
        self.Mixed_6d = _BlockB(768, 160)
        self.Mixed_6e = _BlockB(768, 192)
        self.Mixed_7a = _ReductionB(768)
        self.Mixed_7b = _BlockC(1280)
        self.Mixed_7c = _BlockC(2048)
        self.fc = nn.Linear(2048, num_classes)

    def _scale_input(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (self.image_size, self.image_size):
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
        if self.input_scaling == "tf":
            return 2.0 * x - 1.0
        if self.input_scaling == "none":
            return x
        mean = x.new_tensor(_IMAGENET_MEAN).view(1, 3, 1, 1)
        std = x.new_tensor(_IMAGENET_STD).view(1, 3, 1, 1)
        return (x - mean) / std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._scale_input(x)
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, 3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, 3, stride=2)
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b, self.Mixed_6c,
                      self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b, self.Mixed_7c):
            x = block(x)
        logits = self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))  # dropout: identity in eval
        return logits[:, 1:] if self.drop_background else logits


def _state_dict_of(source: Union[str, Path, Mapping[str, torch.Tensor]]) -> Dict[str, torch.Tensor]:
    state = source if isinstance(source, Mapping) else torch.load(source, map_location="cpu", weights_only=True)
    if isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        where = source if not isinstance(source, Mapping) else "state"
        raise ValueError(f"path: {where} is not a state dict of tensors")
    return {key: value for key, value in state.items() if not key.startswith("AuxLogits.")}


def load_inception_weights(model: InceptionV3, path: Union[str, Path, Mapping[str, torch.Tensor]]) -> InceptionV3:
    """Load a state dict (a file, e.g. saved from torchvision's ``inception_v3``, or a mapping)
    into ``model``.

    Auxiliary-head entries (``AuxLogits.*``) are ignored; any other missing or unexpected key is
    an error naming the keys.
    """
    state = _state_dict_of(path)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"path: {path} does not fit InceptionV3: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return model


def pretrained_inception(source: Union[str, Path, Mapping[str, torch.Tensor]], image_size: int = 299) -> InceptionV3:
    """InceptionV3 with pretrained ImageNet weights, fed [0, 1] images: torchvision's
    ``inception_v3`` state dict (1000 logits) or a TF-slim checkpoint converted to the same names
    (1001 logits; the background logit is dropped). Both are scaled ``"tf"`` (2x - 1; see the
    module docstring for why that is torchvision's documented pipeline too).

    Example:
        >>> state = InceptionV3(num_classes=1001, image_size=75).state_dict()
        >>> pretrained_inception(state, image_size=75).eval()(torch.rand(1, 3, 75, 75)).shape
        torch.Size([1, 1000])
    """
    state = _state_dict_of(source)
    if "fc.weight" not in state:
        raise ValueError("source: no 'fc.weight': not an InceptionV3 state dict in torchvision's key names")
    classes = int(state["fc.weight"].shape[0])
    if classes not in (1000, 1001):
        raise ValueError(f"source: expected 1000 (torchvision) or 1001 (TF-slim) logits, got {classes}")
    model = InceptionV3(num_classes=classes, drop_background=classes == 1001, input_scaling="tf",
                        image_size=image_size)
    return load_inception_weights(model, state)
