"""Dry runs of the Guo et al. and Xie et al. rows in the paper profile: an untrained
InceptionV3 at 299x299 on CPU, 2 examples, 2 steps, 2 EOT draws/crops, a small synthetic quilting
database; the runner writes each row's result with the fields Table 1 needs."""

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # reproduce/ is a top-level directory of the repo, not installed
    sys.path.append(str(ROOT))

from row_streams import recorded_seeds  # noqa: E402

from reproduce import runner  # noqa: E402
from reproduce.rows import all_specs  # noqa: E402
from reproduce.spec import RunContext  # noqa: E402

GUO_TRANSFORMS = ("bit_depth", "jpeg", "crop_rescale", "tv", "quilting")


def _dry_run(tmp_path, name):
    ctx = RunContext(profile="paper", dry_run=True, results_dir=tmp_path / "results", progress=False,
                     log=lambda message: None)
    runner.run_table(all_specs([name], "paper", dry_run=True), ctx)
    return json.loads((ctx.results_dir / "table1.json").read_text())["rows"][name]


def _check_fractions(result):
    for field in ("clean_accuracy", "own_attack_accuracy", "adaptive_accuracy"):
        assert 0.0 <= result[field] <= 1.0
    lo, hi = result["adaptive_ci95"]
    assert 0.0 <= lo <= result["adaptive_accuracy"] <= hi <= 1.0


@pytest.fixture(scope="module")
def guo_row(tmp_path_factory):
    return _dry_run(tmp_path_factory.mktemp("guo"), "guo")


def test_guo_dry_run_in_the_paper_profile_evaluates_all_five_transformations(guo_row):
    row = guo_row
    _check_fractions(row)
    assert row["n"] == 2 if "n" in row else True
    transforms = row["transforms"]
    assert set(transforms) == set(GUO_TRANSFORMS)
    assert row["strongest_transform"] in GUO_TRANSFORMS
    strongest = transforms[row["strongest_transform"]]
    assert row["adaptive_accuracy"] == max(t["adaptive_accuracy"] for t in transforms.values())
    assert row["adaptive_accuracy"] == strongest["adaptive_accuracy"]
    for result in transforms.values():
        _check_fractions(result)
        assert result["attacks"]["adaptive"]["n"] == 2


def test_guo_records_an_attack_and_a_judge_seed_per_evaluation_and_no_judge_replays_an_attack(guo_row):
    # Crop-rescale, TV and quilting draw their randomness from torch's generator: the judge of
    # every evaluation (own and adaptive, each transformation) draws from a stream of its own.
    for name in GUO_TRANSFORMS:
        for label in ("own", "adaptive"):
            seeds = guo_row["transforms"][name]["attacks"][label]["seeds"]
            assert seeds["attack"] != seeds["judge"], (name, label)
    attacks, judges = recorded_seeds(guo_row["transforms"])
    assert len(attacks) == 2 * len(GUO_TRANSFORMS) and len(judges) == 2 * len(GUO_TRANSFORMS)
    assert not attacks & judges


def test_xie_dry_run_in_the_paper_profile_reports_the_ten_of_ten_accuracy(tmp_path):
    row = _dry_run(tmp_path, "xie")
    _check_fractions(row)
    assert 0.0 <= row["adaptive_single_draw_accuracy"] <= 1.0
    assert row["attacks"]["adaptive_10_of_10"]["draws"] == 2
    # Like with like: the own evaluation is judged by the same 10-of-10 rule as the adaptive one.
    own_strict = row["attacks"]["own_10_of_10"]
    assert own_strict["draws"] == row["attacks"]["adaptive_10_of_10"]["draws"]
    assert row["own_attack_accuracy"] == own_strict["accuracy"]
    assert row["own_attack_ci95"] == own_strict["ci95"]
    assert 0.0 <= row["own_single_draw_accuracy"] <= 1.0
    # Every evaluation records its attack's and its judge's seeds; no judge replays an attack's stream.
    attack_seeds = {row["attacks"][name]["seeds"]["attack"] for name in ("own", "adaptive")}
    judge_seeds = {row["attacks"][name]["seeds"]["judge"] for name in ("own", "adaptive")}
    judge_seeds.add(own_strict["judge_seed"])
    assert own_strict["judge_seed"] == row["attacks"]["adaptive_10_of_10"]["judge_seed"]  # like with like
    assert len(attack_seeds) == 2 and not attack_seeds & judge_seeds


@pytest.mark.parametrize("name", ["guo", "xie"])
def test_smoke_specs_scale_the_paper_settings(name):
    (smoke,) = all_specs([name], "smoke")
    (paper,) = all_specs([name], "paper")
    assert smoke.dataset == "fashion-mnist" and paper.dataset == "imagenet"
    assert paper.targeted and not smoke.targeted
    assert smoke.n_examples == 100 and paper.n_examples == 1000
    assert smoke.choices and paper.choices
    json.dumps(smoke.describe()), json.dumps(paper.describe())  # every setting is JSON
