"""The paper-profile settings of each Table 1 row as :mod:`reproduce.fidelity` compares them with
``reproduce/paper_settings.md``: a row's spec names its entries (``RowSpec.fidelity``,
``{entry: extract(spec) -> {field: value}}``; an entry is the row, or ``row/part`` for one of its
attacks or transformations), so fidelity reads every row through its spec. Configs differ per row,
so each entry has its own extractor; those of the nine rows live here rather than in the row
modules to keep those short, and a new row may equally define its entries in its own module.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Tuple

from obfgrad.defenses.input_transforms import GUO_TRANSFORMS
from reproduce.fidelity import NOT_A_SETTING
from reproduce.spec import RowSpec

Extractor = Callable[[RowSpec], Dict[str, Any]]


def _norm(distance: str) -> Tuple[str, str]:
    """(norm, normalisation) of a spec's distance name (see ``obfgrad.distances``)."""
    if distance == "linf":
        return "linf", "none"
    if distance.startswith("l2"):
        return "l2", distance[3:] or "none"
    raise ValueError(f"distance: unexpected {distance!r}")


def _common(spec: RowSpec) -> Dict[str, Any]:
    norm, normalisation = _norm(spec.distance)
    return {"dataset": spec.dataset, "eps": spec.eps, "norm": norm, "normalisation": normalisation,
            "examples": spec.n_examples, "targeted": spec.targeted}


def _update(settings: Dict[str, Any], norm: str) -> str:
    """The step rule, named independently of the attack class: ``sign``, ``adam_sign``, ``adam``,
    ``raw_grad`` (x += lr·g) or ``l2_normalized_grad`` (x += lr·g/‖g‖)."""
    update = settings.get("update") or ("sign" if norm == "linf" else "normalized")  # PGD's default
    if update == "raw":
        return "raw_grad"
    if update == "normalized":
        return "sign" if norm == "linf" else "l2_normalized_grad"
    return update


def _attack(spec: RowSpec, settings: Dict[str, Any]) -> Dict[str, Any]:
    """The core fields of a PGD-like attack entry of a row config."""
    fields = _common(spec)
    fields.update({
        "steps": settings["steps"],
        "step_size": settings["step_size"] if "step_size" in settings else settings["lr"],
        "update": _update(settings, fields["norm"]),
        "eot_samples": settings.get("eot_samples", settings.get("samples", 1)),
        "restarts": settings.get("restarts", 1),
        "loss": settings["loss"] + (f"+{settings['penalty']:g}*l2sq_ratio" if settings.get("penalty") else ""),
    })
    return fields


def _classifier(recipe: Dict[str, Any]) -> Dict[str, Any]:
    fields = {"classifier.arch": recipe["arch"],
              "classifier.adversarial_training": recipe.get("adversarial") is not None}
    if recipe["arch"] == "wide_resnet":
        fields["classifier.widths"] = tuple(recipe["arch_kwargs"]["widths"])
        fields["classifier.units_per_stage"] = recipe["arch_kwargs"]["units_per_stage"]
    return fields


def _start(attack: Dict[str, Any]) -> Dict[str, Any]:
    """Where the attack starts: ``x`` (``-``) or the ball's point nearest the constant image ``v``."""
    return {"attack.start_from": NOT_A_SETTING if attack.get("start_from") is None else attack["start_from"]}


def _thermometer(spec: RowSpec) -> Dict[str, Any]:
    attack = spec.config["adaptive_attack"]
    return {**_attack(spec, attack), **_classifier(spec.config["classifier"]),
            "defense.levels": spec.config["encoder"]["levels"],
            "attack.random_start": attack["random_start"], "attack.backward": attack["backward"], **_start(attack)}


def _lid(spec: RowSpec) -> Dict[str, Any]:
    attack = spec.config["adaptive_attack"]
    return {**_attack(spec, attack), **_classifier(spec.config["classifier"]),
            "lid.k": spec.config["lid"]["k"], "lid.batch_size": spec.config["lid"]["batch_size"],
            "attack.random_start": attack["random_start"], "attack.early_stop": attack["early_stop"], **_start(attack)}


def _guo(transform: str) -> Callable[[RowSpec], Dict[str, Any]]:
    def extract(spec: RowSpec) -> Dict[str, Any]:
        defense = {f"defense.{key}": value for key, value in spec.config["transforms"][transform].items()
                   if key not in ("seed", "source", "file")}
        attack = spec.config["adaptive_attack"][transform]
        return {**_attack(spec, attack), "attack.project": attack["project"],
                "classifier.arch": spec.config["classifier"]["arch"], **defense}
    return extract


