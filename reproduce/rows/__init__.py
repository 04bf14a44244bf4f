"""The nine rows of Table 1, in the table's order. A row module exposes
``spec(profile, dry_run=False) -> RowSpec``."""

from __future__ import annotations

import importlib
from typing import List

from reproduce.spec import ROW_NAMES, RowSpec


def row_spec(name: str, profile: str, dry_run: bool = False) -> RowSpec:
    if name not in ROW_NAMES:
        raise ValueError(f"rows: unknown row {name!r}; expected some of {', '.join(ROW_NAMES)}")
    return importlib.import_module(f"reproduce.rows.{name}").spec(profile, dry_run)


def all_specs(names: List[str], profile: str, dry_run: bool = False) -> List[RowSpec]:
    return [row_spec(name, profile, dry_run) for name in names]
