"""Write results/table1.{md,json,csv}: Table 1 with our numbers beside the paper's."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any, Dict, List, Optional

from obfgrad.atomic import atomic_write_json, atomic_write_text
from reproduce.spec import RowSpec

FOOTNOTES = (
    "\\* the defense paper also proposes combining it with adversarial training; the row reports the "
    "defense alone (Athalye et al., Section 5).  \n"
    "\\*\\* the principle behind Defense-GAN gives 0% (a perfect projection); imperfect projection makes "
    "the practical number 55% (Section 5.4.2)."
)


def verdict(result: Dict[str, Any]) -> str:
    """*broken* when the adaptive attack takes accuracy far below the defense's own evaluation
    (more than 20 points, or more than half of it); *holds* otherwise."""
    own, adaptive = result["own_attack_accuracy"], result["adaptive_accuracy"]
    drop = own - adaptive
    return "broken" if drop > 0.2 or (own > 0 and drop > own / 2) else "holds"


def _footnote_mark(note: str) -> str:
    """Only the footnote marks (``*``, ``**``) go into the table cell; the note's text is in the
    JSON and the footnotes under the table."""
    return note[: len(note) - len(note.lstrip("*"))]


def _pct(value: Optional[float]) -> str:
    return "—" if value is None else f"{100 * value:.1f}%"


def _row_line(spec: RowSpec, result: Optional[Dict[str, Any]]) -> List[str]:
    paper = [f"{spec.defense}", spec.paper_dataset, spec.paper_bound,
             f"{100 * spec.paper_accuracy:.0f}%{_footnote_mark(spec.paper_note)}"]
    if result is None:
        return paper + ["pending", "—", "—", "—", "—", "—", "—"]
    lo, hi = result["adaptive_ci95"]
    setting = f"{spec.dataset}, {spec.eps:.3g} ({spec.distance})"
    return paper + [setting, _pct(result["clean_accuracy"]), _pct(result["own_attack_accuracy"]),
                    f"{_pct(result['adaptive_accuracy'])} [{100 * lo:.1f}, {100 * hi:.1f}]",
                    str(result["n"]), verdict(result), f"{result['wall_seconds']:.0f}"]


HEADER = ["Defense", "Dataset", "Distance", "Paper", "Ours: data, ε", "Clean", "Own eval",
          "Adaptive [95% CI]", "n", "Verdict", "Seconds"]


def write_tables(results_dir: Path, specs: List[RowSpec], results: Dict[str, Dict[str, Any]],
                 environment: Dict[str, Any], profile: str) -> Dict[str, Path]:
    lines = [f"# Table 1 — obfgrad reproduction ({profile} profile)", "",
             "| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    for spec in specs:
        lines.append("| " + " | ".join(_row_line(spec, results.get(spec.name))) + " |")
    lines += ["", FOOTNOTES, "",
              f"Code {environment['git_revision']} · torch {environment['torch']} · "
              f"{environment['hardware']['cpu']} ({environment['hardware']['cores']} cores) · device "
              f"{environment['device']} · seed {environment['seed']} · {environment['date']}", ""]
    for spec in specs:
        if spec.name in results and spec.choices:
            lines.append(f"**{spec.name}** choices: " + " ".join(spec.choices))
            lines.append("")
    md = atomic_write_text(results_dir / "table1.md", "\n".join(lines))
    rows = {}
    for spec in specs:
        if spec.name in results:
            result = results[spec.name]
            rows[spec.name] = {**result, "paper_accuracy": spec.paper_accuracy, "verdict": verdict(result),
                               "spec": spec.describe()}
    pending = [spec.name for spec in specs if spec.name not in results]
    js = atomic_write_json(results_dir / "table1.json",
                           {"profile": profile, "rows": rows, "pending": pending, "environment": environment})
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
