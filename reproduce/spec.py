"""A row of Table 1 is a spec, not a script: what it evaluates and with which settings, plus
the function that runs it. The runner (``reproduce.runner``) does the rest: caching, resume,
progress, tables.

Every setting that changes a number lives in ``RowSpec.config`` (plain JSON): it is printed,
stored in the results, and hashed into the key that decides whether a cached row result can
be reused.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ContextManager, Dict, List, Optional, Tuple

from obfgrad.zoo.base import PROFILES, BuildContext, DefenseBundle

__all__ = ["PROFILES", "ROW_NAMES", "BuildContext", "DefenseBundle", "RowSpec", "RunContext", "zoo_fields", "table1",
           "imagenet_fields"]

#: Table 1 order (Athalye, Carlini & Wagner 2018).
ROW_NAMES = ("thermometer", "lid", "guo", "sap", "xie", "pixeldefend", "defensegan", "madry", "na")


def _training_lock():
    from reproduce import distributed

    return distributed.main_first()


@dataclass
class RunContext(BuildContext):
    """What the command line decides for every row: how the zoo builds its defense
    (:class:`obfgrad.zoo.BuildContext`), how many examples, and where results go."""

    limit: Optional[int] = None
    results_dir: Path = Path("results")
    # torchrun: rank 0 trains and caches a model while the other ranks wait (reproduce.distributed)
    training_lock: Callable[[], ContextManager[Any]] = _training_lock

    def examples(self, default: int) -> int:
        """How many test examples a row attacks: the row's default, capped by ``--limit``."""
        if self.dry_run:
            return 2
        return default if self.limit is None else min(default, self.limit)


@dataclass
class RowSpec:
    """One row of Table 1 under one profile."""

    name: str
    defense: str  # "Madry et al. (2018), PGD adversarial training"
    dataset: str
    distance: str  # "linf", "l2_rms_pixels", "l2_per_value"
    eps: float
    paper_dataset: str
    paper_bound: str  # as Table 1 prints it, e.g. "0.031 (ℓ∞)"
    paper_accuracy: float  # fraction in [0, 1]
    paper_note: str = ""  # footnote marks and what they mean
    # The defense's own claimed accuracy at this setting, where its paper states one (the verdict's
    # "broken" needs the adaptive interval below it); None: the row's own evaluation is the claim.
    claimed_accuracy: Optional[float] = None
    n_examples: int = 100
    targeted: bool = False
    config: Dict[str, Any] = field(default_factory=dict)  # every setting, JSON
    choices: List[str] = field(default_factory=list)  # where protocol.md is UNCONFIRMED
    # A declarative row: ``setup(spec, ctx, x, y)`` builds its models by name ("guard": the classifier
    # the clean-accuracy guard checks) and ``evaluations`` (reproduce.evaluation.Evaluation) lists
    # its attacks; reproduce.evaluation.run_row runs them, and ``report(spec, ctx, setup, summaries)``
    # adds the row's own keys to the result. ``run`` replaces all of it for a row with more to do.
    setup: Optional[Callable[..., Dict[str, Any]]] = None
    evaluations: Tuple[Any, ...] = ()
    report: Optional[Callable[..., Dict[str, Any]]] = None
    run: Optional[Callable[[RowSpec, RunContext], Dict[str, Any]]] = None
    # Builds the defense for other tools (obfgrad diagnose): (spec, ctx, n_examples) -> bundle;
    # a row with several defenses (Guo's five transformations) names them in ``variants`` and
    # takes ``variant=NAME`` (the first variant is the default).
    build_defense: Optional[Callable[..., DefenseBundle]] = None
    variants: Tuple[str, ...] = ()
    # Budget of the row's accuracy-vs-eps curve (reproduce.curves), e.g. {"examples": 20, "steps": 10}
    # for rows whose adaptive model is slow; None: the profile's default.
    curve: Optional[Dict[str, Any]] = None
    # Whether the row reads a user checkpoint given with ``--weights ROW=FILE`` (in this profile);
    # a weights file for any other row is refused when the command line is parsed.
    takes_weights: bool = False
    # What the paper-profile tools read from the row, so that a row is described in one place (neither is
    # part of ``describe()``: they compute nothing of the row's result). ``work_plan(spec, resolved)``: the
    # row's paper-profile work for reproduce.estimate (a reproduce.paper_plans.RowPlan); ``fidelity``:
    # ``{entry: extract(spec) -> {field: value}}``, its settings for reproduce.fidelity to check against
    # reproduce/paper_settings.md (an entry is named as the row, or "row/part"); ``resolved`` is what those
    # extractors give, ``{entry: {field: value}}``, from which the plan takes the attacks' steps and examples.
    work_plan: Optional[Callable[..., Any]] = None
    fidelity: Dict[str, Callable[[RowSpec], Dict[str, Any]]] = field(default_factory=dict)

    def describe(self) -> Dict[str, Any]:
        """The JSON description stored with the result (and hashed for the cache key)."""
        return {
            "name": self.name,
            "defense": self.defense,
            "dataset": self.dataset,
            "distance": self.distance,
            "eps": self.eps,
            "n_examples": self.n_examples,
            "targeted": self.targeted,
            "paper": {"dataset": self.paper_dataset, "bound": self.paper_bound,
                      "accuracy": self.paper_accuracy, "note": self.paper_note},
            **({"claimed_accuracy": self.claimed_accuracy} if self.claimed_accuracy is not None else {}),
            "config": self.config,
            "choices": self.choices,
        }


def zoo_builder(build: Callable[..., DefenseBundle]) -> Callable[..., DefenseBundle]:
    """``RowSpec.build_defense`` from a zoo module's ``build(config, ctx, n, **options)``: the
    defense as the row's config describes it."""

    def build_defense(spec: RowSpec, ctx: BuildContext, n: int, **options: Any) -> DefenseBundle:
        return build(spec.config, ctx, n, **options)

    return build_defense


def zoo_fields(zoo: Any, profile: str, config: Dict[str, Any]) -> Dict[str, Any]:
    """The ``RowSpec`` fields a row takes from its zoo defense module (``obfgrad.zoo.<name>``):
    ``dataset``, ``distance``, ``eps`` and ``config`` (the row's settings, the zoo's ``config`` plus
    any of the row's own), ``build_defense`` and, where the zoo has several, ``variants``."""
    return {"dataset": zoo.dataset(profile), "distance": zoo.DISTANCE, "eps": config["eps"], "config": config,
            "build_defense": zoo_builder(zoo.build), "variants": tuple(getattr(zoo, "VARIANTS", ()))}


def table1(dataset: str, bound: str, accuracy: float, note: str = "") -> Dict[str, Any]:
    """The ``RowSpec`` fields of what Table 1 prints for the row: its dataset, bound (as printed,
    e.g. ``"0.031 (ℓ∞)"``), the adaptive accuracy Athalye et al. report, and the footnote."""
    return {"paper_dataset": dataset, "paper_bound": bound, "paper_accuracy": accuracy, "paper_note": note}


def imagenet_fields(profile: str) -> Dict[str, Any]:
    """The ``RowSpec`` fields of an ImageNet row: the paper profile reads the user's InceptionV3
    weights and attacks the first 1000 sorted validation images (robustml's order) towards random
    targets; smoke: 100 Fashion-MNIST test images, untargeted."""
    paper = profile == "paper"
    return {"takes_weights": paper, "n_examples": 1000 if paper else 100, "targeted": paper}
