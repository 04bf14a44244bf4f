"""The defenses of Table 1, each an ``nn.Module`` (or a training method) with its paper's
hyperparameters as defaults."""

from obfgrad.defenses.defensegan import DefenseGAN, project  # noqa: E402
from obfgrad.defenses.pixeldefend import PixelDefend, purify  # noqa: E402

__all__ = ["DefenseGAN", "project", "PixelDefend", "purify"]