def _sap(spec: RowSpec) -> Dict[str, Any]:
    sap, attack = spec.config["sap"], spec.config["adaptive_attack"]
    return {**_attack(spec, attack), **_classifier(spec.config["classifier"]),
            "defense.draws_factor": sap["draws_factor"], "defense.eps": sap["eps"], **_start(attack),
            "attack.early_stop": attack["early_stop"]}


def _xie(spec: RowSpec) -> Dict[str, Any]:
    transform = {f"defense.{key}": value for key, value in spec.config["transform"].items()}
    return {**_attack(spec, spec.config["adaptive_attack"]), "classifier.arch": spec.config["classifier"]["arch"],
            **transform, "judge.strict_draws": spec.config["strict_draws"]}


def _pixeldefend(spec: RowSpec) -> Dict[str, Any]:
    pixelcnn = spec.config["pixelcnn"]["arch_kwargs"]
    return {**_attack(spec, spec.config["adaptive_attack"]), **_classifier(spec.config["classifier"]),
            "defense.eps_defend": spec.config["eps_defend"],
            **{f"pixelcnn.{key}": pixelcnn[key] for key in ("nr_resnet", "nr_filters", "nr_logistic_mix")}}


def _defensegan_bpda(spec: RowSpec) -> Dict[str, Any]:
    projection, generator = spec.config["projection"], spec.config["generator"]
    return {**_attack(spec, spec.config["adaptive_attack"]),
            **{f"projection.{key}": projection[key] for key in ("steps", "restarts", "lr", "momentum", "lr_decay",
                                                                "lr_decay_at")},
            "projection.starts": spec.config["projection_starts"],
            "generator.dim": generator["dim"], "generator.kind": generator["kind"],
            **{f"classifier.{key}": spec.config["classifier"][key]
               for key in ("arch", "optimizer", "batch_size", "epochs")}}


def _defensegan_latent(spec: RowSpec) -> Dict[str, Any]:
    latent = spec.config["latent_attack"]
    fields = _common(spec)
    fields.update({"steps": latent["steps"], "step_size": latent["lr"], "eot_samples": 1,
                   "restarts": latent["inversion_restarts"]})
    fields.update({f"latent.{key}": latent[key]
                   for key in ("inversion_steps", "inversion_lr", "binary_search_steps", "initial_const")})
    return fields


def _madry(spec: RowSpec) -> Dict[str, Any]:
    attack = spec.config["own_attack"]
    return {**_attack(spec, attack), **_classifier(spec.config["classifier"]),
            "attack.random_start": attack["random_start"]}


def _madry_training(spec: RowSpec) -> Dict[str, Any]:
    recipe = spec.config["classifier"]
    adversary = recipe["adversarial"]
    norm, normalisation = _norm(adversary["distance"])
    return {"dataset": recipe["dataset"], "eps": adversary["eps"], "norm": norm, "normalisation": normalisation,
            "steps": adversary["steps"], "step_size": adversary["step_size"],
            **{f"training.{key}": recipe[key] for key in ("batch_size", "epochs", "lr", "momentum", "weight_decay")},
            "training.lr_milestones": tuple(recipe["lr_milestones"]), "classifier.arch": recipe["arch"]}


def _na(spec: RowSpec) -> Dict[str, Any]:
    attack = spec.config["adaptive_attack"]
    return {**_attack(spec, attack), "attack.random_start": attack["random_start"]}


#: Each row's entries (``RowSpec.fidelity``), in the order of paper_settings.md.
THERMOMETER: Dict[str, Extractor] = {"thermometer": _thermometer}
LID: Dict[str, Extractor] = {"lid": _lid}
GUO: Dict[str, Extractor] = {f"guo/{name}": _guo(name) for name in GUO_TRANSFORMS}
SAP: Dict[str, Extractor] = {"sap": _sap}
XIE: Dict[str, Extractor] = {"xie": _xie}
PIXELDEFEND: Dict[str, Extractor] = {"pixeldefend": _pixeldefend}
DEFENSEGAN: Dict[str, Extractor] = {"defensegan/bpda": _defensegan_bpda, "defensegan/latent": _defensegan_latent}
MADRY: Dict[str, Extractor] = {"madry": _madry, "madry/adversarial_training": _madry_training}
NA: Dict[str, Extractor] = {"na": _na}
