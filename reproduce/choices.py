"""The prose ``choices`` of the rows (``RowSpec.choices``) live in ``choices.md`` beside this module:
one section per row (``## name``), one bullet per choice, ``[paper]``/``[smoke]`` tags for a bullet of
one profile only, ``{name}`` for a value the row fills in. A bullet's text is printed and stored as it
stands (it is hashed into the row's cache key: edit a choice and the row reruns)."""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any, Dict, List, Tuple

from reproduce.spec import PROFILES

__all__ = ["of", "read", "CHOICES_FILE"]

CHOICES_FILE = Path(__file__).with_name("choices.md")
_TAG = re.compile(r"^\[(?P<tag>[a-z-]+)\] ")
_FIELD = re.compile(r"\{(?P<name>[a-z_]+)\}")


def read(path: Path = CHOICES_FILE) -> Dict[str, List[Tuple[str, str]]]:
    """``{row: [(profile or "", text), ...]}`` from a choices file; a bullet outside a row's section,
    an unknown tag or a line that is neither a heading, a bullet nor blank is refused (ValueError)."""
    rows: Dict[str, List[Tuple[str, str]]] = {}
    current = None
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.startswith("## "):
            current = rows.setdefault(line[3:].strip(), [])
        elif line.startswith("- ") and current is not None:
            text, match = line[2:], _TAG.match(line[2:])
            if match and match["tag"] not in PROFILES:
                raise ValueError(f"{path}:{number}: unknown tag [{match['tag']}] (expected one of {PROFILES})")
            current.append((match["tag"], text[match.end():]) if match else ("", text))
        elif line.startswith("- ") or (current is not None and line.strip()):
            raise ValueError(f"{path}:{number}: expected '## row', '- choice' or a blank line, got {line[:40]!r}")
    return rows


@functools.cache
def _rows() -> Dict[str, List[Tuple[str, str]]]:
    return read()


def of(row: str, profile: str, **values: Any) -> List[str]:
    """The choices of ``row`` in ``profile``, in the file's order, with ``{name}`` filled from ``values``."""
    if profile not in PROFILES:
        raise ValueError(f"profile: expected one of {PROFILES}, got {profile!r}")
    if row not in _rows():
        raise ValueError(f"row: no section '## {row}' in {CHOICES_FILE.name}")

    def fill(match: re.Match) -> str:
        if match["name"] not in values:
            raise ValueError(f"{CHOICES_FILE.name}, row {row}: the value {{{match['name']}}} was not given")
        return str(values[match["name"]])

    return [_FIELD.sub(fill, text) for tag, text in _rows()[row] if tag in ("", profile)]
