"""Paper-profile time estimates: measured per-step costs, extrapolated to each row's work.

Nothing here runs a row. For every row of the paper profile this module

1. builds the row's models at paper size, **untrained** (the cost of a step does not depend on
   the weights), on the chosen device, and times the units an attack step is made of: one
   forward+backward of the classifier the adaptive attack differentiates (with the defense's
   BPDA forward where it has one), one row of PixelDefend purification, one generator forward+backward,
   ... (median of ``repeats`` after a warm-up, at ``batch`` examples, divided by ``batch``);
2. counts the work of the row's paper-profile attacks as its spec's ``work_plan`` gives it
   (:mod:`reproduce.paper_plans`: the Table 1 entries via :func:`reproduce.fidelity.resolve`; the
   defense's own evaluation and the extra attacks from ``RowSpec.config``): examples x steps x
   EOT samples x restarts gradient evaluations, each costing a known number of units (e.g.
   PixelDefend: 32 rows of incremental PixelCNN++ purification per purification, one purification
   per attack step);
3. multiplies. Every number it prints is *extrapolated from measured per-step cost*; attacks that
   stop early on success (``early_stop``) are counted at their full step budget (an upper bound).

Where a dry run shrinks a model (InceptionV3 fed at 75x75, PixelDefend's 4 positions, the
2,000-patch quilting database) this module builds the real size instead; what it cannot measure
is listed per row under ``excluded``.

    python -m reproduce.estimate                       # all rows, CPU, batch 1
    python -m reproduce.estimate --rows guo,xie --device cuda --batch 8 --repeats 5 --json est.json
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from obfgrad.atomic import atomic_write_json, check_writable_file
from reproduce import fidelity
from reproduce.paper_plans import RowPlan, Work
from reproduce.rows import all_specs
from reproduce.spec import ROW_NAMES, RowSpec, RunContext

LABEL = "extrapolated from measured per-step cost"


# ---------------------------------------------------------------------------- the work of a row


def plan(spec: RowSpec, resolved: Dict[str, Dict[str, Any]]) -> RowPlan:
    """The row's paper-profile work, as its spec's ``work_plan`` gives it (``resolved``:
    :func:`reproduce.fidelity.resolve` of its entries)."""
    if spec.work_plan is None:
        raise ValueError(f"rows: no estimate plan for {spec.name!r}: its RowSpec has no work_plan")
    return spec.work_plan(spec, resolved)


def plans(specs: Sequence[RowSpec]) -> List[RowPlan]:
    """The paper-profile work of each spec, in order; every row's fidelity entries resolved from its spec."""
    by_name = {spec.name: spec for spec in specs}
    resolved = fidelity.resolve([entry for spec in specs for entry in spec.fidelity], by_name)
    return [plan(spec, resolved) for spec in specs]


# ---------------------------------------------------------------------------- the arithmetic


def estimate(plan_: RowPlan, unit_seconds: Dict[str, float]) -> Dict[str, Any]:
    """Work x measured unit cost, per attack and summed: the row's JSON entry."""
    def item(work: Work) -> Dict[str, Any]:
        per_eval = work.seconds_per_evaluation(unit_seconds)
        return {"label": work.label, "kind": work.kind, "examples": work.examples, "steps": work.steps,
                "eot_samples": work.eot_samples, "restarts": work.restarts, "units": dict(work.units),
                "gradient_evaluations": work.gradient_evaluations, "seconds_per_evaluation": per_eval,
                "hours": work.gradient_evaluations * per_eval / 3600, "note": work.note}

    attacks = [item(work) for work in plan_.work if work.kind == "attack"]
    training = [item(work) for work in plan_.work if work.kind == "training"]
    headline = attacks[0]
    return {
        "label": LABEL,
        "headline_attack": headline["label"],
        "seconds_per_example_step": headline["seconds_per_evaluation"],
        "gradient_evaluations": sum(a["gradient_evaluations"] for a in attacks),
        "attack_hours": sum(a["hours"] for a in attacks),
        "attacks": attacks,
        "training_hours_rough": sum(t["hours"] for t in training) if training else None,
        "training": training,
        "training_not_estimated": list(plan_.not_estimated_training),
        "excluded": list(plan_.excluded),
    }


