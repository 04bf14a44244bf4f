"""Write the Table 1 figures next to the tables, in ``results/figures/``:

* ``own_vs_adaptive.png``: per row, accuracy under the defense's own evaluation beside accuracy
  under the adaptive attack (95% Clopper-Pearson intervals as error bars where the result has
  them), the paper's number as a gold diamond, clean accuracy as an open circle, and the verdict.
* ``eps_curves.png``: one panel per row (one file, so the rows can be compared at a glance; each
  panel keeps its own x axis because the rows' distances and budgets differ): accuracy vs eps
  from the row's ``eps_curve`` (:mod:`reproduce.curves`), the row's eps as a dashed line and the
  table's adaptive accuracy at it as a star.

Matplotlib (the ``reproduce`` extra) is optional: without it the figures are skipped with one log
line and the tables are still written. The object-oriented API on the Agg canvas is used (no
pyplot, so no global backend switch in the caller's process).
"""

from __future__ import annotations

import io
import math
import textwrap
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from obfgrad.atomic import atomic_write_bytes
from reproduce.spec import RowSpec
from reproduce.table import verdict

OWN_COLOR, ADAPTIVE_COLOR, CURVE_COLOR = "#9ecae1", "#de2d26", "#3182bd"


def _matplotlib_figure():
    """``matplotlib.figure.Figure`` and the Agg canvas, or None when matplotlib is missing."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return None
    return Figure, FigureCanvasAgg


def _save(figure, canvas_class, path: Path) -> Path:
    canvas_class(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    atomic_write_bytes(path, buffer.getvalue())
    return path


def _error_bar(value: float, ci: Optional[List[float]]) -> Optional[List[List[float]]]:
    """Matplotlib's ``yerr`` for a CI around ``value`` ([[below], [above]]); None without one."""
    if not ci:
        return None
    return [[max(0.0, value - ci[0])], [max(0.0, ci[1] - value)]]


def _own_ci(result: Dict[str, Any]) -> Optional[List[float]]:
    """The own evaluation's CI: ``own_attack_ci95`` (or ``own_ci95``), else the attack summary named
    ``own`` (or ``own_*``) whose accuracy is the row's own-evaluation number; None if there is none."""
    for key in ("own_attack_ci95", "own_ci95"):
        if result.get(key):
            return result[key]
    attacks = result.get("attacks") or {}
    for name in sorted(attacks, key=lambda name: name != "own"):  # "own" first
        summary = attacks[name]
        if (name.startswith("own") and isinstance(summary, dict) and summary.get("ci95")
                and summary.get("accuracy") == result["own_attack_accuracy"]):
            return summary["ci95"]
    return None


def own_vs_adaptive(figure_class, rows: List[Tuple[RowSpec, Dict[str, Any]]]):
    figure = figure_class(figsize=(max(6.0, 1.1 * len(rows) + 2), 4.2))
    axes = figure.add_subplot()
    width = 0.38
    for index, (spec, result) in enumerate(rows):
        own, adaptive = result["own_attack_accuracy"], result["adaptive_accuracy"]
        first = index == 0  # label each artist once in the legend
        axes.bar(index - width / 2, own, width, color=OWN_COLOR, yerr=_error_bar(own, _own_ci(result)),
                 capsize=3, label="defense's own evaluation" if first else None)
        axes.bar(index + width / 2, adaptive, width, color=ADAPTIVE_COLOR,
                 yerr=_error_bar(adaptive, result.get("adaptive_ci95")), capsize=3,
                 label="adaptive attack (ours, 95% CI)" if first else None)
        axes.plot(index + width / 2, spec.paper_accuracy, marker="D", markersize=7, markerfacecolor="gold",
                  markeredgecolor="black", linestyle="none", zorder=3, label="paper (adaptive)" if first else None)
        axes.plot(index - width / 2, result["clean_accuracy"], marker="o", markerfacecolor="none",
                  color="gray", linestyle="none", label="clean" if first else None)
        axes.text(index, 1.03, verdict(result, spec), ha="center", fontsize=8, style="italic")
    axes.set_xticks(range(len(rows)))
    axes.set_xticklabels([f"{spec.name}\n{spec.dataset}\nε={spec.eps:.3g}" for spec, _ in rows], fontsize=8)
    axes.set_ylim(0, 1.1)
    axes.set_yticks([0, 0.25, 0.5, 0.75, 1.0])
    axes.set_ylabel("accuracy")
    axes.set_title("Table 1: accuracy under the defense's own evaluation vs the adaptive attack", fontsize=10)
    axes.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=4, frameon=False)
    return figure


