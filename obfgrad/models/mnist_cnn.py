"""The MNIST classifier of Table 1 row 7 (Defense-GAN), as built by the authors'
``defensegan/mnist_cnn.py`` (Keras):

    Conv64 3×3 ReLU -> Conv128 3×3 ReLU -> MaxPool 2 -> Conv128 3×3 ReLU -> Dropout 0.25
    -> Flatten -> Dense128 ReLU -> Dropout 0.5 -> Dense10

Keras's defaults carry over: 'valid' convolutions (28 -> 26 -> 24 -> 12 -> 10, so the flattened
vector has 128·10·10 = 12,800 values), Glorot-uniform weights and zero biases. The softmax of
the Keras model is left out: the module returns logits. The authors trained it with Adadelta,
batch 128, 20 epochs.
"""

from __future__ import annotations

import torch
from torch import nn


def glorot_init_(module: nn.Module) -> nn.Module:
    """Keras's default initialisation: Glorot-uniform weights, zero biases, for every conv and
    dense layer of ``module`` (in place)."""
    for layer in module.modules():
        if isinstance(layer, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(layer.weight)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
    return module


class MnistCNN(nn.Module):
    """Defense-GAN's MNIST CNN; logits for float32 N×1×28×28 inputs in [0, 1].

    Example:
        >>> MnistCNN()(torch.rand(2, 1, 28, 28)).shape
        torch.Size([2, 10])
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, image_size: int = 28):
        super().__init__()
        side = (image_size - 4) // 2 - 2  # two valid convs, pool 2, one valid conv
        self.layers = nn.Sequential(
            nn.Conv2d(in_channels, 64, 3), nn.ReLU(),
            nn.Conv2d(64, 128, 3), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(128, 128, 3), nn.ReLU(),
            nn.Dropout(0.25),
            nn.Flatten(),
            nn.Linear(128 * side * side, 128), nn.ReLU(),
            nn.Dropout(0.5),
            nn.Linear(128, num_classes),
        )
        glorot_init_(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)
