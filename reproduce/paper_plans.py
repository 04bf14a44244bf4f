"""The paper-profile work of each Table 1 row, for :mod:`reproduce.estimate`: what its attacks (and,
roughly, its training) cost in units that module measures. A row's spec names its plan
(``RowSpec.work_plan``, ``plan(spec, resolved) -> RowPlan``; ``resolved``: the row's
:func:`reproduce.fidelity.resolve`-d entries), so the estimate reads every row through its spec;
the plans of the nine rows live here rather than in the row modules to keep those short, and a new
row may equally define its plan in its own module.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List

from obfgrad.defenses.input_transforms import GUO_TRANSFORMS
from reproduce.spec import RowSpec

#: Training-set sizes (training estimates: examples per epoch).
TRAIN_EXAMPLES = {"cifar10": 50_000, "mnist": 60_000, "fashion-mnist": 60_000}

ROWS_CIFAR = 32  # PixelDefend: a purification is 32 rows of incremental evaluation, each costing the same


# ---------------------------------------------------------------------------- the work of a row


@dataclass(frozen=True)
class Work:
    """One attack (or training run) of a row: ``examples x steps x eot_samples x restarts``
    gradient evaluations, each costing ``units`` (unit key -> how many per evaluation)."""

    label: str
    examples: int
    steps: int
    units: Dict[str, float]
    eot_samples: int = 1
    restarts: int = 1
    kind: str = "attack"  # "attack" or "training"
    note: str = ""

    @property
    def gradient_evaluations(self) -> int:
        return self.examples * self.steps * self.eot_samples * self.restarts

    def seconds_per_evaluation(self, unit_seconds: Dict[str, float]) -> float:
        return sum(unit_seconds[key] * count for key, count in self.units.items())

    def seconds(self, unit_seconds: Dict[str, float]) -> float:
        return self.gradient_evaluations * self.seconds_per_evaluation(unit_seconds)


@dataclass
class RowPlan:
    """What a row runs in the paper profile, in units to be measured."""

    row: str
    work: List[Work]
    excluded: List[str] = field(default_factory=list)
    not_estimated_training: List[str] = field(default_factory=list)


def attack(label: str, entry: Dict[str, Any], units: Dict[str, float], note: str = "") -> Work:
    """A Table 1 entry resolved by :func:`reproduce.fidelity.resolve`."""
    return Work(label, examples=entry["examples"], steps=entry["steps"], units=units,
                eot_samples=entry["eot_samples"], restarts=entry["restarts"], note=note)


def training(label: str, recipe: Dict[str, Any], units: Dict[str, float], adversary_steps: int = 0) -> Work:
    """Rough: one forward+backward per training example and epoch (plus one per adversary step),
    at the attack unit's batch size; weight gradients (about one more backward), the optimizer, data
    loading and the better efficiency of large training batches are not in it."""
    return Work(label, examples=TRAIN_EXAMPLES[recipe["dataset"]] * recipe["epochs"], steps=1 + adversary_steps,
                units=units, kind="training",
                note="rough: input-gradient fwd+bwd unit x training examples x epochs x (1 + adversary steps); "
                     "no weight gradients or optimizer")


EARLY_STOP = "upper bound: full step budget, the attack stops early on success"


def thermometer(spec: RowSpec, resolved: Dict[str, Dict[str, Any]]) -> RowPlan:
    config, unit = spec.config, {"thermometer_wide_resnet": 1}
    return RowPlan(spec.name, [
        attack("adaptive: BPDA (soft thermometer), Adam-sign", resolved["thermometer"], unit),
        Work("own: LS-PGA", spec.n_examples, config["own_lspga"]["steps"], unit),
        Work("own: plain-gradient PGD", spec.n_examples, config["own_plain_gradient"]["steps"], unit),
        training("training: wide ResNet on thermometer codes (natural)", config["classifier"], unit),
    ], excluded=["clean-accuracy and judging forwards"])


def lid(spec: RowSpec, resolved: Dict[str, Dict[str, Any]]) -> RowPlan:
    config, unit = spec.config, {"lid_cnn": 1}
    cw = config["detector_attack"]
    cw_steps = cw["steps"] * cw["binary_search_steps"]
    return RowPlan(spec.name, [
        attack("adaptive: high-confidence PGD", resolved["lid"], unit),
        Work("own: CW-L2 (judged with the detector)", spec.n_examples, cw_steps, unit),
        Work("detector training data: CW-L2", config["detector"]["train_examples"], cw_steps, unit),
        training("training: Ma et al.'s CIFAR CNN (natural)", config["classifier"], unit),
    ], excluded=["LID features (forward passes over minibatches of 100) and the logistic-regression fit",
                 "clean-accuracy and judging forwards"])



def guo(spec: RowSpec, resolved: Dict[str, Dict[str, Any]]) -> RowPlan:
    work = []
    for name in GUO_TRANSFORMS:
        entry = resolved[f"guo/{name}"]
        units = {"inception_v3_299": 1, f"{name}_299": 1}
        stops_early = spec.config["adaptive_attack"][name].get("early_stop", True)
        work.append(attack(f"{name}: adaptive (BPDA/EOT, penalized gradient descent)", entry, units,
                            note=EARLY_STOP if stops_early else ""))
        work.append(Work(f"{name}: own (transfer PGD on the undefended net)", spec.n_examples,
                         spec.config["own_attack"]["steps"], {"inception_v3_299": 1}))
    return RowPlan(spec.name, work, excluded=[
        "judging forwards through the defenses (crop-rescale: 30 crops per prediction; quilting: one quilt each)",
        "building the 1,000,000-patch quilting database",
        "quilting's k-NN over 1,000,000 patches is extrapolated linearly from two measured database sizes",
    ], not_estimated_training=["none: InceptionV3 uses pretrained weights"])


def xie(spec: RowSpec, resolved: Dict[str, Dict[str, Any]]) -> RowPlan:
    return RowPlan(spec.name, [
        attack("adaptive: EOT over resize-and-pad", resolved["xie"],
                {"inception_v3_299": 1, "random_resize_pad_299": 1}),
        Work("own: transfer PGD on the undefended net", spec.n_examples, spec.config["own_attack"]["steps"],
             {"inception_v3_299": 1}),
    ], excluded=[f"judging: {spec.config['strict_draws']} fresh defended forwards per example (10-of-10 rule)"],
        not_estimated_training=["none: InceptionV3 uses pretrained weights"])


def sap(spec: RowSpec, resolved: Dict[str, Dict[str, Any]]) -> RowPlan:
    config = spec.config
    return RowPlan(spec.name, [
        attack("adaptive: EOT over SAP draws, Adam-sign", resolved["sap"], {"sap_wide_resnet": 1}),
        Work("own: single-sample PGD", spec.n_examples, config["own_attack"]["steps"], {"sap_wide_resnet": 1},
             note=EARLY_STOP),
    ], excluded=[f"voting: {config['vote_draws']} forwards per example per attack",
                 "clean-accuracy and judging forwards"],
        not_estimated_training=["the natural wide ResNet is the Madry row's natural twin (same recipe, trained "
                                "once and cached): see madry"])


def pixeldefend(spec: RowSpec, resolved: Dict[str, Dict[str, Any]]) -> RowPlan:
    config = spec.config
    purification = {"pixeldefend_row_32": ROWS_CIFAR}
    return RowPlan(spec.name, [
        attack("adaptive: BPDA through purification", resolved["pixeldefend"],
                {**purification, "wide_resnet": 1}, note=EARLY_STOP),
        Work("own: transfer PGD on the undefended net", spec.n_examples, config["own_attack"]["steps"],
             {"wide_resnet": 1}),
        Work("undefended classifier: PGD", spec.n_examples, config["own_attack"]["steps"], {"wide_resnet": 1}),
        Work("purifications outside attack steps (clean, own judging, adaptive judging, identity gap)",
             spec.n_examples, 4, purification),
    ], excluded=["purification is counted as 32 times its first row of incremental evaluation (upper bound: the "
                 "first row also sets up the caches; measured 2.48 s vs 2.02 s for each later row on one CPU "
                 "thread); converting the model to float64, once per batch, is not counted"],
        not_estimated_training=["PixelCNN++ (250 epochs on CIFAR-10): not estimated",
                                "the natural wide ResNet: see madry (same recipe, cached)"])


def defensegan(spec: RowSpec, resolved: Dict[str, Dict[str, Any]]) -> RowPlan:
    config = spec.config
    projection = config["projection"]
    projection_units = {"dcgan_generator": projection["steps"] * projection["restarts"]}
    latent = config["latent_attack"]
    n = spec.n_examples
    return RowPlan(spec.name, [
        attack("adaptive (attack B): BPDA through the projection", resolved["defensegan/bpda"],
                {**projection_units, "mnist_cnn": 1}, note=EARLY_STOP),
        Work("attack A: latent inversion (Adam over restarts)", n, latent["inversion_steps"], {"dcgan_generator": 1},
             restarts=latent["inversion_restarts"]),
        Work("attack A: latent optimisation (steps x binary searches)", n,
             latent["steps"] * latent["binary_search_steps"], {"dcgan_generator": 1, "mnist_cnn": 1}),
        Work("own: transfer PGD on the undefended classifier", n, config["own_attack"]["steps"], {"mnist_cnn": 1},
             note=EARLY_STOP),
        Work("undefended classifier: PGD", n, config["own_attack"]["steps"], {"mnist_cnn": 1}, note=EARLY_STOP),
        Work("projections outside attack steps (clean, own judging, adaptive judging)", n, 3, projection_units),
        training("training: MNIST classifier (natural)", config["classifier"], {"mnist_cnn": 1}),
    ], excluded=[f"the generator unit is per latent, timed on batch x {projection['restarts']} latents (the "
                 "projection's batch); attack A's inversion batches 30 restarts, its optimisation one latent"],
        not_estimated_training=["WGAN-GP generator training: not estimated"])


def madry(spec: RowSpec, resolved: Dict[str, Dict[str, Any]]) -> RowPlan:
    config, unit = spec.config, {"wide_resnet": 1}
    adaptive = config["adaptive_attack"]
    return RowPlan(spec.name, [
        attack("own: PGD-20, cross-entropy", resolved["madry"], unit),
        Work("adaptive: PGD, CW margin, restarts", spec.n_examples, adaptive["steps"], unit,
             restarts=adaptive["restarts"]),
        Work("natural twin: the adaptive attack", spec.n_examples, adaptive["steps"], unit,
             restarts=adaptive["restarts"]),
        training("training: PGD adversarial training", config["classifier"], unit,
                  adversary_steps=config["classifier"]["adversarial"]["steps"]),
        training("training: natural twin (shared with sap, pixeldefend)", config["natural_twin"], unit),
    ], excluded=["clean-accuracy and judging forwards"])


def na(spec: RowSpec, resolved: Dict[str, Dict[str, Any]]) -> RowPlan:
    config, unit = spec.config, {"wide_resnet": 1}
    return RowPlan(spec.name, [
        attack("adaptive: PGD, CW margin, restarts", resolved["na"], unit),
        Work("own: PGD-20, cross-entropy", spec.n_examples, config["own_attack"]["steps"], unit),
    ], excluded=["clean-accuracy and judging forwards"],
        not_estimated_training=["cascade adversarial training: not estimated (its source network is the Madry "
                                "row's adversarially trained one: see madry)"])