# ---------------------------------------------------------------------------- measuring units


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(step: Callable[[], None], device: torch.device, repeats: int) -> float:
    """Median seconds of ``step()`` over ``repeats`` runs after one warm-up run."""
    step()
    _sync(device)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def forward_backward(model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> Callable[[], None]:
    """One gradient evaluation: forward, then backward of the summed output into the input."""
    def step() -> None:
        inputs = x.detach().clone().requires_grad_(True)
        out = model(inputs)
        torch.autograd.grad(out.float().sum(), inputs)
    return step


def _images(batch: int, shape: Tuple[int, ...], device: torch.device) -> torch.Tensor:
    return torch.rand((batch, *shape), generator=torch.Generator().manual_seed(0)).to(device)


def _seeded(recipe_fields: Dict[str, Any], device: torch.device) -> nn.Module:
    from obfgrad.models.training import build_seeded, make_recipe

    return build_seeded(make_recipe(**recipe_fields)).to(device).eval()


@dataclass(frozen=True)
class Unit:
    """A measured unit: ``build(specs, device, items)`` returns a call that does the unit's work on
    ``items`` inputs; ``items(specs, batch)`` is how many inputs a timed call holds at ``--batch``
    (default ``batch``; the projection's generator holds ``batch x restarts`` latents)."""

    what: str
    build: Callable[[Dict[str, RowSpec], torch.device, int], Callable[[], None]]
    items: Callable[[Dict[str, RowSpec], int], int] = lambda specs, batch: batch


def _spec(specs: Dict[str, RowSpec], name: str) -> RowSpec:
    return specs[name] if name in specs else all_specs([name], "paper", False)[0]


def _wide_resnet(specs, device, batch):
    from obfgrad.zoo import recipes

    return forward_backward(_seeded(recipes.madry_cifar_wide_resnet(None), device), _images(batch, (3, 32, 32), device))


def _thermometer(specs, device, batch):
    from obfgrad.zoo import thermometer

    ctx = RunContext(profile="paper", device=device, dry_run=True)
    defense = thermometer.encoded_classifier(ctx, _spec(specs, "thermometer").config)
    return forward_backward(defense, _images(batch, (3, 32, 32), device))


def _sap(specs, device, batch):
    from obfgrad.defenses import SAP
    from obfgrad.zoo import recipes

    config = _spec(specs, "sap").config
    model = SAP(_seeded(recipes.madry_cifar_wide_resnet(None), device), eps=config["sap"]["eps"]).eval()
    return forward_backward(model, _images(batch, (3, 32, 32), device))


def _lid(specs, device, batch):
    return forward_backward(_seeded(_spec(specs, "lid").config["classifier"], device),
                            _images(batch, (3, 32, 32), device))


def _inception(specs, device, batch):
    from obfgrad.zoo import imagenet

    # The paper size (299x299 input), not the dry run's 75x75.
    return forward_backward(_seeded(imagenet.imagenet_classifier_recipe(dry_run=False), device),
                            _images(batch, (3, 299, 299), device))


def _guo_transform(name: str):
    def build(specs, device, batch):
        from obfgrad.zoo import guo

        transform = guo.make_transform(name, _spec(specs, "guo").config["transforms"][name], bpda=True)
        return forward_backward(transform.to(device), _images(batch, (3, 299, 299), device))
    return build


def _quilting_at(patches: int):
    def build(specs, device, batch):
        from obfgrad.data.patch_db import build_patch_database
        from obfgrad.defenses.input_transforms import ImageQuilting
        from reproduce.pipeline import synthetic_batch

        settings = _spec(specs, "guo").config["transforms"]["quilting"]
        images, _ = synthetic_batch("imagenet", 4, 0)
        database = build_patch_database(list(images), patches, patch_size=settings["patch_size"], channels=3,
                                        long_side=None, source="estimate: synthetic")
        transform = ImageQuilting(database, settings["k"], settings["overlap"], bpda=True,
                                  stitch=settings.get("stitch", "min_cut"))
        return forward_backward(transform, _images(batch, (3, 299, 299), device))
    return build


def _resize_pad(specs, device, batch):
    from obfgrad.defenses import RandomResizePad

    transform = RandomResizePad(**_spec(specs, "xie").config["transform"])
    return forward_backward(transform, _images(batch, (3, 299, 299), device))


def _purification_row(specs, device, batch):
    """The first row (32 positions) of PixelDefend's purification, incremental evaluation in float64
    (the library's default): every row does the same work (one row of the u stream, 32 positions of
    the ul stream, the choices), and the first also allocates the caches, so 32 of these bound a
    purification from above. The model is converted to float64 here, once, as ``purify`` does once
    per batch."""
    from obfgrad.defenses.pixeldefend import purify
    from obfgrad.models.pixelcnn import build_pixelcnn

    config = _spec(specs, "pixeldefend").config
    model = build_pixelcnn(config["pixelcnn"]).to(device).eval().double()
    x = _images(batch, (3, 32, 32), device)
    return lambda: purify(model, x, config["eps_defend"], max_positions=32)


def _generator(specs, device, batch):
    from obfgrad.models.wgan import build_wgan

    generator = build_wgan(_spec(specs, "defensegan").config["generator"])[0].to(device).eval()
    for parameter in generator.parameters():  # the projection optimises z only
        parameter.requires_grad_(False)
    z = torch.randn((batch, generator.latent_dim), generator=torch.Generator().manual_seed(0)).to(device)
    return forward_backward(generator, z)


def _projection_restarts(specs: Dict[str, RowSpec]) -> int:
    return _spec(specs, "defensegan").config["projection"]["restarts"]


def _mnist_cnn(specs, device, batch):
    return forward_backward(_seeded(_spec(specs, "defensegan").config["classifier"], device),
                            _images(batch, (1, 28, 28), device))


QUILT_SIZES = (2_000, 10_000)  # measured; the paper's 1,000,000 is extrapolated linearly

UNITS: Dict[str, Unit] = {
    "wide_resnet": Unit("Madry's wide ResNet (CIFAR-10), fwd+bwd", _wide_resnet),
    "thermometer_wide_resnet": Unit("thermometer encoding (BPDA) + wide ResNet on 48 channels, fwd+bwd", _thermometer),
    "sap_wide_resnet": Unit("SAP wide ResNet, one draw, fwd+bwd", _sap),
    "lid_cnn": Unit("Ma et al.'s CIFAR CNN, fwd+bwd", _lid),
    "inception_v3_299": Unit("InceptionV3 at 299x299, fwd+bwd", _inception),
    "bit_depth_299": Unit("bit-depth reduction at 299x299, BPDA fwd+bwd", _guo_transform("bit_depth")),
    "jpeg_299": Unit("JPEG at 299x299, BPDA fwd+bwd", _guo_transform("jpeg")),
    "crop_rescale_299": Unit("one crop-rescale draw at 299x299, fwd+bwd", _guo_transform("crop_rescale")),
    "tv_299": Unit("TV minimisation at 299x299, BPDA fwd+bwd", _guo_transform("tv")),
    **{f"quilting_299@{n}": Unit(f"image quilting at 299x299 over {n:,} patches, BPDA fwd+bwd", _quilting_at(n))
       for n in QUILT_SIZES},
    "random_resize_pad_299": Unit("Xie's resize-and-pad at 299, fwd+bwd", _resize_pad),
    "pixeldefend_row_32": Unit("one row of PixelDefend purification (paper-size PixelCNN++, 32x32x3, incremental, "
                               "float64)", _purification_row),
    "dcgan_generator": Unit("Defense-GAN generator, one latent, fwd+bwd (timed on batch x restarts latents, as "
                            "the projection batches them)", _generator,
                            items=lambda specs, batch: batch * _projection_restarts(specs)),
    "mnist_cnn": Unit("Defense-GAN's MNIST classifier, fwd+bwd", _mnist_cnn),
}

#: Units computed from measured ones rather than measured: key -> (needs, function, what).
DERIVED = {
    "quilting_299": (tuple(f"quilting_299@{n}" for n in QUILT_SIZES),
                     "image quilting over 1,000,000 patches: linear extrapolation in the database size from "
                     + " and ".join(f"{n:,}" for n in QUILT_SIZES) + " patches"),
}


def _quilting_1m(costs: Dict[str, float], patches: int) -> float:
    (small, large) = QUILT_SIZES
    slope = max(0.0, (costs[f"quilting_299@{large}"] - costs[f"quilting_299@{small}"]) / (large - small))
    return costs[f"quilting_299@{small}"] + slope * (patches - small)


def units_needed(row_plans: Sequence[RowPlan]) -> List[str]:
    """Measured unit keys the plans need (derived units replaced by what they are computed from)."""
    needed: List[str] = []
    for row_plan in row_plans:
        for work in row_plan.work:
            for key in work.units:
                for base in DERIVED[key][0] if key in DERIVED else (key,):
                    if base not in needed:
                        needed.append(base)
    return needed


def measure_units(keys: Sequence[str], specs: Dict[str, RowSpec], device: torch.device, batch: int, repeats: int,
                  log: Callable[[str], None] = print) -> Dict[str, float]:
    """Seconds per item of each unit: median of ``repeats`` calls on ``items`` inputs / ``items``."""
    costs = {}
    for key in keys:
        items = UNITS[key].items(specs, batch)
        step = UNITS[key].build(specs, device, items)
        costs[key] = time_call(step, device, repeats) / items
        log(f"  {key:<26} {costs[key]:.4g} s per example  ({UNITS[key].what})")
        del step
    return costs


def with_derived(costs: Dict[str, float], quilt_patches: int) -> Dict[str, float]:
    out = dict(costs)
    if all(f"quilting_299@{n}" in costs for n in QUILT_SIZES):
        out["quilting_299"] = _quilting_1m(costs, quilt_patches)
    return out


# ---------------------------------------------------------------------------- report


def machine() -> Dict[str, Any]:
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__}


