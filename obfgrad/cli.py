"""The ``obfgrad`` command.

    obfgrad info        what backend is active (native extension, OpenMP threads, CUDA/CuPy)
    obfgrad diagnose    check a defense for obfuscated gradients (Athalye et al. 2018, Sec. 3):
                        --defense NAME (a Table 1 defense of obfgrad.zoo, "undefended" or "all")
                        or --model path.py:factory (your own module)
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import math
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

#: ``--defense`` names besides the Table 1 rows.
UNDEFENDED = "undefended"
ALL = "all"


def _info(_args: argparse.Namespace) -> int:
    from obfgrad import backend_info

    print(json.dumps(backend_info(), indent=2))
    return 0


# -- diagnose: where the defense comes from -------------------------------------------------------

def _build_context(args: argparse.Namespace):
    import torch

    from obfgrad.zoo import BuildContext

    return BuildContext(profile=args.profile, device=torch.device(args.device), seed=args.seed,
                        data_dir=args.data_dir, dry_run=args.dry_run, progress=False if args.quiet else None,
                        log=lambda message: print(message, file=sys.stderr))


def _defense_case(name: str, args: argparse.Namespace) -> Dict[str, Any]:
    """diagnose() arguments for a zoo defense (``obfgrad.zoo``) or the undefended model."""
    from obfgrad import zoo

    ctx = _build_context(args)
    defense, _, variant = name.partition(":")
    module = zoo.defense_module("madry" if name == UNDEFENDED else defense)
    config = module.config(args.profile, args.dry_run)
    if name == UNDEFENDED:
        bundle = module.build_undefended(config, ctx, args.examples)
        return {"model": bundle.model, "x": bundle.x, "y": bundle.y, "distance": bundle.distance,
                "eps": bundle.eps, "surrogate": None, "expected": "none"}
    bundle = module.build(config, ctx, args.examples, **({"variant": variant} if variant else {}))
    return {"model": bundle.model, "x": bundle.x, "y": bundle.y, "distance": bundle.distance, "eps": bundle.eps,
            "surrogate": bundle.undefended, "adaptive_model": bundle.adaptive_model,
            "randomized": True if bundle.randomized else None, "expected": bundle.obfuscation}


def _expand(name: str) -> List[str]:
    """A defense with variants (Guo's five transformations) stands for all of them: ``guo:jpeg``, ..."""
    from obfgrad import zoo

    if name == UNDEFENDED or ":" in name:
        return [name]
    return [f"{name}:{variant}" for variant in zoo.variants(name)] or [name]


def _load_callable(reference: str, option: str):
    path, sep, attribute = reference.rpartition(":")
    if not sep or not path or not attribute:
        raise SystemExit(f"{option}: expected path/to/file.py:function, got {reference!r}")
    if not Path(path).is_file():
        raise SystemExit(f"{option}: no such file {path!r}")
    module_spec = importlib.util.spec_from_file_location(Path(path).stem, path)
    if module_spec is None or module_spec.loader is None:
        raise SystemExit(f"{option}: cannot import {path!r} as a Python module (expected a .py file)")
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except Exception as error:  # the user's code: say whose error it is
        raise SystemExit(f"{option}: importing your file {path} raised {_describe(error)}") from error
    factory = getattr(module, attribute, None)
    if not callable(factory):
        raise SystemExit(f"{option}: {path} has no callable {attribute!r}")
    return factory


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


def _read_data(path: Path) -> Dict[str, Any]:
    """``--data``: a torch.save'd dict with tensors ``x`` and ``y``, or a clear error."""
    import torch

    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # missing, unreadable, truncated, not a torch file, a pickle of code
        raise SystemExit(f"--data: cannot read {path}: {_describe(error)}") from None
    if not isinstance(data, dict) or not all(isinstance(data.get(key), torch.Tensor) for key in ("x", "y")):
        raise SystemExit(f"--data: expected a torch.save'd dict with tensors 'x' and 'y' in {path}")
    return data


def _model_case(args: argparse.Namespace) -> Dict[str, Any]:
    """``--model file.py:factory``: the factory returns an nn.Module, or a dict with ``model`` and any
    of ``x``, ``y``, ``preprocess``, ``surrogate``, ``adaptive_model``, ``randomized``, ``distance``,
    ``eps``."""
    import torch

    data = _read_data(args.data) if args.data is not None else None  # before the factory runs
    factory = _load_callable(args.model, "--model")
    try:
        made = factory()
    except Exception as error:  # the user's code: say whose error it is
        raise SystemExit(f"--model: your factory {args.model} raised {_describe(error)}") from error
    case: Dict[str, Any] = dict(made) if isinstance(made, dict) else {"model": made}
    if not callable(case.get("model")):
        raise SystemExit(f"--model: the factory must return a model (an nn.Module or callable) or a dict with a "
                         f"'model' entry, got {type(case.get('model', made)).__name__}")
    if data is not None:
        case["x"], case["y"] = data["x"], data["y"]
    elif args.dataset is not None:
        from obfgrad.data import load_dataset

        try:
            images, labels = load_dataset(args.dataset, "test", data_dir=args.data_dir)
        except (FileNotFoundError, ValueError) as error:  # not found, damaged, or not this dataset
            raise SystemExit(f"--dataset {args.dataset}: {error}") from None
        case["x"], case["y"] = images[:args.examples], labels[:args.examples]
    if "x" not in case or "y" not in case:
        raise SystemExit("--model: give the labelled batch with --data file.pt or --dataset NAME "
                         "(or return 'x' and 'y' from the factory)")
    for key in ("x", "y"):
        if not isinstance(case[key], torch.Tensor):
            raise SystemExit(f"--model: the batch's {key!r} must be a tensor, got {type(case[key]).__name__}")
    for key in ("distance", "eps"):
        if getattr(args, key) is not None:
            case[key] = getattr(args, key)
    if case.get("eps") is None:
        raise SystemExit("--model: the threat model needs --eps (and --distance, default linf)")
    case.setdefault("distance", "linf")
    case.setdefault("expected", None)
    device = torch.device(args.device)
    case["x"], case["y"] = case["x"].to(device), case["y"].to(device)
    return case


# -- diagnose: running and printing --------------------------------------------------------------

def _budget(args: argparse.Namespace):
    from obfgrad.eval.diagnose import DiagnoseBudget

    fields = {"examples": args.examples, "steps": args.steps, "random_samples": args.random_samples,
              "eot_samples": args.eot_samples, "judge_samples": args.judge_samples,
              "grad_repeats": args.grad_repeats, "surrogate_steps": args.surrogate_steps,
              "tolerance": args.tolerance}
    return DiagnoseBudget(**{key: value for key, value in fields.items() if value is not None})


def _diagnose_case(name: str, case: Dict[str, Any], args: argparse.Namespace, out_dir: Optional[Path]):
    from obfgrad.eval.diagnose import diagnose

    try:
        report = diagnose(case["model"], case["x"], case["y"], distance=case["distance"], eps=case["eps"],
                          surrogate=case.get("surrogate"), preprocess=case.get("preprocess"),
                          adaptive_model=case.get("adaptive_model"), randomized=case.get("randomized"),
                          budget=_budget(args), seed=args.seed, progress=not args.quiet,
                          # A dry run's untrained model on synthetic images gets the random labels
                          # right by chance only: judge it against its own predictions.
                          relabel=args.dry_run)
    except (ValueError, TypeError) as error:  # the library's checks of what it was given
        raise SystemExit(f"obfgrad diagnose {name}: {error}") from error
    report.config["defense"] = name
    report.config["expected_obfuscation"] = case.get("expected")
    report.config["model"] = name
    print(report.to_text())
    if case.get("expected") is not None:
        print(f"paper: {case['expected']}")
    targets = {"json": args.json, "plot": args.plot} if out_dir is None else {
        "json": out_dir / f"{name.replace(':', '-')}.json", "plot": out_dir / f"{name.replace(':', '-')}.png"}
    if targets["json"] is not None:
        report.save_json(targets["json"])
    if targets["plot"] is not None:
        report.plot(targets["plot"])
    return report


def _verdict_table(rows: List[Dict[str, Any]]) -> str:
    lines = ["| defense | paper | verdict | obfuscation found | failed checks |", "|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['defense']} | {row['expected'] or '-'} | {row['verdict']} | "
                     f"{', '.join(row['types']) or '-'} | {', '.join(row['failed']) or '-'} |")
    return "\n".join(lines)


def _diagnose(args: argparse.Namespace) -> int:
    if args.model is not None:
        reports = [_diagnose_case(Path(args.model.rpartition(":")[0]).stem, _model_case(args), args, args.out_dir)]
    else:
        from obfgrad import zoo

        known = list(zoo.DEFENSES) + [UNDEFENDED, ALL]
        defense, _, variant = args.defense.partition(":")
        if defense not in known:
            raise SystemExit(f"--defense: unknown {args.defense!r}; choose from {', '.join(known)} "
                             "(a defense with variants also takes NAME:VARIANT, e.g. guo:jpeg)")
        if variant and variant not in zoo.variants(defense):
            raise SystemExit(f"--defense {args.defense}: {defense} has no variant {variant!r}; choose from "
                             f"{', '.join(zoo.variants(defense)) or '(none)'}")
        names = zoo.names() if args.defense == ALL else _expand(args.defense)
        if len(names) > 1 and (args.json is not None or args.plot is not None):
            raise SystemExit(f"--json/--plot: --defense {args.defense} diagnoses {len(names)} defenses "
                             f"({', '.join(names)}); one file would hold only the last: use --out-dir DIR")
        out_dir = args.out_dir if args.defense == ALL or args.out_dir is not None else None
        if out_dir is None and args.defense == ALL:
            raise SystemExit("--out-dir: --defense all writes one report per defense: give --out-dir DIR")
        reports = []
        for name in names:
            print(f"== {name} ==")
            try:
                case = _defense_case(name, args)
            except (FileNotFoundError, ValueError) as error:  # missing or damaged data or weights files
                raise SystemExit(f"obfgrad diagnose --defense {name}: {error}") from None
            reports.append(_diagnose_case(name, case, args, out_dir))
            print()
    rows = [{"defense": r.config["defense"], "expected": r.config.get("expected_obfuscation"),
             "verdict": r.verdict, "types": r.obfuscation_types,
             "failed": [c.name for c in r.checks if c.verdict == "fail"]} for r in reports]
    if len(rows) > 1:
        print(_verdict_table(rows))
    if args.out_dir is not None and len(rows) > 1:
        from obfgrad.atomic import atomic_write_text

        atomic_write_text(args.out_dir / "verdicts.md", _verdict_table(rows) + "\n")
    if args.strict and any(row["verdict"] != "pass" for row in rows):
        return 2
    return 0


def _add_diagnose(commands) -> None:
    diagnose = commands.add_parser(
        "diagnose", help="check a defense for obfuscated gradients (the paper's Sec. 3 checks + gradient probes)",
        description="Run the five characteristic-behaviour checks of Athalye, Carlini & Wagner (2018, Sec. 3) and "
                    "gradient probes on a defense; print a verdict per check and the likely obfuscation type.")
    source = diagnose.add_mutually_exclusive_group(required=True)
    source.add_argument("--defense", help="a Table 1 row (thermometer, lid, guo, sap, xie, pixeldefend, defensegan, "
                                          "madry, na; guo:bit_depth ... for one of Guo's five transformations, guo "
                                          "for all five), 'undefended', or 'all' (obfgrad.zoo)")
    source.add_argument("--model", help="path/to/file.py:factory returning your nn.Module (or a dict, see docs)")
    diagnose.add_argument("--profile", choices=("smoke", "paper"), default=None, help="row profile (default smoke)")
    diagnose.add_argument("--dry-run", action="store_true", help="untrained models, synthetic data (code path only)")
    diagnose.add_argument("--data", type=Path, help="with --model: a torch.save'd dict {'x': images, 'y': labels}")
    diagnose.add_argument("--dataset", choices=("mnist", "fashion-mnist", "cifar10"),
                          help="with --model: use the test split of mnist, fashion-mnist or cifar10")
    diagnose.add_argument("--data-dir", type=Path, default=None, help="where datasets are (searched first)")
    diagnose.add_argument("--distance", default=None, help="with --model: linf (default), l2, l2_rms_pixels, ...")
    diagnose.add_argument("--eps", type=float, default=None, help="with --model: the budget")
    diagnose.add_argument("--examples", type=int, default=100, help="examples to diagnose (default 100)")
    diagnose.add_argument("--steps", type=int, default=None, help="iterations per attack (default 100)")
    diagnose.add_argument("--random-samples", type=int, default=None, help="random points per example (default 64)")
    diagnose.add_argument("--eot-samples", type=int, default=None, help="draws per EOT gradient (default 10)")
    diagnose.add_argument("--judge-samples", type=int, default=None,
                          help="draws averaged to judge a randomized model (default 8)")
    diagnose.add_argument("--grad-repeats", type=int, default=None, help="repeated gradient calls (default 8)")
    diagnose.add_argument("--surrogate-steps", type=int, default=None,
                          help="training steps of a substitute model when none is given (default 300)")
    diagnose.add_argument("--tolerance", type=float, default=None, help="success-rate gap that fails (default 0.05)")
    diagnose.add_argument("--seed", type=int, default=0)
    diagnose.add_argument("--device", default="cpu", help="torch device (default cpu)")
    diagnose.add_argument("--json", type=Path, default=None, help="write the report as JSON")
    diagnose.add_argument("--plot", type=Path, default=None, help="write the figure (PNG; needs matplotlib)")
    diagnose.add_argument("--out-dir", type=Path, default=None,
                          help="write <defense>.json and <defense>.png here (and verdicts.md with --defense all)")
    diagnose.add_argument("--strict", action="store_true", help="exit with status 2 unless every verdict is pass")
    diagnose.add_argument("--quiet", action="store_true", help="no progress bars")
    diagnose.set_defaults(handler=_diagnose)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="obfgrad", description="Adaptive attacks on adversarial-example defenses.")
    commands = parser.add_subparsers(dest="command", required=True)
    info = commands.add_parser("info", help="show the active backend (native kernels, threads, CUDA)")
    info.set_defaults(handler=_info)
    _add_diagnose(commands)
    return parser


