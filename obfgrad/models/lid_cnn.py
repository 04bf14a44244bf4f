"""The CIFAR-10 CNN of Table 1 row 2 (Ma et al.'s LID detector), as built by
``lid/util.py:get_model('cifar')`` in the authors' repository (Keras):

    [Conv32 ReLU Conv32 ReLU MaxPool] [Conv64 ReLU Conv64 ReLU MaxPool]
    [Conv128 ReLU Conv128 ReLU MaxPool] Flatten Dropout0.5 Dense1024 ReLU Dropout0.5
    Dense512 ReLU Dropout0.5 Dense10 (Softmax)

All convolutions are 3×3 'same'; the two hidden dense layers carry Keras ``l2(0.01)`` on
kernel and bias (:meth:`LidCNN.regularization_loss`, added to the training loss by
:func:`obfgrad.models.training.train`). The original took inputs in [-0.5, 0.5]; this module
takes [0, 1] and subtracts 0.5 first.

LID is computed on every layer's output: :meth:`LidCNN.layer_outputs` returns the input plus
the outputs of the 25 Keras layers (softmax included), the 26 feature sets of
``lid/extract_artifacts.py``. Layers are kept one module per Keras layer for that reason.
"""

from __future__ import annotations

from typing import List

import torch
from torch import nn

from obfgrad.models.mnist_cnn import glorot_init_

_L2 = 0.01  # keras.regularizers.l2(0.01): adds 0.01 * sum(w ** 2)
_INPUT_OFFSET = 0.5


class LidCNN(nn.Module):
    """Ma et al.'s CIFAR CNN; logits for float32 N×3×32×32 inputs in [0, 1].

    Example:
        >>> net = LidCNN()
        >>> net(torch.rand(2, 3, 32, 32)).shape
        torch.Size([2, 10])
        >>> len(net.layer_outputs(torch.rand(2, 3, 32, 32)))
        26
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 10, image_size: int = 32):
        super().__init__()
        side = image_size // 8
        keras_layers: List[nn.Module] = []
        channels = in_channels
        for width in (32, 64, 128):
            keras_layers += [nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(),
                             nn.Conv2d(width, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
            channels = width
        self.dense1024 = nn.Linear(128 * side * side, 1024)
        self.dense512 = nn.Linear(1024, 512)
        keras_layers += [nn.Flatten(), nn.Dropout(0.5), self.dense1024, nn.ReLU(), nn.Dropout(0.5),
                         self.dense512, nn.ReLU(), nn.Dropout(0.5), nn.Linear(512, num_classes)]
        self.layers = nn.Sequential(*keras_layers)
        glorot_init_(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x - _INPUT_OFFSET)

    def layer_outputs(self, x: torch.Tensor) -> List[torch.Tensor]:
        """[shifted input, output of each of the 24 layers, softmax]: 26 tensors."""
        out = x - _INPUT_OFFSET
        outputs = [out]
        for layer in self.layers:
            out = layer(out)
            outputs.append(out)
        outputs.append(torch.softmax(out, dim=1))
        return outputs

    def regularization_loss(self) -> torch.Tensor:
        """Keras l2(0.01) on kernel and bias of the 1024- and 512-unit dense layers."""
        return _L2 * sum(p.pow(2).sum() for layer in (self.dense1024, self.dense512) for p in layer.parameters())
