"""A row as a spec: the generic runner (reproduce.evaluation) on a hand-built declarative row, the
PGD read from a config entry, the headline numbers, and the choices file (reproduce.choices)."""

import json
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # reproduce/ is a top-level directory of the repo, not installed
    sys.path.append(str(ROOT))

from obfgrad.attacks import PGD  # noqa: E402
from reproduce import choices, estimate, fidelity, paper_plans, rows  # noqa: E402
from reproduce.evaluation import Evaluation, config_pgd, headline, run_row, votes_judge  # noqa: E402
from reproduce.rows import all_specs  # noqa: E402
from reproduce.spec import ROW_NAMES, RowSpec, RunContext  # noqa: E402


def test_config_pgd_reads_the_pgd_settings_of_a_config_entry_and_ignores_the_rest():
    settings = {"steps": 7, "step_size": 0.02, "loss": "margin", "update": "adam_sign", "random_start": False,
                "restarts": 3, "early_stop": False, "start_from": 0.5, "samples": 10, "variant": "eot_10_draws"}
    expected = PGD("linf", 0.1, steps=7, step_size=0.02, loss="margin", update="adam_sign", random_start=False,
                   restarts=3, early_stop=False, start_from=0.5, kappa=None, seed=4)
    attack = config_pgd(settings, "linf", 0.1, seed=4)
    assert repr(attack) == repr(expected) and attack.seed == 4
    assert config_pgd({"steps": 2, "step_size": 0.1}, "linf", 0.1, kappa=0.0).kappa == 0.0  # fixed wins
    assert config_pgd({"steps": 2, "step_size": 0.1}, "linf", 0.1).random_start is False  # PGD's default


def _summary(accuracy, clean=0.9):
    return {"accuracy": accuracy, "ci95": [accuracy - 0.1, accuracy + 0.1], "clean_accuracy": clean}


def _row(evaluations, **fields):
    return RowSpec(name="toy", defense="toy", dataset="fashion-mnist", distance="linf", eps=0.1,
                   paper_dataset="CIFAR-10", paper_bound="0.031 (ℓ∞)", paper_accuracy=0.0, n_examples=4,
                   evaluations=tuple(evaluations), **fields)


def test_headline_reports_the_strongest_own_evaluation_the_adaptive_one_and_extras_by_key():
    attack = lambda row, ctx, setup: None  # noqa: E731 (never called by headline)
    row = _row([Evaluation("a", "own_a", "own", attack), Evaluation("b", "own_b", "own", attack),
                Evaluation("c", "adaptive", "adaptive", attack), Evaluation("d", "control", "extra", attack)])
    summaries = {"a": _summary(0.6, clean=0.8), "b": _summary(0.4), "c": _summary(0.1), "d": _summary(0.0)}
    result = headline(row, summaries)
    assert result["clean_accuracy"] == 0.8  # of the first evaluation
    assert (result["own_attack_accuracy"], result["adaptive_accuracy"]) == (0.4, 0.1)
    assert set(result["attacks"]) == {"own_a", "own_b", "adaptive"} and result["control"] == summaries["d"]
    with pytest.raises(ValueError, match="exactly one adaptive"):
        headline(_row([Evaluation("a", "own", "own", attack)]), {"a": _summary(0.5)})
    with pytest.raises(ValueError, match="role"):
        Evaluation("a", "own", "owner", attack)


class Coin(torch.nn.Module):
    """A randomized 10-class model: logits drawn from torch's global generator (the judge's stream)."""

    def forward(self, x):
        return torch.randn(x.shape[0], 10) + 0.0 * x.flatten(1).sum(1, keepdim=True)


def _numbers(value):
    """``value`` without wall times and checksums of files that hold them."""
    if isinstance(value, dict):
        return {k: _numbers(v) for k, v in value.items() if k not in ("seconds", "records_sha256")}
    return value


def test_run_row_runs_a_declarative_row_and_records_every_evaluation(tmp_path):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(28 * 28, 10))
    pgd = lambda row, ctx, setup: config_pgd(row.config["attack"], row.distance, row.eps)  # noqa: E731
    row = _row([Evaluation("own", "own", "own", pgd, model="net"),
                Evaluation("adaptive", "adaptive", "adaptive", pgd, model="defended", predict="defended",
                           judge=votes_judge)],
               config={"attack": {"steps": 3, "step_size": 0.05, "loss": "margin"}, "vote_draws": 3,
                       "clean_floor": {"floor": 0.0, "source": "toy"}},
               setup=lambda row, ctx, x, y: {"net": net, "defended": Coin(), "guard": net},
               report=lambda row, ctx, setup, summaries: {"extra_key": len(summaries)})
    ctx = RunContext(dry_run=True, results_dir=tmp_path, progress=False, log=lambda message: None)
    first, second = run_row(row, ctx), run_row(row, ctx)
    assert _numbers(first) == _numbers(second)  # the same seed: the same numbers, votes included
    assert first["extra_key"] == 2 and first["clean_accuracy_guard"]["status"].startswith("skipped")
    rules = first["attacks"]["adaptive"]["other_prediction_rules"]
    assert rules["draws"] == 3 and set(rules) == {"draws", "mean_softmax", "majority_vote", "judge_seed"}
    for label in ("own", "adaptive"):
        records = json.loads((tmp_path / "records" / f"toy.{label}.json").read_text())
        assert len(records["records"]) == 2  # a dry run attacks 2 examples