def _hours(value: Optional[float]) -> str:
    if value is None:
        return "-"
    return f"{value:.3g}" if value >= 0.01 else f"{value:.2g}"


def render(report: Dict[str, Any]) -> str:
    device = report["device"]
    lines = [f"All numbers: {LABEL} (device {device}, batch {report['batch']}, "
             f"median of {report['repeats']} after a warm-up; {report['machine']['cpu_count']} CPUs, "
             f"{report['machine']['torch_threads']} torch threads). Attacks with early stopping are counted at "
             "their full step budget.", "",
             f"| row | s per example-step, first attack listed ({device}) | gradient evaluations | "
             f"attack hours ({device}) | training hours (rough) | not estimated / excluded |",
             "|---|---|---|---|---|---|"]
    for row, entry in report["rows"].items():
        excluded = "; ".join(entry["training_not_estimated"] + entry["excluded"]) or "-"
        lines.append(f"| {row} | {entry['seconds_per_example_step']:.3g} | {entry['gradient_evaluations']:,} | "
                     f"{_hours(entry['attack_hours'])} | {_hours(entry['training_hours_rough'])} | {excluded} |")
    lines += ["", "| row | attack | examples x steps x EOT x restarts | s per evaluation | hours |",
              "|---|---|---|---|---|"]
    for row, entry in report["rows"].items():
        for item in entry["attacks"] + entry["training"]:
            shape = f"{item['examples']:,} x {item['steps']:,} x {item['eot_samples']} x {item['restarts']}"
            note = f" ({item['note']})" if item["note"] else ""
            lines.append(f"| {row} | {item['label']}{note} | {shape} | {item['seconds_per_evaluation']:.3g} | "
                         f"{_hours(item['hours'])} |")
    lines += ["", "Measured units (seconds per example; per latent for the generator):", ""]
    for key, seconds in report["units"].items():
        lines.append(f"- `{key}`: {seconds['seconds_per_item']:.4g} s ({seconds['what']})")
    return "\n".join(lines)


