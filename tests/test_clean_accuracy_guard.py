"""Every row checks its classifier's clean accuracy before attacking and refuses to report when it
is far below what the recipe should reach (issue 14, item 1): a wrongly loaded, scaled or trained
model never produces a Table 1 line."""

import json
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # reproduce/ is a top-level directory of the repo, not installed
    sys.path.append(str(ROOT))

from obfgrad.zoo import recipes  # noqa: E402
from reproduce import pipeline, runner  # noqa: E402
from reproduce.rows import all_specs  # noqa: E402
from reproduce.spec import ROW_NAMES, RowSpec, RunContext  # noqa: E402

FLOOR = {"floor": 0.8, "source": "a toy recipe that reaches 100%"}


def _problem(n=200):
    """Images whose label is whether the mean pixel exceeds 0.5, and a classifier that knows it."""
    x = torch.rand(n, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    y = (x.flatten(1).mean(1) > 0.5).long()
    good = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 2))
    with torch.no_grad():
        good[1].weight.copy_(torch.stack([-torch.ones(16), torch.ones(16)]) / 16)
        good[1].bias.copy_(torch.tensor([0.5, -0.5]))
    wrong = lambda v: good(v).flip(1)  # noqa: E731 (a wrongly loaded model: its two logits swapped)
    return x, y, good, wrong


def _spec(model, x, y, calls):
    def run(spec, ctx):
        calls.append("guard")
        guard = pipeline.guard_clean_accuracy(ctx, spec, model, x, y, FLOOR)
        calls.append("attack")
        return {"clean_accuracy": 1.0, "own_attack_accuracy": 1.0, "adaptive_accuracy": 0.0,
                "adaptive_ci95": [0.0, 0.018092], "n": 200, "clean_accuracy_guard": guard}

    return RowSpec(name="madry", defense="toy", dataset="toy", distance="linf", eps=0.1, paper_dataset="CIFAR-10",
                   paper_bound="0.031 (ℓ∞)", paper_accuracy=0.47, n_examples=200, config={"toy": 1}, run=run)


def _ctx(tmp_path, **fields):
    return RunContext(results_dir=tmp_path / "results", progress=False, log=lambda message: None, **fields)


def test_a_classifier_far_below_its_floor_is_refused_with_row_accuracy_and_floor(tmp_path):
    x, y, _, wrong = _problem()
    with pytest.raises(pipeline.ClassifierAccuracyError) as error:
        pipeline.guard_clean_accuracy(_ctx(tmp_path), _spec(wrong, x, y, []), wrong, x, y, FLOOR)
    message = str(error.value)
    assert "row madry" in message and "0.0%" in message and "80%" in message and FLOOR["source"] in message


def test_a_refused_classifier_gives_no_table_line_and_runs_no_attack(tmp_path):
    x, y, _, wrong = _problem()
    calls = []
    ctx = _ctx(tmp_path)
    with pytest.raises(pipeline.ClassifierAccuracyError, match="row madry"):
        runner.run_table([_spec(wrong, x, y, calls)], ctx)
    assert calls == ["guard"]
    assert not (ctx.results_dir / "rows" / "madry.json").exists() and not (ctx.results_dir / "table1.md").exists()


def test_a_good_classifier_passes_and_the_check_is_recorded(tmp_path):
    x, y, good, _ = _problem()
    outcome = runner.run_table([_spec(good, x, y, [])], _ctx(tmp_path))
    guard = json.loads(outcome["paths"]["json"].read_text())["rows"]["madry"]["clean_accuracy_guard"]
    assert guard["status"] == "passed" and guard["accuracy"] == 1.0 and guard["floor"] == 0.8


def test_the_refusal_needs_the_whole_interval_below_the_floor(tmp_path):
    x, y, good, _ = _problem(n=5)
    ctx = _ctx(tmp_path)
    half = lambda v: torch.where(torch.arange(v.shape[0])[:, None] < 2, good(v), good(v).flip(1))  # noqa: E731
    record = pipeline.guard_clean_accuracy(ctx, _spec(half, x, y, []), half, x, y, FLOOR)  # 2 of 5: up to 94.7%
    assert record["status"] == "passed" and record["ci95"][1] > 0.8


def test_a_dry_run_skips_the_guard_and_says_so(tmp_path):
    x, y, _, wrong = _problem()
    lines = []
    ctx = RunContext(results_dir=tmp_path, progress=False, log=lines.append, dry_run=True)
    record = pipeline.guard_clean_accuracy(ctx, _spec(wrong, x, y, []), wrong, x, y, FLOOR)
    assert record["status"].startswith("skipped: dry run") and any("skipped" in line for line in lines)


@pytest.mark.parametrize("profile", ["smoke", "paper"])
def test_every_row_states_a_clean_floor_with_its_source(profile):
    for spec in all_specs(list(ROW_NAMES), profile):
        floor = spec.config["clean_floor"]
        assert 0.2 <= floor["floor"] < 1.0 and floor["source"], spec.name
    paper = {spec.name: spec.config["clean_floor"]["floor"] for spec in all_specs(["guo", "xie"], "paper")}
    assert paper == {"guo": 0.70, "xie": 0.70}  # InceptionV3 top-1, the floor


def test_a_capped_quick_run_only_refuses_a_classifier_near_chance(monkeypatch):
    monkeypatch.setenv(recipes.TRAIN_LIMIT_CAP_ENV, "100")
    for spec in all_specs(list(ROW_NAMES), "smoke"):
        assert spec.config["clean_floor"] == recipes.CAPPED_CLEAN_FLOOR, spec.name
