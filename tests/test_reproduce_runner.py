"""The Table 1 runner on tiny rows: results files, resume without repeating finished rows, no
partial files after an interruption, argument errors."""

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # reproduce/ is a top-level directory of the repo, not installed
    sys.path.append(str(ROOT))

from obfgrad.eval import clopper_pearson  # noqa: E402
from reproduce import runner  # noqa: E402
from reproduce.spec import RowSpec, RunContext  # noqa: E402


def _tiny_row(name, calls, fail=False):
    def run(spec, ctx):
        calls.append(name)
        if fail:
            raise KeyboardInterrupt  # as if the user pressed Ctrl-C inside this row
        return {"clean_accuracy": 0.9, "own_attack_accuracy": 0.9, "adaptive_accuracy": 0.0,
                "adaptive_ci95": list(clopper_pearson(0, 10)), "n": 10}

    return RowSpec(name=name, defense=f"toy {name}", dataset="toy", distance="linf", eps=0.1,
                   paper_dataset="CIFAR-10", paper_bound="0.031 (ℓ∞)", paper_accuracy=0.0, n_examples=10,
                   config={"toy": name}, run=run)


def _ctx(tmp_path):
    return RunContext(results_dir=tmp_path / "results", progress=False, log=lambda message: None)


def test_runner_writes_table_files_with_the_documented_shape(tmp_path):
    calls = []
    outcome = runner.run_table([_tiny_row("madry", calls), _tiny_row("na", calls)], _ctx(tmp_path))
    data = json.loads(outcome["paths"]["json"].read_text())
    row = data["rows"]["madry"]
    for field in ("clean_accuracy", "own_attack_accuracy", "adaptive_accuracy", "adaptive_ci95",
                  "paper_accuracy", "n", "wall_seconds"):
        assert field in row
    assert row["verdict"] == "broken"  # own [55.5, 99.7], adaptive [0.0, 30.8]
    assert 0.0 <= row["adaptive_accuracy"] <= 1.0
    assert "git_revision" in data["environment"] and "hardware" in data["environment"]
    markdown = outcome["paths"]["md"].read_text()
    assert "toy madry" in markdown and "0.0% [0.0, 30.8]" in markdown
    assert outcome["paths"]["csv"].read_text().splitlines()[0].startswith("row,dataset")


def test_resume_repeats_no_finished_row_and_leaves_no_partial_file(tmp_path):
    calls = []
    ctx = _ctx(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        runner.run_table([_tiny_row("madry", calls), _tiny_row("na", calls, fail=True)], ctx)
    rows_dir = ctx.results_dir / "rows"
    assert sorted(p.name for p in rows_dir.iterdir()) == ["madry.json"]  # no temp or partial file
    calls.clear()
    runner.run_table([_tiny_row("madry", calls), _tiny_row("na", calls)], ctx)
    assert calls == ["na"]  # madry came from its cached result
    calls.clear()
    runner.run_table([_tiny_row("madry", calls), _tiny_row("na", calls)], ctx, resume=False)
    assert calls == ["madry", "na"]


def test_a_changed_spec_invalidates_its_cached_result(tmp_path):
    calls = []
    ctx = _ctx(tmp_path)
    runner.run_table([_tiny_row("madry", calls)], ctx)
    changed = _tiny_row("madry", calls)
    changed.eps = 0.2
    calls.clear()
    runner.run_table([changed], ctx)
    assert calls == ["madry"]


def test_a_row_without_a_run_function_is_refused_before_anything_runs(tmp_path):
    calls = []
    specs = [_tiny_row("madry", calls), RowSpec(name="thermometer", defense="no code", dataset="toy", distance="linf",
                                                eps=0.1, paper_dataset="CIFAR-10", paper_bound="0.031 (ℓ∞)",
                                                paper_accuracy=0.0, run=None)]
    with pytest.raises(ValueError, match="specs: row 'thermometer' has no run function"):
        runner.run_table(specs, _ctx(tmp_path))
    assert calls == []


def test_every_table_row_has_a_spec_in_both_profiles():
    from reproduce.rows import all_specs
    from reproduce.spec import ROW_NAMES

    for profile in ("smoke", "paper"):
        specs = all_specs(list(ROW_NAMES), profile)
        assert [spec.name for spec in specs] == list(ROW_NAMES)
        # runnable: a run of its own, or a declarative spec (setup + evaluations, reproduce.evaluation)
        assert all((spec.run is not None or (spec.setup is not None and spec.evaluations))
                   and spec.build_defense is not None for spec in specs)
        assert {spec.name for spec in specs if spec.run is None} >= {"madry", "na", "thermometer", "sap", "lid",
                                                                      "defensegan"}


@pytest.mark.parametrize("argv, message", [
    (["--rows", "nope"], "--rows: unknown nope"),
    (["--limit", "0"], "--limit"),
    (["--profile", "huge"], "invalid choice"),
    (["--weights", "madry=/does/not/exist"], "--weights"),
])
def test_bad_arguments_are_rejected_with_a_message(argv, message, capsys):
    with pytest.raises(SystemExit):
        runner.parse_args(argv)
    assert message in capsys.readouterr().err


def test_rows_run_in_table_order_whatever_the_order_asked():
    assert runner.parse_args(["--rows", "na,madry"]).rows == ["madry", "na"]
