"""The defenses of Table 1, each an ``nn.Module`` (or a training method) with its paper's
hyperparameters as defaults."""

from obfgrad.defenses.lid import LIDDetector, lid_features, lid_mle  # noqa: E402
from obfgrad.defenses.sap import SAP, sap_prune  # noqa: E402
from obfgrad.defenses.thermometer import ThermometerDefense  # noqa: E402

__all__ = ["ThermometerDefense", "SAP", "sap_prune", "LIDDetector", "lid_features", "lid_mle"]
