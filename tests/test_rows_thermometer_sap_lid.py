"""Dry runs of the thermometer, SAP and LID rows in the paper profile: untrained models at paper
size, synthetic CIFAR-sized data, 2 examples, 2 steps, on CPU."""

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

pytest.importorskip("sklearn", reason="the LID row's detector needs scikit-learn")


@pytest.mark.parametrize("row", ["thermometer", "sap", "lid"])
def test_paper_profile_dry_run_completes_with_the_documented_fields(tmp_path, row):
    ctx = RunContext(profile="paper", dry_run=True, results_dir=tmp_path / "results", progress=False,
                     log=lambda message: None)
    outcome = runner.run_table(all_specs([row], "paper", dry_run=True), ctx)
    result = json.loads(outcome["paths"]["json"].read_text())["rows"][row]
    for field in ("clean_accuracy", "own_attack_accuracy", "adaptive_accuracy", "adaptive_ci95"):
        assert field in result
    assert 0.0 <= result["adaptive_accuracy"] <= 1.0
    assert result["n"] == 2
    # Every evaluation records its attack's and its judge's seeds (SAP's vote judge too), and no
    # judge replays an attack's stream (SAP draws its masks from torch's generator).
    attacks, judges = recorded_seeds(result["attacks"])
    assert attacks and judges and not attacks & judges
    if row == "sap":
        votes = [summary["other_prediction_rules"]["judge_seed"] for summary in result["attacks"].values()]
        assert len(votes) == 2 and len(judges) == 4


def test_paper_specs_describe_the_paper_setup():
    therm, sap, lid = all_specs(["thermometer", "sap", "lid"], "paper")
    assert therm.config["classifier"]["arch_kwargs"]["in_channels"] == 48 and therm.config["encoder"]["levels"] == 16
    assert therm.config["adaptive_attack"]["steps"] == 30
    # One SAP draw per Adam step, as sap/robustml_attack.py; the paper text's 10 is a named variant.
    assert sap.config["adaptive_attack"]["steps"] == 500 and sap.config["adaptive_attack"]["samples"] == 1
    assert sap.config["adaptive_attack"]["variant"] == "authors_code"
    assert lid.config["lid"] == {"k": 20, "batch_size": 100} and lid.n_examples == 1000
    assert all(spec.eps == pytest.approx(8 / 255) for spec in (therm, sap, lid))
