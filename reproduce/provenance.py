"""What ties a row result to what made it, and the checks a cached result must pass to be reused.

A row result is reused (``reproduce.runner``) only when its key matches, and the key holds:

* the row's settings (spec, profile, examples, seed, device type);
* :func:`code_fingerprint`: the SHA-256 of every source file of the ``obfgrad`` package and of
  ``reproduce/``, of the loaded ``_C`` binary and of the CUDA kernel sources (any change to the
  code that can compute a number recomputes the row);
* :func:`data_fingerprint`: the SHA-256 of the dataset files the row reads (both splits: the
  test split is attacked, the training split trains its models), or for ImageNet of the labels
  file and the list of image files with their sizes;
* :func:`weights_fingerprint`: the SHA-256 of a ``--weights`` file given for the row.

A stored result must also be well formed (:func:`result_problems`): the fields Table 1 needs,
accuracies in [0, 1] inside their own exact 95% intervals and whole counts of ``n``, a checksum
over the result that still matches (any edit or flipped bit), and, for every attack summary that
names a per-example records file, the file's checksum and its counts agreeing with the summary.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

from obfgrad import fingerprint
from obfgrad.data.locate import DATASETS, DatasetNotFoundError, locate_split
from obfgrad.eval import clopper_pearson
from reproduce.spec import RowSpec, RunContext

REPRODUCE_DIR = Path(__file__).resolve().parent
REQUIRED_FIELDS = ("clean_accuracy", "own_attack_accuracy", "adaptive_accuracy", "adaptive_ci95", "n")
_TOLERANCE = 1e-6


# ---------------------------------------------------------------------------- fingerprints


def code_fingerprint() -> Dict[str, str]:
    """SHA-256 of the ``obfgrad`` sources, the ``reproduce`` sources and the native code."""
    modules = [".".join(("obfgrad",) + path.relative_to(fingerprint.PACKAGE_DIR).with_suffix("").parts)
               for path in fingerprint.PACKAGE_DIR.rglob("*.py")]
    modules = [name[: -len(".__init__")] if name.endswith(".__init__") else name for name in modules]
    return {"obfgrad": fingerprint.sources_digest(modules),
            "reproduce": fingerprint.files_digest(REPRODUCE_DIR.rglob("*.py")),
            "native": fingerprint.native_digest()}


def data_fingerprint(spec: RowSpec, ctx: RunContext) -> Dict[str, Any]:
    """SHA-256 of the data files the row reads; ``{"synthetic": ...}`` in a dry run,
    ``{"missing": ...}`` when the data is not on disk yet (the row downloads it)."""
    if ctx.dry_run:
        return {"synthetic": spec.dataset}
    if spec.dataset == "imagenet":
        return _imagenet_fingerprint(ctx.data_dir)
    if spec.dataset not in DATASETS:  # a row on data of its own (tests' toy rows): no files to hash
        return {"no_files": spec.dataset}
    digests = {}
    for split in ("test", "train"):
        try:
            paths = locate_split(spec.dataset, split, data_dir=ctx.data_dir, download=False)
        except DatasetNotFoundError:
            return {"missing": spec.dataset}
        digests[split] = fingerprint.files_digest(paths)
    return {spec.dataset: digests}


def _imagenet_fingerprint(data_dir: Optional[Path]) -> Dict[str, Any]:
    if data_dir is None:
        return {"missing": "imagenet"}
    root = Path(data_dir)
    labels = root / "val.txt"
    folder = root / "val" if (root / "val").is_dir() else root
    if not labels.is_file() or not folder.is_dir():
        return {"missing": "imagenet"}
    listing = hashlib.sha256()
    for path in sorted(folder.iterdir(), key=lambda p: p.name):
        if path.is_file():
            listing.update(f"{path.name}\0{path.stat().st_size}\n".encode())
    return {"imagenet": {"labels": fingerprint.file_sha256(labels), "images": listing.hexdigest()}}


def weights_fingerprint(spec: RowSpec, ctx: RunContext) -> Optional[str]:
    path = ctx.weights.get(spec.name)
    return None if path is None else fingerprint.file_sha256(Path(path))


# ---------------------------------------------------------------------------- checksums


def _plain(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def result_checksum(result: Dict[str, Any]) -> str:
    """SHA-256 of the result's canonical JSON (as it reads back from the row file)."""
    plain = json.loads(json.dumps(result, default=_plain))
    return hashlib.sha256(json.dumps(plain, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


# ---------------------------------------------------------------------------- well-formedness


def _is_fraction(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) \
        and 0.0 <= value <= 1.0


def _interval_problem(name: str, accuracy: Any, ci: Any, n: int) -> Optional[str]:
    """Why ``accuracy``/``ci`` over ``n`` examples cannot be a measured proportion, or None."""
    if not _is_fraction(accuracy):
        return f"{name}: {accuracy!r} is not a fraction in [0, 1]"
    count = accuracy * n
    if abs(count - round(count)) > _TOLERANCE * max(1, n):
        return f"{name}: {accuracy!r} is not a whole count of n = {n} examples"
    if ci is None:
        return None
    if not (isinstance(ci, list) and len(ci) == 2 and all(_is_fraction(v) for v in ci)):
        return f"{name}: its interval {ci!r} is not [lo, hi] in [0, 1]"
    if not ci[0] - _TOLERANCE <= accuracy <= ci[1] + _TOLERANCE:
        return f"{name}: {accuracy!r} lies outside its own interval {ci}"
    exact = clopper_pearson(int(round(count)), n)
    if any(abs(a - b) > _TOLERANCE for a, b in zip(ci, exact)):
        return f"{name}: interval {ci} is not the exact 95% interval {list(exact)} of {round(count)}/{n}"
    return None


def _summaries(value: Any) -> Iterator[Dict[str, Any]]:
    """Every attack summary (a dict naming a records file) anywhere in a result."""
    if isinstance(value, dict):
        if isinstance(value.get("records"), str) or isinstance(value.get("detector_records"), str):
            yield value
        for item in value.values():
            yield from _summaries(item)
    elif isinstance(value, list):
        for item in value:
            yield from _summaries(item)


def _records_problem(summary: Dict[str, Any], results_dir: Path) -> Optional[str]:
    key = "detector_records" if isinstance(summary.get("detector_records"), str) else "records"
    stored = Path(summary[key])
    path = stored if stored.is_file() else results_dir / "records" / stored.name
    if not path.is_file():
        return f"per-example records {stored} are missing"
    digest = summary.get(f"{key}_sha256")
    if digest is not None and digest != fingerprint.file_sha256(path):
        return f"per-example records {path} do not match their checksum"
    try:
        records = json.loads(path.read_text())["records"]
        if key == "detector_records":
            correct = sum(1 for r in records if r["correct"] or r["flagged"])
        else:
            correct = sum(1 for r in records if r["adv_correct"])
    except (OSError, ValueError, KeyError, TypeError) as error:
        return f"per-example records {path} are unreadable ({type(error).__name__}: {error})"
    n, accuracy = summary.get("n"), summary.get("accuracy")
    if not isinstance(n, int) or len(records) != n or not _is_fraction(accuracy) \
            or correct != round(accuracy * n):
        return (f"per-example records {path} hold {correct} correct of {len(records)}, the summary says "
                f"{accuracy!r} of n = {n!r}")
    return None


def result_problems(stored: Any, results_dir: Path) -> List[str]:
    """What is wrong with a stored row file's content (empty: nothing, it may be reused)."""
    if not isinstance(stored, dict):
        return [f"the row file holds {type(stored).__name__}, not an object"]
    result = stored.get("result")
    if not isinstance(result, dict):
        return [f"the row file's result is {type(result).__name__}, not an object"]
    missing = [name for name in REQUIRED_FIELDS if name not in result]
    if missing:
        return [f"the result lacks {', '.join(missing)}"]
    if stored.get("checksum") != result_checksum(result):
        return ["the result does not match its checksum (edited or damaged)"]
    n = result["n"]
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        return [f"n: {n!r} is not a positive number of examples"]
    problems = [] if _is_fraction(result["clean_accuracy"]) else \
        [f"clean_accuracy: {result['clean_accuracy']!r} is not a fraction in [0, 1]"]
    for name, ci in (("adaptive_accuracy", result["adaptive_ci95"]),
                     ("own_attack_accuracy", result.get("own_attack_ci95"))):
        problem = _interval_problem(name, result[name], ci, n)
        if problem:
            problems.append(problem)
    problems += [problem for summary in _summaries(result)
                 if (problem := _records_problem(summary, results_dir))]
    return problems
