"""The defenses of Table 1, each an ``nn.Module`` (or a training method) with its paper's
hyperparameters as defaults."""

from obfgrad.defenses.defensegan import DefenseGAN, project
from obfgrad.defenses.input_transforms import (
    BitDepthReduction,
    CropRescale,
    ImageQuilting,
    InputTransform,
    JPEGCompression,
    TransformedClassifier,
    TVMinimization,
    crop_rescale,
)
from obfgrad.defenses.lid import LIDDetector, lid_features, lid_mle
from obfgrad.defenses.pixeldefend import PixelDefend, purify
from obfgrad.defenses.randomization import RandomResizePad, resize_and_pad
from obfgrad.defenses.sap import SAP, sap_prune
from obfgrad.defenses.thermometer import Thermometer, ThermometerDefense

__all__ = ["BitDepthReduction", "CropRescale", "ImageQuilting", "InputTransform", "JPEGCompression",
           "TransformedClassifier", "TVMinimization", "crop_rescale", "RandomResizePad", "resize_and_pad",
           "DefenseGAN", "project",
           "LIDDetector", "lid_features", "lid_mle", "PixelDefend", "purify", "SAP", "sap_prune",
           "Thermometer", "ThermometerDefense"]
