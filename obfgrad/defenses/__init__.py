"""The defenses of Table 1, each an ``nn.Module`` (or a training method) with its paper's
hyperparameters as defaults."""

from obfgrad.defenses.input_transforms import (  # noqa: E402
    BitDepthReduction, CropRescale, ImageQuilting, InputTransform, JPEGCompression, TransformedClassifier,
    TVMinimization)
from obfgrad.defenses.randomization import RandomResizePad  # noqa: E402
