"""Xie et al.'s smoke row (issue 19): when the 10-of-10 residual stays above 10%, the row runs a
control in the same run (a stronger attack at the same eps on a fresh seed, judged on the same draws
as the row's attack, compared pairwise) that tells a stuck attack from robustness at this eps."""

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # reproduce/ is a top-level directory of the repo, not installed
    sys.path.append(str(ROOT))

from row_streams import recorded_seeds  # noqa: E402

from obfgrad.eval.confidence import paired_sign_test, stuck_attack_reading  # noqa: E402
from reproduce import runner  # noqa: E402
from reproduce.rows import all_specs, xie  # noqa: E402
from reproduce.spec import RunContext  # noqa: E402


@pytest.fixture(scope="module")
def smoke_dry_run(tmp_path_factory):
    results = tmp_path_factory.mktemp("xie") / "results"
    ctx = RunContext(profile="smoke", dry_run=True, results_dir=results, progress=False, log=lambda message: None)
    runner.run_table(all_specs(["xie"], "smoke", dry_run=True), ctx)
    return json.loads((results / "table1.json").read_text())["rows"]["xie"], (results / "table1.md").read_text()


def test_the_control_is_recorded_with_a_paired_comparison_on_the_same_examples(smoke_dry_run):
    row, _ = smoke_dry_run
    control = row["control"]
    n = control["n"]
    assert control["name"] == "stronger_attack_same_eps" and n == 2
    ours, main = control["accuracy_10_of_10"], control["main_attack_10_of_10_same_examples"]
    # Paired: the two accuracies differ by exactly the discordant examples.
    difference = (control["broken_only_by_main"] - control["broken_only_by_control"]) / n
    assert ours["accuracy"] - main["accuracy"] == pytest.approx(difference)
    assert 0.0 <= control["paired_sign_test_p"] <= 1.0
    assert control["reading"] == stuck_attack_reading(control["broken_only_by_control"],
                                                      control["broken_only_by_main"], control["paired_sign_test_p"])
    assert control["attack"]["n"] == n and "random_start=True" in control["attack"]["attack"]


def test_the_control_attacks_on_a_fresh_seed_and_is_judged_on_the_row_attacks_judge_draws(smoke_dry_run):
    row, _ = smoke_dry_run
    control = row["control"]
    main_attack_seed = row["attacks"]["adaptive"]["seeds"]["attack"]
    assert control["attack"]["seeds"]["attack"] != main_attack_seed  # a fresh seed
    judge = row["attacks"]["adaptive_10_of_10"]["judge_seed"]
    assert control["accuracy_10_of_10"]["judge_seed"] == judge  # like with like
    assert control["main_attack_10_of_10_same_examples"]["judge_seed"] == judge
    attacks, judges = recorded_seeds(row)
    assert control["attack"]["seeds"]["attack"] in attacks and not attacks & judges


def test_the_table_prints_the_control_under_the_row(smoke_dry_run):
    _, table = smoke_dry_run
    line = next(line for line in table.splitlines() if line.startswith("**xie** control"))
    assert "stronger_attack_same_eps" in line and smoke_dry_run[0]["control"]["reading"] in line


def test_the_control_is_skipped_when_the_residual_is_at_most_ten_percent():
    (spec,) = all_specs(["xie"], "smoke")
    assert spec.config["stronger_attack_control"]["when_residual_above"] == 0.10
    skipped = xie._stronger_attack_control(RunContext(), spec, None, (None, None, None), None, None, residual=0.10)
    assert "skipped" in skipped and "10.0%" in skipped["skipped"]


def test_the_paper_profile_runs_no_control():
    (paper,) = all_specs(["xie"], "paper")
    assert paper.config["stronger_attack_control"] is None


def test_the_smoke_control_is_stronger_than_the_row_attack_at_the_same_eps():
    (spec,) = all_specs(["xie"], "smoke")
    control, adaptive = spec.config["stronger_attack_control"], spec.config["adaptive_attack"]
    assert control["eot_samples"] > adaptive["eot_samples"] and control["steps"] > adaptive["steps"]
    assert control["random_start"] and control["examples"] == 50


@pytest.mark.parametrize("only_first, only_second", [(0, 0), (9, 1), (1, 9), (3, 5), (0, 4), (12, 2), (7, 7), (40, 25)])
def test_paired_sign_test_is_the_exact_two_sided_binomial_test(only_first, only_second):
    scipy_stats = pytest.importorskip("scipy.stats")
    p = paired_sign_test(only_first, only_second)
    expected = 1.0 if only_first + only_second == 0 else \
        scipy_stats.binomtest(only_first, only_first + only_second, 0.5).pvalue
    assert p == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("bad", [-1, 1.5, True, "3", None])
def test_paired_sign_test_rejects_counts_that_are_not_counts(bad):
    with pytest.raises(ValueError, match="only_first"):
        paired_sign_test(bad, 3)


def test_the_reading_says_stuck_only_for_a_significant_gain_of_the_stronger_attack():
    def reading(more, fewer):
        return stuck_attack_reading(more, fewer, paired_sign_test(more, fewer))
    assert reading(12, 2).startswith("stuck attack")
    assert reading(2, 12).startswith("not a stuck attack")  # significant, but the other way
    assert reading(4, 2).startswith("not a stuck attack")  # not significant
