"""The Table 1 runner: ``python -m reproduce`` (``nox -s reproduce``).

For each requested row it builds the row's spec for the profile, reuses the cached row result
when the spec, example count, seed and profile, and the code, data and weights that compute it are
unchanged and the stored result is well formed (``reproduce.provenance``; a malformed or damaged
file is recomputed with a warning; ``--no-resume`` recomputes), else runs the row and writes its
result atomically to ``results/rows/<row>.json``; an interrupted run therefore leaves no partial
file and the next run repeats no finished row. Each row with a
``build_defense`` also gets its accuracy-vs-eps curve (``reproduce.curves``), stored in the same
file. At the end it writes ``results/table1.{md,json,csv}`` and the figures
(``results/figures/*.png``, ``reproduce.figures``) and prints the table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch

import obfgrad
from obfgrad._checks import check_device, check_seed
from obfgrad.atomic import atomic_write_json, check_writable_dir
from obfgrad.cache import recipe_key
from obfgrad.data.locate import DATASETS, DatasetNotFoundError, locate_split
from reproduce import curves, distributed, environment, evaluation, figures, provenance, table
from reproduce.rows import all_specs
from reproduce.spec import PROFILES, ROW_NAMES, RowSpec, RunContext

RESULT_FORMAT = 2


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m reproduce",
        description="Regenerate Table 1 of Athalye, Carlini & Wagner (ICML 2018).",
    )
    parser.add_argument("--rows", default=",".join(ROW_NAMES),
                        help=f"comma-separated rows, in any order (default: all nine: {','.join(ROW_NAMES)})")
    parser.add_argument("--profile", choices=PROFILES, default="smoke",
                        help="smoke: CPU, minutes, Fashion-MNIST; paper: the paper's settings (GPU)")
    parser.add_argument("--limit", type=int, default=None, help="attack at most this many test examples per row")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda:0 (default cpu)")
    parser.add_argument("--seed", type=int, default=0, help="seed of attacks and data order (default 0)")
    parser.add_argument("--data-dir", type=Path, default=None, help="where datasets are (searched first)")
    parser.add_argument("--results-dir", type=Path, default=Path("results"), help="output directory (default results/)")
    parser.add_argument("--no-resume", dest="resume", action="store_false",
                        help="recompute rows even when a matching cached result exists")
    parser.add_argument("--dry-run", action="store_true",
                        help="2 examples, 2 steps, untrained models, synthetic data at paper resolution "
                             "(proves the code path; use with --profile paper)")
    parser.add_argument("--weights", action="append", default=[], metavar="ROW=PATH",
                        help="use a checkpoint you provide for a row's classifier (repeatable)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    if args.limit is not None and args.limit < 1:
        parser.error("--limit: expected a positive number of examples")
    names = [name.strip() for name in args.rows.split(",") if name.strip()]
    unknown = [name for name in names if name not in ROW_NAMES]
    if unknown or not names:
        parser.error(f"--rows: unknown {', '.join(unknown) or '(empty)'}; choose from {', '.join(ROW_NAMES)}")
    args.rows = [name for name in ROW_NAMES if name in names]  # Table 1 order
    # Everything that can be wrong on the command line fails here, before any row runs.
    for message in (seed_problem(args.seed), device_problem(args.device),
                    results_dir_problem(args.results_dir)):
        if message:
            parser.error(message)
    if args.data_dir is not None and not args.data_dir.is_dir():
        parser.error(f"--data-dir: {args.data_dir} is not a directory")
    imagenet_rows = [name for name in args.rows if name in IMAGENET_ROWS]
    if args.profile == "paper" and not args.dry_run and imagenet_rows and args.data_dir is None:
        parser.error(f"--data-dir: rows {', '.join(imagenet_rows)} of the paper profile read ImageNet's validation "
                     "images: pass --data-dir with its val/ and val.txt (or leave those rows out of --rows)")
    args.weights = _parse_weights(parser, args)
    return args


#: Rows whose paper profile reads ImageNet validation images from --data-dir.
IMAGENET_ROWS = ("guo", "xie")


def seed_problem(seed: int, option: str = "--seed") -> Optional[str]:
    try:
        check_seed(seed, option)
    except (TypeError, ValueError) as error:
        return str(error)
    return None


def device_problem(name: str, option: str = "--device") -> Optional[str]:
    """Why ``name`` is not a usable torch device here (cpu, or an existing cuda device), or None."""
    try:
        check_device(name, option)
    except ValueError as error:
        return str(error)
    return None


def results_dir_problem(results_dir: Path) -> Optional[str]:
    """Why a run could not write its results (checked before any computation), or None."""
    try:
        for folder in (results_dir, results_dir / "rows", results_dir / "records", results_dir / "figures"):
            check_writable_dir(folder, "--results-dir")
    except ValueError as error:
        return str(error)
    return None


def _parse_weights(parser: argparse.ArgumentParser, args: argparse.Namespace) -> Dict[str, Path]:
    """``--weights ROW=PATH`` for rows that read a user checkpoint in this profile; any other is an
    error now (it would otherwise be ignored without a word)."""
    if args.weights and args.dry_run:
        parser.error("--weights: a dry run uses untrained models and reads no weights; drop --weights or --dry-run")
    takers = [spec.name for spec in all_specs(list(ROW_NAMES), args.profile, False) if spec.takes_weights]
    weights = {}
    for item in args.weights:
        row, sep, path = item.partition("=")
        if not sep or row not in ROW_NAMES or not path:
            parser.error(f"--weights: expected ROW=PATH, got {item!r}")
        if row not in takers:
            parser.error(f"--weights {item}: row {row} reads no weights in the {args.profile} profile; "
                         f"rows that take weights: {', '.join(takers)}")
        if row not in args.rows:
            parser.error(f"--weights {item}: row {row} is not among --rows ({', '.join(args.rows)})")
        if not Path(path).is_file():
            parser.error(f"--weights {item}: no such file {path!r}")
        if row in weights:
            parser.error(f"--weights: row {row} given twice")
        weights[row] = Path(path)
    return weights


def _check_datasets(specs: List[RowSpec], data_dir: Optional[Path]) -> None:
    """Every dataset the rows read is on this machine (or downloads now): a missing one fails
    before the first row, not after the rows before it have run for hours."""
    for name in sorted({spec.dataset for spec in specs if spec.dataset in DATASETS}):
        for split in ("train", "test"):
            try:
                locate_split(name, split, data_dir=data_dir, download=True)
            except DatasetNotFoundError as missing:
                raise SystemExit(f"python -m reproduce: {missing}") from None


def _device(name: str) -> torch.device:
    problem = device_problem(name)
    if problem:
        raise SystemExit(problem)
    return torch.device(name)


def row_key(spec: RowSpec, ctx: RunContext) -> str:
    """What a cached row result must match to be reused: the row's settings, and the code, data
    and weights that compute it (``reproduce.provenance``)."""
    return recipe_key({"format": RESULT_FORMAT, "spec": spec.describe(), "profile": ctx.profile,
                       "examples": ctx.examples(spec.n_examples), "seed": ctx.seed, "dry_run": ctx.dry_run,
                       "device_type": ctx.device.type, "obfgrad": obfgrad.__version__,
                       "code": provenance.code_fingerprint(), "data": provenance.data_fingerprint(spec, ctx),
                       "weights": provenance.weights_fingerprint(spec, ctx)})


def _cached_result(path: Path, key: str, ctx: RunContext) -> Optional[Dict[str, Any]]:
    """The stored result of a row when it was made by this code, data and settings and is well
    formed; None otherwise (a damaged or malformed file is reported with a warning, never reused)."""
    if not path.exists():
        return None
    try:
        stored = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        return _refuse(path, f"unreadable ({type(error).__name__}: {error})", ctx)
    if isinstance(stored, dict) and stored.get("key") != key:
        ctx.log(f"  {path}: made by other code, data or settings; recomputing")
        return None
    problems = provenance.result_problems(stored, ctx.results_dir)
    if problems:
        return _refuse(path, "; ".join(problems), ctx)
    return stored["result"]


def _refuse(path: Path, reason: str, ctx: RunContext) -> None:
    message = f"{path}: cached result refused, recomputing: {reason}"
    warnings.warn(message, RuntimeWarning, stacklevel=3)
    ctx.log(f"  {message}")
    return None


def run_row(spec: RowSpec, ctx: RunContext, resume: bool = True) -> Dict[str, Any]:
    path = ctx.results_dir / "rows" / f"{spec.name}.json"
    if resume:
        key = row_key(spec, ctx)
        cached = distributed.from_main(lambda: _cached_result(path, key, ctx))  # one decision for all ranks
        if cached is not None:
            ctx.log(f"[{spec.name}] cached result reused ({path})")
            return _with_eps_curve(spec, ctx, path, key, cached)
    ctx.log(f"[{spec.name}] {spec.defense} — {spec.dataset}, ε = {spec.eps:.4g} ({spec.distance})")
    distributed.fill_caches(spec, ctx)  # several ranks: rank 0 trains the row's models first
    torch.manual_seed(ctx.seed)
    started = time.perf_counter()
    result = (spec.run or evaluation.run_row)(spec, ctx)
    result["wall_seconds"] = round(time.perf_counter() - started, 2)
    result.setdefault("n", ctx.examples(spec.n_examples))
    result["paper_accuracy"] = spec.paper_accuracy
    key = row_key(spec, ctx)  # after the run: a dataset the row downloaded is now part of the key
    result["provenance"] = {"code": provenance.code_fingerprint(), "data": provenance.data_fingerprint(spec, ctx),
                            "weights": provenance.weights_fingerprint(spec, ctx),
                            "git_revision": environment.capture(ctx.device, ctx.seed, ctx.profile)["git_revision"]}
    _write_row(path, key, spec, ctx, result)
    return _with_eps_curve(spec, ctx, path, key, result)


def _write_row(path: Path, key: str, spec: RowSpec, ctx: RunContext, result: Dict[str, Any]) -> None:
    if distributed.is_main():  # under torchrun every rank holds the same result; one writes it
        atomic_write_json(path, {"key": key, "spec": spec.describe(), "result": result,
                                 "checksum": provenance.result_checksum(result),
                                 "environment": environment.capture(ctx.device, ctx.seed, ctx.profile)})


def _with_eps_curve(spec: RowSpec, ctx: RunContext, path: Path, key: str, result: Dict[str, Any]) -> Dict[str, Any]:
    """Adds the row's accuracy-vs-eps curve unless ``result`` holds it for these settings, and
    rewrites the row file: the row's number is saved first (a failing curve never costs a row),
    and a warm rerun recomputes nothing."""
    if curves.needs_curve(spec, ctx, result):
        result["eps_curve"] = curves.row_eps_curve(spec, ctx)
        _write_row(path, key, spec, ctx, result)
    return result


def run_table(specs: List[RowSpec], ctx: RunContext, *, resume: bool = True,
              on_row: Optional[Callable[[RowSpec, Dict[str, Any]], None]] = None) -> Dict[str, Any]:
    without_run = [spec.name for spec in specs if spec.run is None and not spec.evaluations]
    if without_run:  # refused before any row spends time
        raise ValueError(f"specs: row {without_run[0]!r} has no run function")
    results: Dict[str, Dict[str, Any]] = {}
    for spec in specs:
        results[spec.name] = run_row(spec, ctx, resume)
        if on_row is not None:
            on_row(spec, results[spec.name])
    if not distributed.is_main():
        return {"results": results, "paths": {}}
    env = environment.capture(ctx.device, ctx.seed, ctx.profile)
    paths = table.write_tables(ctx.results_dir, specs, results, env, ctx.profile)
    paths.update(figures.write_figures(ctx.results_dir, specs, results, log=ctx.log))
    return {"results": results, "paths": paths}


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    device = distributed.init(_device(args.device))  # under torchrun: join the group, cuda:LOCAL_RANK
    main_rank = distributed.is_main()  # the other ranks attack their share quietly and write nothing
    ctx = RunContext(profile=args.profile, device=device, seed=args.seed, limit=args.limit,
                     data_dir=args.data_dir, results_dir=args.results_dir, dry_run=args.dry_run,
                     progress=False if args.quiet or not main_rank else None, weights=args.weights,
                     log=print if main_rank else (lambda message: None))
    specs = all_specs(args.rows, args.profile, args.dry_run)
    if not args.dry_run:
        _check_datasets(specs, args.data_dir)
    outcome = run_table(specs, ctx, resume=args.resume)
    distributed.shutdown()
    if not main_rank:
        return 0
    print()
    print(outcome["paths"]["md"].read_text())
    print("Wrote " + ", ".join(str(path) for path in outcome["paths"].values()))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
