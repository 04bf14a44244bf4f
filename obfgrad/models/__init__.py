"""Architectures of the paper's classifiers and the smoke profile's small nets.

``build_model(arch, **kwargs)`` builds one by name; the name and kwargs are what a training
recipe records (``recipe["arch"]``, ``recipe["arch_kwargs"]``).
"""

from __future__ import annotations

from typing import Callable, Dict

from torch import nn

from obfgrad.models.inception_v3 import InceptionV3
from obfgrad.models.lid_cnn import LidCNN
from obfgrad.models.mnist_cnn import MnistCNN
from obfgrad.models.small_cnn import SmallCNN
from obfgrad.models.wide_resnet import WideResNet

MODELS: Dict[str, Callable[..., nn.Module]] = {
    "wide_resnet": WideResNet,  # rows 1, 4, 6, 8 (Madry's CIFAR wide ResNet)
    "lid_cnn": LidCNN,  # row 2
    "mnist_cnn": MnistCNN,  # row 7
    "small_cnn": SmallCNN,  # smoke profile
    "inception_v3": InceptionV3,  # rows 3, 5 (Guo et al., Xie et al.; ImageNet)
}

from obfgrad.models.pixelcnn import PixelCNN  # noqa: E402
from obfgrad.models.wgan import Generator  # noqa: E402

MODELS["pixelcnn"] = PixelCNN  # row 6 (PixelDefend's density model)
MODELS["wgan_generator"] = Generator  # row 7 (Defense-GAN's generator)


def build_model(arch: str, **kwargs) -> nn.Module:
    """A fresh model of architecture ``arch`` (one of :data:`MODELS`).

    Example:
        >>> build_model("small_cnn", width=8).__class__.__name__
        'SmallCNN'
    """
    if arch not in MODELS:
        raise ValueError(f"arch: expected one of {', '.join(map(repr, MODELS))}, got {arch!r}")
    return MODELS[arch](**kwargs)


__all__ = ["MODELS", "build_model", "InceptionV3", "LidCNN", "MnistCNN", "SmallCNN", "WideResNet"]
