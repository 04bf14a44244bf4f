"""What :func:`obfgrad.eval.diagnose.diagnose` returns: one verdict per check, the obfuscation
types it points to with the paper's remedy, the success-vs-eps curves, and three renderings
(terminal text, JSON, a PNG figure)."""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional, Union

from obfgrad.atomic import atomic_write_json

__all__ = ["VERDICTS", "CheckResult", "Obfuscation", "DiagnosisReport", "REMEDIES"]

#: A check passes, looks suspicious, fails, or does not apply to this model ("skipped").
VERDICTS = ("pass", "suspicious", "fail", "skipped")

#: The paper's remedy for each type of obfuscated gradients (Athalye, Carlini & Wagner 2018, Sec. 4).
REMEDIES = {
    "shattered": "BPDA (Sec. 4.1): run the true transform forward and differentiate a smooth approximation "
                 "of it backward (the identity when the transform is close to x -> x)",
    "stochastic": "EOT (Sec. 4.3): attack the expected loss over the defense's randomness, i.e. average "
                  "the gradient over many draws",
    "vanishing/exploding": "reparameterization (Sec. 4.2): write x = h(z) with a differentiable h that skips the "
                           "deep iterated computation, or BPDA over the iterated step",
}

_VERDICT_MARK = {"pass": "PASS", "suspicious": "SUSPICIOUS", "fail": "FAIL", "skipped": "skipped"}


def _plain(value: Any) -> Any:
    """JSON-safe numbers: NaN and Inf become None (strict JSON has neither)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value


@dataclass
class CheckResult:
    """One characteristic-behaviour check or gradient probe.

    Attributes:
        name: a stable identifier (``"one_step_vs_iterative"``).
        title: what the check asks, for people.
        verdict: one of :data:`VERDICTS`.
        explanation: one line saying why.
        numbers: the measurements behind the verdict (JSON-able).
    """

    name: str
    title: str
    verdict: str
    explanation: str
    numbers: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict: expected one of {VERDICTS}, got {self.verdict!r}")


@dataclass
class Obfuscation:
    """A type of obfuscated gradients the evidence points to, and the paper's remedy."""

    kind: str  # "shattered", "stochastic" or "vanishing/exploding"
    evidence: List[str]
    remedy: str


