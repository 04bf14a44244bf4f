"""The verdict column of Table 1 (``reproduce.verdict``): decided on the 95% intervals of the own
and the adaptive accuracy, with the edge cases of issue 14 (0% -> 0%, 2% -> 0%, 60% -> 41%,
overlapping intervals)."""

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # reproduce/ is a top-level directory of the repo, not installed
    sys.path.append(str(ROOT))

from obfgrad.eval import clopper_pearson  # noqa: E402
from reproduce import runner, table  # noqa: E402
from reproduce.spec import RowSpec, RunContext  # noqa: E402
from reproduce.verdict import NEAR_ZERO, decide, row_verdict  # noqa: E402


def _result(own_correct, adaptive_correct, n):
    return {"n": n, "own_attack_accuracy": own_correct / n, "adaptive_accuracy": adaptive_correct / n,
            "own_attack_ci95": list(clopper_pearson(own_correct, n)),
            "adaptive_ci95": list(clopper_pearson(adaptive_correct, n))}


@pytest.mark.parametrize("own, adaptive, n, expected", [
    (0, 0, 100, "nothing to break"),   # 0% -> 0%: the own evaluation already finds no robustness
    (2, 0, 100, "nothing to break"),   # 2% -> 0%: a drop of 2 points breaks nothing
    (600, 410, 1000, "broken"),        # 60% -> 41% on 1000: intervals [56.9, 63.0] and [37.9, 44.1]
    (60, 41, 100, "inconclusive"),     # 60% -> 41% on 100: intervals overlap, 41% below the own one
    (636, 626, 1000, "holds"),         # 63.6% -> 62.6%: inside the own interval
    (364, 330, 1000, "inconclusive"),  # overlapping, adaptive just below the own interval
    (57, 12, 100, "broken"),           # 57% -> 12%
    (30, 60, 100, "inconclusive"),     # the adaptive attack is weaker than the defense's own
])
def test_verdict_edge_cases(own, adaptive, n, expected):
    assert row_verdict(_result(own, adaptive, n)) == expected


def test_the_near_zero_state_is_decided_by_the_upper_end_of_the_own_interval():
    # 5/100 has an upper bound of 11.3%: above the threshold, so a drop to 0 is judged normally.
    assert clopper_pearson(5, 100)[1] > NEAR_ZERO
    assert row_verdict(_result(5, 0, 100)) == "inconclusive"
    assert row_verdict(_result(50, 0, 1000)) == "nothing to break"  # 5% of 1000: [3.7, 6.5]
    assert row_verdict(_result(30, 0, 100)) == "broken"


def test_a_claimed_accuracy_below_the_adaptive_interval_keeps_the_defense():
    own, adaptive = (0.80, (0.77, 0.83)), (0.60, (0.57, 0.63))
    assert decide(*own, *adaptive) == "broken"
    assert decide(*own, *adaptive, claimed=0.70) == "broken"  # adaptive entirely below the claim
    assert decide(*own, *adaptive, claimed=0.50) == "holds"  # the claim survives the drop
    assert decide(*own, *adaptive, claimed=0.60) == "inconclusive"  # the claim inside the interval


def test_without_a_stored_own_interval_the_exact_one_is_derived_from_n():
    result = _result(600, 410, 1000)
    del result["own_attack_ci95"]
    assert row_verdict(result) == "broken"
    result = _result(2, 0, 100)
    del result["own_attack_ci95"]
    assert row_verdict(result) == "nothing to break"


def test_a_malformed_interval_is_an_error_not_a_verdict():
    result = _result(60, 41, 100)
    result["adaptive_ci95"] = [0.5, 0.4]
    with pytest.raises(ValueError, match="ci"):
        row_verdict(result)


def test_table_files_carry_the_interval_verdict_and_state_the_rule(tmp_path):
    def run(spec, ctx):
        return {"clean_accuracy": 0.9, **_result(0, 0, 100)}

    spec = RowSpec(name="madry", defense="toy", dataset="toy", distance="linf", eps=0.1, paper_dataset="CIFAR-10",
                   paper_bound="0.031 (ℓ∞)", paper_accuracy=0.0, n_examples=100, config={"toy": 1}, run=run)
    ctx = RunContext(results_dir=tmp_path / "results", progress=False, log=lambda message: None)
    outcome = runner.run_table([spec], ctx)
    data = json.loads(outcome["paths"]["json"].read_text())
    assert data["rows"]["madry"]["verdict"] == "nothing to break"
    markdown = outcome["paths"]["md"].read_text()
    assert "nothing to break" in markdown and "Clopper-Pearson" in markdown
    assert "0.0% [0.0, 3.6]" in markdown  # the own evaluation's interval is shown too
    assert table.verdict(data["rows"]["madry"], spec) == "nothing to break"
