"""obfgrad: adaptive attacks on adversarial-example defenses (BPDA, EOT, reparameterization),
native kernels for the defenses' non-differentiable ops, and the reproducibility artifact of
Athalye, Carlini & Wagner, "Obfuscated Gradients Give a False Sense of Security" (ICML 2018).
"""

from obfgrad._native import backend_info

__version__ = "0.1.0"  # the one place: pyproject.toml and setup.py (the native core's) read it

__all__ = ["backend_info", "__version__"]
