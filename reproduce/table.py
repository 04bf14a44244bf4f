"""Write results/table1.{md,json,csv}: Table 1 with our numbers beside the paper's."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any, Dict, List, Optional

from obfgrad.atomic import atomic_write_json, atomic_write_text
from reproduce.spec import RowSpec
from reproduce.verdict import interval, row_verdict

FOOTNOTES = (
    "\\* the defense paper also proposes combining it with adversarial training; the row reports the "
    "defense alone (Athalye et al., Section 5).  \n"
    "\\*\\* the principle behind Defense-GAN gives 0% (a perfect projection); imperfect projection makes "
    "the practical number 55% (Section 5.4.2).  \n"
    "Verdict (95% Clopper-Pearson intervals, own evaluation and adaptive attack judged by the same rule): "
    "*nothing to break* when the own evaluation's interval ends at or below 10%; *broken* when the adaptive "
    "interval lies entirely below the own one (and below the defense's claim, where the row states one); "
    "*holds* when they overlap and the adaptive accuracy lies inside the own interval; *inconclusive* otherwise."
)


def verdict(result: Dict[str, Any], spec: Optional[RowSpec] = None) -> str:
    """The row's verdict from the confidence intervals of its own and adaptive accuracies (the
    rule is :mod:`reproduce.verdict`'s); ``spec`` supplies the defense's claimed accuracy."""
    return row_verdict(result, claimed=None if spec is None else spec.claimed_accuracy)


def _footnote_mark(note: str) -> str:
    """Only the footnote marks (``*``, ``**``) go into the table cell; the note's text is in the
    JSON and the footnotes under the table."""
    return note[: len(note) - len(note.lstrip("*"))]


def _pct(value: Optional[float]) -> str:
    return "—" if value is None else f"{100 * value:.1f}%"


def _with_ci(value: float, ci) -> str:
    return f"{_pct(value)} [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"


def _row_line(spec: RowSpec, result: Dict[str, Any]) -> List[str]:
    paper = [f"{spec.defense}", spec.paper_dataset, spec.paper_bound,
             f"{100 * spec.paper_accuracy:.0f}%{_footnote_mark(spec.paper_note)}"]
    setting = f"{spec.dataset}, {spec.eps:.3g} ({spec.distance})"
    own_ci = interval(result["own_attack_accuracy"], result["n"], result.get("own_attack_ci95"))
    return paper + [setting, _pct(result["clean_accuracy"]), _with_ci(result["own_attack_accuracy"], own_ci),
                    _with_ci(result["adaptive_accuracy"], result["adaptive_ci95"]),
                    str(result["n"]), verdict(result, spec), f"{result['wall_seconds']:.0f}"]


def _control_line(name: str, control: Dict[str, Any]) -> str:
    """A row's control experiment (e.g. Xie's stronger attack at the same eps) under the table."""
    if "skipped" in control:
        return f"**{name}** control ({control['name']}): skipped: {control['skipped']}"
    ours, main = control["accuracy_10_of_10"], control["main_attack_10_of_10_same_examples"]
    return (f"**{name}** control ({control['name']}, first {control['n']} examples): "
            f"{_with_ci(ours['accuracy'], ours['ci95'])} "
            f"against {_with_ci(main['accuracy'], main['ci95'])} for the row's attack on the same examples and "
            f"judge draws; {control['reading']}.")


HEADER = ["Defense", "Dataset", "Distance", "Paper", "Ours: data, ε", "Clean", "Own eval [95% CI]",
          "Adaptive [95% CI]", "n", "Verdict", "Seconds"]


def write_tables(results_dir: Path, specs: List[RowSpec], results: Dict[str, Dict[str, Any]],
                 environment: Dict[str, Any], profile: str) -> Dict[str, Path]:
    lines = [f"# Table 1 — obfgrad reproduction ({profile} profile)", "",
             "| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    for spec in specs:
        lines.append("| " + " | ".join(_row_line(spec, results[spec.name])) + " |")
    lines += ["", FOOTNOTES, "",
              f"Code {environment['git_revision']} · torch {environment['torch']} · "
              f"{environment['hardware']['cpu']} ({environment['hardware']['cores']} cores) · device "
              f"{environment['device']} · seed {environment['seed']} · {environment['date']}", ""]
    for spec in specs:
        if spec.choices:
            lines.append(f"**{spec.name}** choices: " + " ".join(spec.choices))
            lines.append("")
        if spec.name in results and isinstance(results[spec.name].get("control"), dict):
            lines += [_control_line(spec.name, results[spec.name]["control"]), ""]
    md = atomic_write_text(results_dir / "table1.md", "\n".join(lines))
    rows = {}
    for spec in specs:
        result = results[spec.name]
        rows[spec.name] = {**result, "paper_accuracy": spec.paper_accuracy, "verdict": verdict(result, spec),
                           "spec": spec.describe()}
    js = atomic_write_json(results_dir / "table1.json", {"profile": profile, "rows": rows, "environment": environment})
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["row", "dataset", "eps", "distance", "clean_accuracy", "own_attack_accuracy",
                     "adaptive_accuracy", "adaptive_ci95_lo", "adaptive_ci95_hi", "paper_accuracy", "n",
                     "verdict", "wall_seconds"])
    for name, row in rows.items():
        spec = next(s for s in specs if s.name == name)
        writer.writerow([name, spec.dataset, spec.eps, spec.distance, row["clean_accuracy"],
                         row["own_attack_accuracy"], row["adaptive_accuracy"], *row["adaptive_ci95"],
                         spec.paper_accuracy, row["n"], row["verdict"], row["wall_seconds"]])
    csv_path = atomic_write_text(results_dir / "table1.csv", buffer.getvalue())
    return {"md": md, "json": js, "csv": csv_path}