def _toy_paper_row(**fields) -> RowSpec:
    """A row that exists only as its spec: its paper-profile work plan and fidelity entry are defined
    here, in no table of reproduce.estimate or reproduce.fidelity."""

    def adaptive_settings(spec):
        attack = spec.config["adaptive_attack"]
        return {"examples": spec.n_examples, "steps": attack["steps"], "eot_samples": attack["samples"],
                "restarts": 1}

    def work_plan(spec, resolved):
        return paper_plans.RowPlan(spec.name, [
            paper_plans.attack("adaptive: toy EOT", resolved["toy/adaptive"], {"toy_unit": 2}),
            paper_plans.Work("own: toy PGD", spec.n_examples, spec.config["own_steps"], {"toy_unit": 1})],
            excluded=["toy forwards"])

    return _row([], config={"adaptive_attack": {"steps": 6, "samples": 3}, "own_steps": 5},
                **{"work_plan": work_plan, "fidelity": {"toy/adaptive": adaptive_settings}, **fields})


def test_a_row_added_through_its_spec_alone_reaches_the_estimate_and_the_fidelity_check(monkeypatch, tmp_path):
    toy, row_spec = _toy_paper_row(), rows.row_spec
    monkeypatch.setattr(rows, "row_spec", lambda name, profile, dry_run=False:
                        toy if name == "toy" else row_spec(name, profile, dry_run))
    monkeypatch.setitem(estimate.UNITS, "toy_unit", estimate.Unit("toy", lambda specs, device, items: lambda: None))
    resolved = fidelity.resolve(["toy/adaptive"])  # the toy's paper-profile spec, found by its row name
    assert resolved == {"toy/adaptive": {"examples": 4, "steps": 6, "eot_samples": 3, "restarts": 1}}
    settings = tmp_path / "settings.md"
    settings.write_text("### `toy/adaptive`\n\n| field | value | source |\n|---|---|---|\n"
                        "| `steps` | `6` | choice: toy |\n| `restarts` | `2` | paper §5 |\n")
    verdicts = {item.field: item.verdict for item in fidelity.check(fidelity.read_paper_settings(settings), resolved)}
    assert verdicts == {"steps": "project's choice", "restarts": "CONTRADICTS ITS SOURCE",
                        "examples": "NOT IN TABLE", "eot_samples": "NOT IN TABLE"}
    report = estimate.run(["toy"], torch.device("cpu"), batch=1, repeats=1, log=lambda line: None)
    row = report["rows"]["toy"]
    assert [item["label"] for item in row["attacks"]] == ["adaptive: toy EOT", "own: toy PGD"]
    assert row["gradient_evaluations"] == 4 * 6 * 3 + 4 * 5 and row["excluded"] == ["toy forwards"]
    assert set(report["units"]) == {"toy_unit"}


def test_a_spec_without_a_plan_or_with_a_misnamed_entry_is_refused_by_name():
    with pytest.raises(ValueError, match="no estimate plan for 'toy'"):
        estimate.plan(_toy_paper_row(work_plan=None), {})
    misnamed = _toy_paper_row(fidelity={"other/adaptive": lambda spec: {}})
    with pytest.raises(ValueError, match="toy row's fidelity entry 'other/adaptive'"):
        fidelity.entry_table({"toy": misnamed})
    with pytest.raises(ValueError, match="entries: toy/own not among"):
        fidelity.resolve(["toy/own"], {"toy": _toy_paper_row()})


def test_every_row_has_its_choices_in_both_profiles_and_the_values_are_filled():
    for profile in ("smoke", "paper"):
        for spec in all_specs(list(ROW_NAMES), profile):
            assert spec.choices and all(isinstance(text, str) and text for text in spec.choices), spec.name
            assert not any("{" in text for text in spec.choices), spec.name  # every {field} filled


def test_the_choices_file_is_read_strictly(tmp_path):
    path = tmp_path / "choices.md"
    path.write_text("# intro\n\n## toy\n- shared {n}\n- [paper] paper only\n- [smoke] smoke only\n", encoding="utf-8")
    rows = choices.read(path)
    assert rows == {"toy": [("", "shared {n}"), ("paper", "paper only"), ("smoke", "smoke only")]}
    path.write_text("## toy\n- [gpu] what\n", encoding="utf-8")
    with pytest.raises(ValueError, match="unknown tag"):
        choices.read(path)
    path.write_text("## toy\ncontinued prose\n", encoding="utf-8")
    with pytest.raises(ValueError, match="expected"):
        choices.read(path)
    with pytest.raises(ValueError, match="was not given"):
        choices.of("guo", "smoke")  # guo's quilting database size is a value the row fills in
    with pytest.raises(ValueError, match="no section"):
        choices.of("nine", "smoke")
