"""obfgrad.zoo: every Table 1 defense (and each of Guo's five transformations) builds from the library
alone, in dry-run mode (untrained models at paper resolution on synthetic images: no data, no
training), with a threat model, a labelled batch and models that run on it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

from obfgrad import zoo
from obfgrad.distances import get_distance

ROOT = Path(__file__).resolve().parents[1]

def test_names_cover_every_table1_defense_and_guos_five_transformations():
    names = zoo.names()
    assert [name for name in names if name.startswith("guo:")] == [
        f"guo:{t}" for t in ("quilting", "bit_depth", "jpeg", "crop_rescale", "tv")]
    assert {name.partition(":")[0] for name in names} == set(zoo.DEFENSES) | {zoo.UNDEFENDED}
    assert names[-1] == zoo.UNDEFENDED


@pytest.mark.parametrize("name", zoo.names())
def test_every_name_builds_in_a_smoke_dry_run(name):
    bundle = zoo.build(name, "smoke", examples=2, dry_run=True, progress=False, log=lambda message: None)
    assert bundle.x.shape == (2, 1, 28, 28) and bundle.y.shape == (2,)
    assert bundle.name == name and bundle.config["eps"] == bundle.eps > 0
    get_distance(bundle.distance)  # a distance the attacks know
    assert bundle.threat_model == (bundle.distance, bundle.eps)
    with torch.no_grad():
        for model in (bundle.model, bundle.undefended, bundle.attack_model):
            logits = model(bundle.x)
            assert logits.shape == (2, 10) and torch.isfinite(logits).all(), name


@pytest.mark.parametrize("name", ["guo:jpeg", "guo:bit_depth", "madry", "thermometer"])
def test_the_paper_profile_dry_run_builds_at_paper_resolution(name):
    bundle = zoo.build(name, "paper", examples=1, dry_run=True, progress=False, log=lambda message: None)
    expected = {"guo": (3, 299, 299), "madry": (3, 32, 32), "thermometer": (3, 32, 32)}[name.partition(":")[0]]
    assert tuple(bundle.x.shape[1:]) == expected


def test_a_guo_bundle_attacks_through_bpda_where_the_deployed_model_has_no_gradient():
    bundle = zoo.build("guo:bit_depth", "smoke", examples=2, dry_run=True, progress=False, log=lambda message: None)
    x = bundle.x.clone().requires_grad_(True)
    bundle.attack_model(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


@pytest.mark.parametrize("name, error, match", [
    ("nope", ValueError, "unknown defense"),
    ("guo:gzip", ValueError, "no variant"),
    (3, TypeError, "name"),
])
def test_bad_names_are_refused(name, error, match):
    with pytest.raises(error, match=match):
        zoo.build(name, dry_run=True)


@pytest.mark.parametrize("options, match", [
    ({"profile": "tiny"}, "profile"),
    ({"examples": 0}, "examples"),
    ({"weights": "/no/such/file.pt"}, "weights"),
])
def test_bad_options_are_refused(options, match):
    with pytest.raises(ValueError, match=match):
        zoo.build("madry", dry_run=True, **options)


def test_no_module_of_the_library_imports_reproduce():
    offenders = []
    for path in sorted((ROOT / "obfgrad").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            offenders += [f"{path.relative_to(ROOT)}: {n}" for n in names if n.split(".")[0] == "reproduce"]
    assert offenders == []