def _check_diagnose_args(args: argparse.Namespace) -> None:
    """Every option checked before any model is built or trained: a bad value, or an output
    location that cannot be written, fails now rather than after the whole run."""
    from obfgrad._checks import check_device, check_seed
    from obfgrad.atomic import check_writable_dir, check_writable_file
    from obfgrad.distances import get_distance

    if args.examples < 1:
        raise ValueError("--examples: expected a positive number of examples")
    check_seed(args.seed, "--seed")
    check_device(args.device, "--device")
    _budget(args).validated()
    if args.defense is not None:
        given = [f"--{name}" for name in ("data", "dataset", "distance", "eps") if getattr(args, name) is not None]
        if given:
            raise ValueError(f"{', '.join(given)}: only with --model (a --defense row brings its own data and "
                             "threat model)")
    elif args.dry_run or args.profile is not None:
        raise ValueError("--dry-run/--profile: only with --defense (they choose how a Table 1 row is built)")
    args.profile = args.profile or "smoke"
    if args.eps is not None and not (math.isfinite(args.eps) and args.eps > 0):
        raise ValueError(f"--eps: expected a positive finite budget, got {args.eps}")
    if args.distance is not None:
        get_distance(args.distance)
    if args.data is not None and args.dataset is not None:
        raise ValueError("--data, --dataset: give one of them")
    if args.data_dir is not None and not args.data_dir.is_dir():
        raise ValueError(f"--data-dir: {args.data_dir} is not a directory")
    if args.json is not None:
        check_writable_file(args.json, "--json")
    if args.plot is not None:
        check_writable_file(args.plot, "--plot")
    if args.out_dir is not None:
        check_writable_dir(args.out_dir, "--out-dir")
    if args.plot is not None or args.out_dir is not None:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise ValueError("--plot/--out-dir: figures need matplotlib (pip install matplotlib)") from None


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "diagnose":
        try:
            _check_diagnose_args(args)
        except (ValueError, TypeError) as error:
            parser.exit(2, f"obfgrad diagnose: error: {error}\n")
    return args.handler(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
