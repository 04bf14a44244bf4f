"""Paper-profile fidelity: does each row's paper-profile spec use the paper's settings?

``reproduce/paper_settings.md`` lists, for every Table 1 row (Guo's five transformations and
Defense-GAN's two attacks separately; Madry's adversarial training as its own entry), the
paper-profile settings with their source each: dataset, ε, norm and its normalisation, steps,
step size, update rule, EOT samples, restarts, examples, targeted, loss, plus the row's defense
constants (``defense.*``, ``classifier.*``, ...). A source is a file of the authors' code
(``[repo] `path`: what it says``, :data:`KNOWN_REPOS`), a paper section (``paper §N``), or the
project's own choice (``choice: why``). This module resolves the same flat fields from the rows'
paper-profile specs (``reproduce.rows.all_specs(..., "paper")``; configs differ per row, so each
entry has its own extractor, which the row's spec names: ``RowSpec.fidelity``, see
:mod:`reproduce.paper_entries`) and compares the two.

    python -m reproduce.fidelity            # the resolved table, one line per entry, and the counts
    python -m reproduce.fidelity --fields   # every field: table value, code value, source, verdict

Table cells: the first backquoted token is the value (``8/255`` is a fraction, ``a,b`` a tuple,
``-`` "not a setting of the row config"). A setting confirmed by an outside source that the code
contradicts is an error; a project's choice is counted apart, never as a confirmation.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from reproduce.rows import all_specs
from reproduce.spec import ROW_NAMES, RowSpec

SETTINGS_FILE = Path(__file__).with_name("paper_settings.md")

#: The fields every entry has (extras such as ``defense.levels`` follow them).
CORE_FIELDS = ("dataset", "eps", "norm", "normalisation", "steps", "step_size", "update", "eot_samples",
               "restarts", "examples", "targeted", "loss")

NOT_A_SETTING = "-"  # the table's value for a field the row config does not carry


# ---------------------------------------------------------------------------- the table


#: The repositories a source may cite: ``[tag]`` in the table -> the GitHub repository read.
KNOWN_REPOS = {"obfuscated-gradients": "anishathalye/obfuscated-gradients", "defensegan": "kabkabm/defensegan",
               "cifar10_challenge": "MadryLab/cifar10_challenge"}
_SOURCE_FILE = re.compile(r"^\[(?P<repo>[^\]]+)\]\s+`(?P<path>[^`]+\.(?:py|ipynb|yml|json|md|sh))`")
SOURCE_KINDS = ("code", "paper", "choice")


@dataclass(frozen=True)
class PaperSetting:
    """One cell of ``paper_settings.md``: the setting and where it comes from."""

    value: Any
    citation: str
    kind: str = "choice"  # "code" (a file of the authors' code), "paper" (a section), "choice"
    repo: str = ""  # for "code": the GitHub repository
    path: str = ""  # for "code": the file, relative to the repository root
    text: str = ""  # the whole cell, for messages

    @property
    def confirmed(self) -> bool:
        """Fixed by an outside source (the authors' code or the paper), not by the project."""
        return self.kind in ("code", "paper")


def classify_source(citation: str, where: str) -> Dict[str, str]:
    """``{"kind", "repo", "path"}`` of a source cell; ValueError when it names no source."""
    match = _SOURCE_FILE.match(citation)
    if match:
        if match.group("repo") not in KNOWN_REPOS:
            raise ValueError(f"{where}: unknown repository [{match.group('repo')}] (known: {', '.join(KNOWN_REPOS)})")
        return {"kind": "code", "repo": KNOWN_REPOS[match.group("repo")], "path": match.group("path")}
    if citation.startswith("paper §"):
        return {"kind": "paper", "repo": "", "path": ""}
    if citation.startswith("choice:") and citation[len("choice:"):].strip():
        return {"kind": "choice", "repo": "", "path": ""}
    raise ValueError(f"{where}: source {citation!r} is neither `[repo] `path`: ...` of the authors' code, "
                     "`paper §N`, nor `choice: reason`")


_HEADING = re.compile(r"^###\s+`([^`]+)`")
_ROW = re.compile(r"^\|(.+)\|\s*$")
_TOKEN = re.compile(r"`([^`]*)`")


def parse_value(token: str) -> Any:
    """A table token as a value: ``true``/``false``, integers, floats, fractions ``a/b``,
    comma-separated tuples, ``-`` (not a setting), else the string itself."""
    token = token.strip()
    if token == NOT_A_SETTING:
        return NOT_A_SETTING
    if "," in token:
        return tuple(parse_value(part) for part in token.split(","))
    if token in ("true", "false"):
        return token == "true"
    if re.fullmatch(r"[+-]?\d+", token):
        return int(token)
    fraction = re.fullmatch(r"([\d.e+-]+)/([\d.e+-]+)", token)
    if fraction:
        return float(fraction.group(1)) / float(fraction.group(2))
    try:
        return float(token)
    except ValueError:
        return token


def read_paper_settings(path: Path = SETTINGS_FILE) -> Dict[str, Dict[str, PaperSetting]]:
    """``{entry: {field: PaperSetting}}`` from the markdown tables of ``paper_settings.md``."""
    entries: Dict[str, Dict[str, PaperSetting]] = {}
    current: Optional[str] = None
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        heading = _HEADING.match(line)
        if heading:
            current = heading.group(1)
            if current in entries:
                raise ValueError(f"{path}:{number}: entry {current!r} appears twice")
            entries[current] = {}
            continue
        row = _ROW.match(line)
        if current is None or not row:
            continue
        cells = [cell.strip() for cell in row.group(1).split("|")]
        if len(cells) != 3 or cells[0] in ("field", "") or set(cells[0]) <= set("-: "):
            continue
        field, cell, citation = cells
        field = field.strip("`")
        token = _TOKEN.search(cell)
        if token is None:
            raise ValueError(f"{path}:{number}: {current}.{field}: the value cell has no `value`")
        where = f"{path}:{number}: {current}.{field}"
        if not citation:
            raise ValueError(f"{where}: no source")
        if "UNCONFIRMED" in cell or "MISMATCH" in cell:
            raise ValueError(f"{where}: UNCONFIRMED/MISMATCH markers are not used: cite the source or `choice: why`")
        entries[current][field] = PaperSetting(parse_value(token.group(1)), citation, text=cell,
                                               **classify_source(citation, where))
    return entries


# ---------------------------------------------------------------------------- the entries, from the row specs


def row_of(entry: str) -> str:
    """The row an entry belongs to: an entry is named as its row, or ``row/part`` (``guo/jpeg``)."""
    return entry.split("/", 1)[0]


def paper_specs(rows: Optional[Sequence[str]] = None) -> Dict[str, RowSpec]:
    """The paper-profile specs (not a dry run) of ``rows`` (default: all of Table 1, in its order)."""
    return {spec.name: spec for spec in all_specs(list(ROW_NAMES if rows is None else rows), "paper", False)}


def entry_table(specs: Optional[Dict[str, RowSpec]] = None) -> Dict[str, Tuple[str, Callable[[RowSpec], Any]]]:
    """``{entry: (row, extractor)}``: every spec's ``RowSpec.fidelity``, in the specs' order (default:
    the paper-profile specs of Table 1)."""
    table: Dict[str, Tuple[str, Callable[[RowSpec], Any]]] = {}
    for name, spec in (paper_specs() if specs is None else specs).items():
        for entry, extract in spec.fidelity.items():
            if row_of(entry) != name:
                raise ValueError(f"rows: the {name} row's fidelity entry {entry!r} is not named {name!r} or "
                                 f"'{name}/...'")
            table[entry] = (name, extract)
    return table


def entries_of(row: str) -> List[str]:
    return list(entry_table(paper_specs([row])))


def resolve(entries: Optional[Sequence[str]] = None, specs: Optional[Dict[str, RowSpec]] = None
            ) -> Dict[str, Dict[str, Any]]:
    """``{entry: {field: value}}`` from the specs' extractors (default: the paper-profile specs of the
    entries' rows; all entries of the specs when ``entries`` is None)."""
    if specs is None:
        specs = paper_specs(None if entries is None else sorted({row_of(entry) for entry in entries}))
    table = entry_table(specs)
    entries = list(table) if entries is None else list(entries)
    unknown = [entry for entry in entries if entry not in table]
    if unknown:
        raise ValueError(f"entries: {', '.join(unknown)} not among the specs' entries ({', '.join(table)})")
    return {entry: table[entry][1](specs[table[entry][0]]) for entry in entries}


# ---------------------------------------------------------------------------- comparison


def same_value(expected: Any, actual: Any) -> bool:
    """Equality for table values: floats to 1e-9 relative, bools never equal to numbers."""
    if isinstance(expected, tuple) or isinstance(actual, tuple):
        return (isinstance(expected, tuple) and isinstance(actual, tuple) and len(expected) == len(actual)
                and all(same_value(e, a) for e, a in zip(expected, actual)))
    if isinstance(expected, bool) or isinstance(actual, bool):
        return type(expected) is type(actual) and expected == actual
    if isinstance(expected, (int, float)) and isinstance(actual, (int, float)):
        return math.isclose(expected, actual, rel_tol=1e-9, abs_tol=1e-12)
    return expected == actual


@dataclass(frozen=True)
class FieldCheck:
    entry: str
    field: str
    paper: Any  # NOT_A_SETTING when the row config has no such field
    code: Any  # NOT_A_SETTING when the extractor gives none
    setting: Optional[PaperSetting]

    @property
    def agrees(self) -> bool:
        return same_value(self.paper, self.code)

    @property
    def verdict(self) -> str:
        if self.setting is None:
            return "NOT IN TABLE"
        if self.setting.confirmed:
            return "confirmed" if self.agrees else "CONTRADICTS ITS SOURCE"
        return "project's choice" if self.agrees else "DIFFERS FROM THE RECORDED CHOICE"


def counts(checks: List[FieldCheck]) -> Dict[str, int]:
    """How many settings an outside source confirms (and of those, how many the authors' code and
    the paper), how many are the project's own choice, and how many disagree with the table."""
    in_table = [item for item in checks if item.setting is not None]
    confirmed = [item for item in in_table if item.setting.confirmed and item.agrees]
    return {"settings": len(checks), "confirmed": len(confirmed),
            "confirmed_by_code": sum(1 for item in confirmed if item.setting.kind == "code"),
            "confirmed_by_paper": sum(1 for item in confirmed if item.setting.kind == "paper"),
            "own_choice": sum(1 for item in in_table if not item.setting.confirmed and item.agrees),
            "disagreeing": sum(1 for item in checks if not item.agrees or item.setting is None)}


def summary_line(checks: List[FieldCheck]) -> str:
    number = counts(checks)
    return (f"{number['confirmed']} of {number['settings']} settings confirmed by an outside source "
            f"({number['confirmed_by_code']} by the authors' code, {number['confirmed_by_paper']} by the paper), "
            f"{number['own_choice']} the project's own choice, {number['disagreeing']} disagreeing")


def check(paper: Dict[str, Dict[str, PaperSetting]], resolved: Dict[str, Dict[str, Any]]) -> List[FieldCheck]:
    """Every field of every entry, table against code (fields of either side)."""
    checks = []
    for entry, code in resolved.items():
        table = paper.get(entry, {})
        for field in list(table) + [field for field in code if field not in table]:
            setting = table.get(field)
            checks.append(FieldCheck(entry, field, setting.value if setting else NOT_A_SETTING,
                                     code.get(field, NOT_A_SETTING), setting))
    return checks


def format_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if value == float(f"{value:.3g}"):  # a short decimal: 0.1, 0.015, 1e-08
            return f"{value:.3g}"
        for denominator in (255, 299):  # pixel fractions: 8/255, 0.5/255, 90/299
            tenths = value * denominator * 10
            if abs(tenths - round(tenths)) < 1e-6:
                return f"{round(tenths) / 10:g}/{denominator}"
        return f"{value:.6g}"
    if isinstance(value, tuple):
        return ",".join(format_value(v) for v in value)
    return str(value)


def render_summary(resolved: Dict[str, Dict[str, Any]]) -> str:
    """One markdown line per entry with the core fields."""
    header = "| entry | " + " | ".join(CORE_FIELDS) + " |"
    lines = [header, "|" + "---|" * (len(CORE_FIELDS) + 1)]
    for entry, fields in resolved.items():
        cells = [format_value(fields.get(field, NOT_A_SETTING)) for field in CORE_FIELDS]
        lines.append(f"| {entry} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _source(item: FieldCheck) -> str:
    setting = item.setting
    if setting is None:
        return "-"
    return f"{setting.repo}: {setting.path}" if setting.kind == "code" else setting.citation


def render_checks(checks: List[FieldCheck]) -> str:
    lines = ["| entry | field | paper_settings.md | code (paper profile) | source | verdict |",
             "|---|---|---|---|---|---|"]
    for item in checks:
        lines.append(f"| {item.entry} | {item.field} | {format_value(item.paper)} | {format_value(item.code)} | "
                     f"{_source(item)} | {item.verdict} |")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m reproduce.fidelity",
                                     description="The paper-profile settings of every Table 1 row, resolved from the "
                                                 "row specs and checked against reproduce/paper_settings.md.")
    specs = paper_specs()
    table = entry_table(specs)
    parser.add_argument("--entries", default=None,
                        help=f"comma-separated entries or rows (default all: {','.join(table)})")
    parser.add_argument("--fields", action="store_true", help="every field with its paper value and verdict")
    args = parser.parse_args(argv)
    entries = list(table)
    if args.entries:
        wanted = [name.strip() for name in args.entries.split(",") if name.strip()]
        rows = {row for row, _ in table.values()}
        unknown = [name for name in wanted if name not in table and name not in rows]
        if unknown:
            parser.error(f"--entries: unknown {', '.join(unknown)}; choose from {', '.join(table)}")
        entries = [entry for entry in table if entry in wanted or table[entry][0] in wanted]
    resolved = resolve(entries, specs)
    checks = check(read_paper_settings(), resolved)
    print(render_checks(checks) if args.fields else render_summary(resolved))
    disagreeing = [item for item in checks if not item.agrees or item.setting is None]
    print()
    print(summary_line(checks)
          + (": " + ", ".join(f"{item.entry}.{item.field} ({item.verdict})" for item in disagreeing)
             if disagreeing else "."))
    return 1 if disagreeing else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
