"""The Table 1 defenses as buildable bundles: the defended model, the undefended one, the model the
paper's adaptive attack differentiates (BPDA/EOT), the threat model and test data, under the
``smoke`` profile (small models trained on the fly and cached) or the ``paper`` profile (the
paper's architectures with the user's weights)."""

from obfgrad.zoo.base import PROFILES, BuildContext, DefenseBundle

__all__ = ["PROFILES", "BuildContext", "DefenseBundle"]
