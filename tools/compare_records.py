"""Compare two ``python -m reproduce`` results directories example by example.

    python tools/compare_records.py BEFORE_DIR AFTER_DIR [--rows madry,na]

For every row found in both directories (``records/<row>.<label>.json``, ``rows/<row>.json``) it
prints ``identical`` or ``different`` with the first difference: the first differing example of a
records file (its index and the fields that differ), a records file present on one side only, or
the first differing number of the row result. Timings, checksums of files that hold timings,
results-directory paths, dates and provenance (code fingerprint, git revision) are ignored (the
keys of tests/test_reproduce_same_seed.py, plus the op timings rows no longer measure).
Exit status 0 when every compared row is identical, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

#: Keys that measure time or name the results directory, not results.
VOLATILE = {"wall_seconds", "seconds", "build_seconds", "wall_time_s", "date", "records_sha256",
            "detector_records_sha256", "environment", "key", "checksum", "meta", "provenance",
            # timings of ops (moved from the rows to benchmarks/ by issue 18)
            "attack_step_timing", "purification_timing", "adaptive_seconds_per_image",
            "projection_seconds_per_image", "purification_seconds_per_image"}


#: Keys that hold a path into the results directory (the files themselves are compared).
PATHS = {"records", "detector_records"}


def stable(value: Any) -> Any:
    """``value`` without volatile keys and without results-directory paths."""
    if isinstance(value, dict):
        return {key: stable(item) for key, item in value.items()
                if key not in VOLATILE and not (key in PATHS and isinstance(item, str))}
    if isinstance(value, list):
        return [stable(item) for item in value]
    return value


def first_difference(before: Any, after: Any, where: str = "") -> Optional[str]:
    """Where two JSON values first differ (a path and both values), or None when equal."""
    if isinstance(before, dict) and isinstance(after, dict):
        for key in sorted(set(before) | set(after)):
            if key not in after:
                return f"{where}/{key}: only before"
            if key not in before:
                return f"{where}/{key}: only after"
            found = first_difference(before[key], after[key], f"{where}/{key}")
            if found:
                return found
        return None
    if isinstance(before, list) and isinstance(after, list):
        if len(before) != len(after):
            return f"{where}: {len(before)} items before, {len(after)} after"
        for index, (one, two) in enumerate(zip(before, after)):
            found = first_difference(one, two, f"{where}[{index}]")
            if found:
                return found
        return None
    return None if before == after else f"{where}: {before!r} -> {after!r}"


def _load(path: Path) -> Any:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def compare_records(before: Dict[str, Any], after: Dict[str, Any]) -> Optional[str]:
    """The first differing example of two records files (per-example list, then the summary)."""
    one, two = before.get("records", []), after.get("records", [])
    for index, (first, second) in enumerate(zip(one, two)):
        first, second = stable(first), stable(second)
        if first != second:
            fields = sorted(k for k in set(first) | set(second) if first.get(k) != second.get(k))
            detail = ", ".join(f"{k} {first.get(k)!r} -> {second.get(k)!r}" for k in fields)
            return f"example {first.get('index', index)}: {detail}"
    if len(one) != len(two):
        return f"{len(one)} examples before, {len(two)} after"
    rest = lambda d: stable({k: v for k, v in d.items() if k != "records"})  # noqa: E731
    return first_difference(rest(before), rest(after))


def row_differences(before_dir: Path, after_dir: Path, row: str) -> Iterator[str]:
    """Every difference of one row, records files first."""
    names = lambda d: {p.name for p in (d / "records").glob(f"{row}.*.json")}  # noqa: E731
    before_names, after_names = names(before_dir), names(after_dir)
    for name in sorted(before_names ^ after_names):
        yield f"{name}: only {'before' if name in before_names else 'after'}"
    for name in sorted(before_names & after_names):
        found = compare_records(_load(before_dir / "records" / name), _load(after_dir / "records" / name))
        if found:
            yield f"{name}: {found}"
    row_files = before_dir / "rows" / f"{row}.json", after_dir / "rows" / f"{row}.json"
    if all(path.exists() for path in row_files):
        found = first_difference(*(stable(_load(path)["result"]) for path in row_files), where="result")
        if found:
            yield f"rows/{row}.json: {found}"


def rows_in(directory: Path) -> List[str]:
    return sorted({path.name.split(".")[0] for path in (directory / "records").glob("*.json")}
                  | {path.stem for path in (directory / "rows").glob("*.json")})


def compare(before_dir: Path, after_dir: Path, rows: Optional[Sequence[str]] = None) -> List[Tuple[str, List[str]]]:
    """``[(row, differences)]`` for the rows of both directories (or ``rows``)."""
    for directory in (before_dir, after_dir):
        if not (directory / "records").is_dir():
            raise ValueError(f"{directory}: not a results directory (no records/ inside)")
    rows = rows or sorted(set(rows_in(before_dir)) & set(rows_in(after_dir)))
    return [(row, list(row_differences(before_dir, after_dir, row))) for row in rows]


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    parser.add_argument("--rows", default="", help="comma-separated rows (default: those in both directories)")
    parser.add_argument("--all", action="store_true", help="print every difference, not only the first per row")
    args = parser.parse_args(argv)
    try:
        outcome = compare(args.before, args.after, [r for r in args.rows.split(",") if r])
    except ValueError as error:
        parser.error(str(error))
    for row, differences in outcome:
        print(f"{row:<12} {'identical' if not differences else 'different'}")
        for line in differences if args.all else differences[:1]:
            print(f"    {line}")
    return 0 if all(not differences for _, differences in outcome) else 1


if __name__ == "__main__":
    sys.exit(main())