def run(rows: Sequence[str], device: torch.device, batch: int, repeats: int,
        log: Callable[[str], None] = print, command: str = "") -> Dict[str, Any]:
    row_specs = all_specs(list(rows), "paper", False)
    specs = {spec.name: spec for spec in row_specs}
    row_plans = plans(row_specs)
    measured = measure_units(units_needed(row_plans), specs, device, batch, repeats, log=log)
    quilt_patches = specs["guo"].config["transforms"]["quilting"]["patches"] if "guo" in specs else 0
    costs = with_derived(measured, quilt_patches)
    units = {key: {"seconds_per_item": value, "what": UNITS[key].what if key in UNITS else DERIVED[key][1],
                   "derived": key in DERIVED} for key, value in costs.items()}
    return {"label": LABEL, "device": str(device), "batch": batch, "repeats": repeats, "machine": machine(),
            "command": command,
            "units": units, "rows": {row_plan.row: estimate(row_plan, costs) for row_plan in row_plans}}


def _device(name: str) -> torch.device:
    if name not in ("cpu", "cuda"):
        raise ValueError(f"--device: expected cpu or cuda, got {name!r}")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: torch sees no CUDA device here; use --device cpu")
    return torch.device(name)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m reproduce.estimate",
                                     description="Hardware and time estimates for the paper profile: per-step costs "
                                                 f"measured on this device at paper size (untrained models), {LABEL}.")
    parser.add_argument("--rows", default=",".join(ROW_NAMES), help="comma-separated rows (default: all)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--batch", type=int, default=1, help="examples per timed call (default 1)")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per unit after a warm-up (default 3)")
    parser.add_argument("--json", default=None, help="also write the report to this JSON file")
    args = parser.parse_args(argv)
    rows = [name.strip() for name in args.rows.split(",") if name.strip()]
    unknown = [name for name in rows if name not in ROW_NAMES]
    if not rows or unknown:
        parser.error(f"--rows: unknown {', '.join(unknown) or '(none given)'}; choose from {', '.join(ROW_NAMES)}")
    if args.batch < 1:
        parser.error(f"--batch: expected a positive integer, got {args.batch}")
    if args.repeats < 1:
        parser.error(f"--repeats: expected a positive integer, got {args.repeats}")
    try:
        device = _device(args.device)
        if args.json:  # before the measurements, not after them
            check_writable_file(args.json, "--json")
    except ValueError as error:
        parser.error(str(error))
    command = "python -m reproduce.estimate " + " ".join(argv if argv is not None else sys.argv[1:])
    report = run(rows, device, args.batch, args.repeats, command=command.strip())
    print()
    print(render(report))
    if args.json:
        atomic_write_json(args.json, report)
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