def _curve_panel(axes, spec: RowSpec, result: Dict[str, Any]) -> None:
    curve = result.get("eps_curve")
    title = f"{spec.name} ({spec.dataset}, {spec.distance})"
    if not curve:
        axes.set_title(title, fontsize=9)
        axes.text(0.5, 0.5, "no curve\n(the row has no build_defense)", ha="center", va="center",
                  transform=axes.transAxes, fontsize=8)
        axes.set_xticks([])
        axes.set_yticks([])
        return
    axes.plot(curve["eps"], curve["accuracy"], marker="o", color=CURVE_COLOR,
              label=f"PGD-{curve['steps']} margin, n={curve['n']}")
    axes.axvline(spec.eps, color="gray", linestyle="--", linewidth=1)
    variant = curve.get("variant")
    table_row = (result.get("transforms") or {}).get(variant, result)  # the variant the curve measures
    axes.plot(spec.eps, table_row["adaptive_accuracy"], marker="*", markersize=11, color=ADAPTIVE_COLOR,
              linestyle="none", label="table: adaptive attack" + (f" ({variant})" if variant else ""))
    axes.set_ylim(-0.03, 1.03)
    axes.set_xlim(left=0)
    judged = textwrap.fill(curve.get("judged", ""), 48)
    axes.set_title(title + ("\n" + judged if judged else ""), fontsize=8)
    axes.set_xlabel("ε", fontsize=8)
    axes.set_ylabel("accuracy", fontsize=8)
    axes.tick_params(labelsize=7)
    axes.legend(fontsize=6, loc="upper right")


def eps_curves(figure_class, rows: List[Tuple[RowSpec, Dict[str, Any]]]):
    columns = min(3, len(rows))
    lines = math.ceil(len(rows) / columns)
    figure = figure_class(figsize=(4.2 * columns, 3.4 * lines))
    for index, (spec, result) in enumerate(rows):
        _curve_panel(figure.add_subplot(lines, columns, index + 1), spec, result)
    figure.suptitle("Accuracy vs ε (PGD on the adaptive model, judged by the deployed defense)", fontsize=10)
    figure.tight_layout()
    return figure


def write_figures(results_dir: Path, specs: List[RowSpec], results: Dict[str, Dict[str, Any]],
                  log: Callable[[str], None] = print) -> Dict[str, Path]:
    """Write ``results_dir/figures/{own_vs_adaptive,eps_curves}.png`` for the rows with a result
    (in ``specs`` order); return their paths by name. Nothing is written (and ``{}`` returned)
    without matplotlib or without any row result."""
    classes = _matplotlib_figure()
    if classes is None:
        log("figures skipped: matplotlib is not installed (pip install 'obfgrad[reproduce]')")
        return {}
    rows = [(spec, results[spec.name]) for spec in specs if spec.name in results]
    if not rows:
        return {}
    figure_class, canvas_class = classes
    directory = Path(results_dir) / "figures"
    return {
        "own_vs_adaptive": _save(own_vs_adaptive(figure_class, rows), canvas_class, directory / "own_vs_adaptive.png"),
        "eps_curves": _save(eps_curves(figure_class, rows), canvas_class, directory / "eps_curves.png"),
    }