@dataclass
class DiagnosisReport:
    """Result of :func:`obfgrad.eval.diagnose.diagnose`.

    ``verdict`` is ``"obfuscated"`` when a check fails or an obfuscation type is named,
    ``"suspicious"`` when a check is suspicious, else ``"pass"``.
    """

    checks: List[CheckResult]
    obfuscation: List[Obfuscation]
    eps_grid: List[float]  # budgets of the curves; the last is the unbounded attack
    curves: Dict[str, List[Optional[float]]]  # attack name -> success rate per budget
    config: Dict[str, Any] = field(default_factory=dict)
    meta: Dict[str, Any] = field(default_factory=dict)

    @property
    def verdict(self) -> str:
        verdicts = {check.verdict for check in self.checks}
        if "fail" in verdicts or self.obfuscation:
            return "obfuscated"
        if "suspicious" in verdicts:
            return "suspicious"
        return "pass"

    @property
    def obfuscation_types(self) -> List[str]:
        return [item.kind for item in self.obfuscation]

    def check(self, name: str) -> CheckResult:
        for item in self.checks:
            if item.name == name:
                return item
        raise KeyError(f"name: no check named {name!r}; have {[c.name for c in self.checks]}")

    # -- renderings ----------------------------------------------------------------------------
    def to_dict(self) -> Dict[str, Any]:
        return _plain({
            "verdict": self.verdict,
            "obfuscation_types": self.obfuscation_types,
            "checks": [asdict(check) for check in self.checks],
            "obfuscation": [asdict(item) for item in self.obfuscation],
            "eps_grid": self.eps_grid,
            "curves": self.curves,
            "config": self.config,
            "meta": self.meta,
        })

    def save_json(self, path: Union[str, os.PathLike]) -> None:
        """Write :meth:`to_dict` atomically."""
        atomic_write_json(path, self.to_dict())

    def to_text(self) -> str:
        config = self.config
        lines = [
            f"obfgrad diagnose: {config.get('model', 'model')} -- {config.get('distance')} eps = "
            f"{config.get('eps', float('nan')):.4g}, {config.get('n', '?')} examples "
            f"({config.get('n_correct', '?')} classified correctly), "
            f"{'randomized' if config.get('randomized') else 'deterministic'}",
            "",
        ]
        width = max(len(check.title) for check in self.checks) if self.checks else 0
        for check in self.checks:
            lines.append(f"  {check.title:<{width}}  {_VERDICT_MARK[check.verdict]:<10}  {check.explanation}")
        lines.append("")
        header = "success rate by budget: " + "  ".join(self._eps_labels())
        lines.append(header)
        for name, values in self.curves.items():
            cells = "  ".join(f"{'-' if v is None else f'{v:.2f}':>{len(label)}}"
                              for v, label in zip(values, self._eps_labels()))
            lines.append(f"  {name:<21} {cells}")
        lines.append("")
        if self.obfuscation:
            for item in self.obfuscation:
                lines.append(f"LIKELY {item.kind.upper()} GRADIENTS: " + "; ".join(item.evidence))
                lines.append(f"  remedy: {item.remedy}")
        lines.append(f"verdict: {self.verdict.upper()}"
                     + (f" ({', '.join(self.obfuscation_types)})" if self.obfuscation else ""))
        return "\n".join(lines)

    def _eps_labels(self) -> List[str]:
        labels = [f"{eps:.3g}" for eps in self.eps_grid]
        if labels:
            labels[-1] = f"unb({labels[-1]})"
        return labels

    def plot(self, path: Union[str, os.PathLike]) -> None:
        """A PNG: success rate vs eps for each attack (left) and the verdict of each check (right).

        Needs matplotlib (``pip install matplotlib``).
        """
        try:
            import matplotlib
            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError as error:  # pragma: no cover - matplotlib is installed in CI
            raise ImportError("DiagnosisReport.plot needs matplotlib: pip install matplotlib") from error
        figure, (curves_axis, checks_axis) = plt.subplots(1, 2, figsize=(12, 4.5),
                                                          gridspec_kw={"width_ratios": [1.2, 1]})
        positions = list(range(len(self.eps_grid)))
        for name, values in self.curves.items():
            points = [(p, v) for p, v in zip(positions, values) if v is not None]
            if points:
                curves_axis.plot(*zip(*points), marker="o", label=name)
        curves_axis.set_xticks(positions, self._eps_labels(), rotation=30)
        curves_axis.set_xlabel(f"budget ({self.config.get('distance', '')})")
        curves_axis.set_ylabel("attack success rate (on correctly classified)")
        curves_axis.set_ylim(-0.03, 1.03)
        curves_axis.axvline(self.config.get("eps_index", 0), color="grey", linestyle=":", linewidth=1)
        curves_axis.legend(fontsize=8)
        curves_axis.set_title(f"success vs eps -- verdict: {self.verdict}")
        colours = {"pass": "#4caf50", "suspicious": "#ffb300", "fail": "#e53935", "skipped": "#bdbdbd"}
        checks_axis.axis("off")
        for row, check in enumerate(self.checks):
            y = 1 - (row + 0.5) / max(len(self.checks), 1)
            checks_axis.text(0.0, y, check.title, va="center", fontsize=8)
            checks_axis.text(0.78, y, check.verdict, va="center", fontsize=8,
                             bbox={"facecolor": colours[check.verdict], "edgecolor": "none", "pad": 2})
        checks_axis.set_title("checks")
        figure.tight_layout()
        directory = os.path.dirname(os.fspath(path))
        if directory:
            os.makedirs(directory, exist_ok=True)
        figure.savefig(path, dpi=110)
        plt.close(figure)

    def __repr__(self) -> str:
        return (f"DiagnosisReport(verdict={self.verdict!r}, obfuscation={self.obfuscation_types}, "
                f"checks={[(c.name, c.verdict) for c in self.checks]})")
